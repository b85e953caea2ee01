//! Deterministic, authenticated encryption of names and other small metadata strings
//! (file names, symlink targets, xattr names and values), so the metadata database holds no
//! name in clear while lookups stay a single keyed index probe.
//!
//! Construction (SIV with BLAKE3, no extra cipher crate):
//! `tag = keyed_blake3(mac_key, domain || scope || plaintext)[..16]`,
//! `ciphertext = plaintext XOR keyed_blake3_xof(enc_key, tag)`.
//! The tag doubles as the index key (equal names in one scope have equal tags) and as the
//! authenticator: `open` recomputes it and refuses bytes that do not match.
//! BLAKE3 in keyed mode is a PRF, so this is a deterministic AE scheme in the sense of
//! Rogaway–Shrimpton SIV; it leaks only equality of (scope, name) pairs and lengths.

use zeroize::Zeroizing;

/// What a sealed string is, so equal bytes in different roles never share a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Domain {
    /// A directory entry name; scope is the parent inode.
    DirEntry = 1,
    /// A symlink target; scope is the link's inode.
    Symlink = 2,
    /// An xattr name; scope is the inode.
    XattrName = 3,
    /// An xattr value; scope is the inode.
    XattrValue = 4,
}

/// Tag length in bytes.
pub const TAG_LEN: usize = 16;

/// A name tag: index key and authenticator.
pub type Tag = [u8; TAG_LEN];

/// Seals and opens names with the volume's two name keys.
pub struct NameCipher {
    mac: Zeroizing<[u8; 32]>,
    enc: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for NameCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameCipher(..)")
    }
}

/// The stored bytes failed authentication: the metadata database was altered or damaged.
#[derive(Debug, thiserror::Error)]
#[error("sealed name failed authentication (metadata damaged or altered)")]
pub struct NameCorrupt;

impl NameCipher {
    pub fn new(mac: [u8; 32], enc: [u8; 32]) -> Self {
        NameCipher {
            mac: Zeroizing::new(mac),
            enc: Zeroizing::new(enc),
        }
    }

    /// The tag of `plain` in `domain` and `scope`, without encrypting (for lookups).
    pub fn tag(&self, domain: Domain, scope: u64, plain: &[u8]) -> Tag {
        let mut h = blake3::Hasher::new_keyed(&self.mac);
        h.update(&[domain as u8]);
        h.update(&scope.to_le_bytes());
        h.update(plain);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
        tag
    }

    fn keystream_xor(&self, tag: &Tag, data: &mut [u8]) {
        let mut h = blake3::Hasher::new_keyed(&self.enc);
        h.update(tag);
        let mut reader = h.finalize_xof();
        let mut buf = [0u8; 64];
        for chunk in data.chunks_mut(64) {
            reader.fill(&mut buf[..chunk.len()]);
            for (d, k) in chunk.iter_mut().zip(buf.iter()) {
                *d ^= k;
            }
        }
    }

    /// Returns `(tag, ciphertext)`.
    pub fn seal(&self, domain: Domain, scope: u64, plain: &[u8]) -> (Tag, Vec<u8>) {
        let tag = self.tag(domain, scope, plain);
        let mut out = plain.to_vec();
        self.keystream_xor(&tag, &mut out);
        (tag, out)
    }

    /// Decrypts `cipher` and checks it against `tag`.
    pub fn open(
        &self,
        domain: Domain,
        scope: u64,
        tag: &Tag,
        cipher: &[u8],
    ) -> Result<Vec<u8>, NameCorrupt> {
        let mut out = cipher.to_vec();
        self.keystream_xor(tag, &mut out);
        if self.tag(domain, scope, &out) != *tag {
            return Err(NameCorrupt);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> NameCipher {
        NameCipher::new([1; 32], [2; 32])
    }

    #[test]
    fn round_trip_and_determinism() {
        let c = cipher();
        for name in [
            &b""[..],
            b"a",
            b"hello.txt",
            &[0xffu8; 255][..],
            &[b'x'; 4096][..],
        ] {
            let (tag, ct) = c.seal(Domain::DirEntry, 7, name);
            assert_eq!(c.open(Domain::DirEntry, 7, &tag, &ct).unwrap(), name);
            assert_eq!(c.seal(Domain::DirEntry, 7, name), (tag, ct.clone()));
            if name.len() > 4 {
                assert_ne!(ct, name, "ciphertext equals plaintext");
            }
        }
    }

    #[test]
    fn scope_and_domain_separate_tags() {
        let c = cipher();
        assert_ne!(
            c.tag(Domain::DirEntry, 1, b"x"),
            c.tag(Domain::DirEntry, 2, b"x")
        );
        assert_ne!(
            c.tag(Domain::DirEntry, 1, b"x"),
            c.tag(Domain::Symlink, 1, b"x")
        );
    }

    #[test]
    fn tampering_is_caught() {
        let c = cipher();
        let (tag, mut ct) = c.seal(Domain::XattrValue, 3, b"value");
        ct[0] ^= 1;
        assert!(c.open(Domain::XattrValue, 3, &tag, &ct).is_err());
        let (tag, ct) = c.seal(Domain::XattrValue, 3, b"value");
        assert!(
            c.open(Domain::XattrValue, 4, &tag, &ct).is_err(),
            "moved to another inode"
        );
    }
}
