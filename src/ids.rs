//! Identifier newtypes shared by every layer: inode numbers, block ids and shard ids.
//!
//! Ids are never passed around as bare `u64` or `[u8; 32]`: the type says what they name.
//! 32-byte ids print as lowercase hex; `short()` gives the first 8 hex digits for log lines.

use std::fmt;

/// A POSIX inode number inside one volume. `ROOT` is the mount's root directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeNo(pub u64);

impl InodeNo {
    /// The root directory of every volume.
    pub const ROOT: InodeNo = InodeNo(1);
}

impl fmt::Display for InodeNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id as 64 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                let mut s = String::with_capacity(64);
                for b in self.0 {
                    s.push_str(&format!("{b:02x}"));
                }
                s
            }

            /// Parses 64 hex digits.
            pub fn from_hex(s: &str) -> Option<Self> {
                if s.len() != 64 || !s.is_ascii() {
                    return None;
                }
                let mut out = [0u8; 32];
                for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
                    let pair = std::str::from_utf8(chunk).ok()?;
                    out[i] = u8::from_str_radix(pair, 16).ok()?;
                }
                Some(Self(out))
            }

            /// The first 8 hex digits, for log lines.
            pub fn short(&self) -> String {
                self.to_hex()[..8].to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

hash_id!(
    /// `blake3::keyed_hash(volume dedup key, plaintext block)`: names a block inside one volume.
    /// Never leaves the owner's machine in clear.
    BlockId
);

hash_id!(
    /// `blake3(shard bytes)`: names one erasure-coded shard; anyone holding it can verify the shard.
    ShardId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = BlockId([0xab; 32]);
        assert_eq!(BlockId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.short(), "abababab");
        assert_eq!(BlockId::from_hex("zz"), None);
        assert_eq!(BlockId::from_hex(&"g".repeat(64)), None);
    }
}
