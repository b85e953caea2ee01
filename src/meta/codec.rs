//! Versioned byte encodings of every value the metadata database stores.
//!
//! Each value starts with a one-byte format version; decoders match on it and reject what
//! they do not know with a typed error rather than guessing. All integers are little-endian
//! and sized explicitly (never `usize`). Keys are big-endian so that redb's byte order is the
//! numeric order (directory listings and block maps are range scans).

use crate::ids::{BlockId, InodeNo};
use crate::names::{TAG_LEN, Tag};

/// A stored value could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("metadata record {what} is damaged or of unknown version {version}")]
pub struct DecodeError {
    pub what: &'static str,
    pub version: u8,
}

/// The kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDev = 6,
    BlockDev = 7,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDev,
            7 => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// A point in time with nanoseconds, relative to the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_system(std::time::SystemTime::now())
    }

    pub fn from_system(t: std::time::SystemTime) -> Timestamp {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Timestamp {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }

    pub fn to_system(self) -> std::time::SystemTime {
        let base = std::time::UNIX_EPOCH;
        if self.secs >= 0 {
            base + std::time::Duration::new(self.secs as u64, self.nanos)
        } else {
            base - std::time::Duration::from_secs(self.secs.unsigned_abs())
                + std::time::Duration::from_nanos(self.nanos as u64)
        }
    }
}

/// The attributes of one inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub kind: Kind,
    /// Permission and set-id bits (`mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// How many blocks of this file are stored (holes are not): drives `st_blocks`.
    pub stored_blocks: u64,
    /// For directories, the parent directory (the root is its own parent); 0 otherwise.
    pub parent: u64,
    /// Blocks reserved by fallocate and not yet stored (see `volume::prealloc`).
    pub reserved_blocks: u64,
    /// The end of the furthest range fallocate reserved (bounds `st_blocks`); 0 if none.
    pub reserve_end: u64,
}

/// Version 1: no reservations. Written whenever an inode has none, so volumes that never
/// fallocate stay readable by older releases.
const INODE_V1: u8 = 1;
const INODE_V1_LEN: usize = 1 + 1 + 2 + 4 * 4 + 8 + 4 * 12 + 8 + 8;
/// Version 2: version 1 followed by `reserved_blocks` and `reserve_end`.
const INODE_V2: u8 = 2;
const INODE_V2_LEN: usize = INODE_V1_LEN + 16;

fn put_ts(out: &mut Vec<u8>, t: Timestamp) {
    out.extend_from_slice(&t.secs.to_le_bytes());
    out.extend_from_slice(&t.nanos.to_le_bytes());
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.b.split_at(N);
        self.b = rest;
        head.try_into().expect("split_at returned N bytes")
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn ts(&mut self) -> Timestamp {
        Timestamp {
            secs: i64::from_le_bytes(self.take()),
            nanos: self.u32(),
        }
    }
}

impl Inode {
    pub fn encode(&self) -> Vec<u8> {
        let v2 = self.reserved_blocks != 0 || self.reserve_end != 0;
        let mut out = Vec::with_capacity(INODE_V2_LEN);
        out.push(if v2 { INODE_V2 } else { INODE_V1 });
        out.push(self.kind as u8);
        out.extend_from_slice(&self.perm.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.nlink.to_le_bytes());
        out.extend_from_slice(&self.rdev.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            put_ts(&mut out, t);
        }
        out.extend_from_slice(&self.stored_blocks.to_le_bytes());
        out.extend_from_slice(&self.parent.to_le_bytes());
        if v2 {
            out.extend_from_slice(&self.reserved_blocks.to_le_bytes());
            out.extend_from_slice(&self.reserve_end.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Inode, DecodeError> {
        let version = b.first().copied().unwrap_or(0);
        let err = DecodeError {
            what: "inode",
            version,
        };
        match (version, b.len()) {
            (INODE_V1, INODE_V1_LEN) | (INODE_V2, INODE_V2_LEN) => {}
            _ => return Err(err),
        }
        let mut c = Cursor { b: &b[1..] };
        let kind = Kind::from_u8(c.u8()).ok_or(err)?;
        let mut inode = Inode {
            kind,
            perm: c.u16(),
            uid: c.u32(),
            gid: c.u32(),
            nlink: c.u32(),
            rdev: c.u32(),
            size: c.u64(),
            atime: c.ts(),
            mtime: c.ts(),
            ctime: c.ts(),
            crtime: c.ts(),
            stored_blocks: c.u64(),
            parent: c.u64(),
            reserved_blocks: 0,
            reserve_end: 0,
        };
        if version == INODE_V2 {
            inode.reserved_blocks = c.u64();
            inode.reserve_end = c.u64();
        }
        Ok(inode)
    }
}

/// A directory entry: the child and its (encrypted) name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent {
    pub child: InodeNo,
    pub kind: Kind,
    pub sealed_name: Vec<u8>,
}

const DIRENT_V1: u8 = 1;

impl Dirent {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.sealed_name.len());
        out.push(DIRENT_V1);
        out.extend_from_slice(&self.child.0.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.sealed_name);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Dirent, DecodeError> {
        let version = b.first().copied().unwrap_or(0);
        let err = DecodeError {
            what: "directory entry",
            version,
        };
        if version != DIRENT_V1 || b.len() < 10 {
            return Err(err);
        }
        let mut c = Cursor { b: &b[1..] };
        let child = InodeNo(c.u64());
        let kind = Kind::from_u8(c.u8()).ok_or(err)?;
        Ok(Dirent {
            child,
            kind,
            sealed_name: b[10..].to_vec(),
        })
    }
}

/// What the volume knows about one stored block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    /// How many (file, index) slots point at this block.
    pub refcount: u64,
    pub plain_len: u32,
    pub sealed_len: u32,
    /// `blake3` of the sealed block's age header and payload nonce: pins the file key, so a
    /// single 64 KiB chunk can be decrypted and trusted without reading the whole block.
    /// `None` for records written before version 2.
    pub header_hash: Option<[u8; 32]>,
}

const BLOCK_V1: u8 = 1;
const BLOCK_V2: u8 = 2;

impl BlockRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(50);
        out.push(BLOCK_V2);
        out.extend_from_slice(&self.refcount.to_le_bytes());
        out.extend_from_slice(&self.plain_len.to_le_bytes());
        out.extend_from_slice(&self.sealed_len.to_le_bytes());
        match &self.header_hash {
            Some(h) => {
                out.push(1);
                out.extend_from_slice(h);
            }
            None => out.push(0),
        }
        out
    }

    /// Decodes version 2, and version 1 (no header hash).
    pub fn decode(b: &[u8]) -> Result<BlockRecord, DecodeError> {
        let version = b.first().copied().unwrap_or(0);
        let err = DecodeError {
            what: "block record",
            version,
        };
        let ok_len = match version {
            BLOCK_V1 => b.len() == 17,
            BLOCK_V2 => b.len() == 18 || b.len() == 50,
            _ => false,
        };
        if !ok_len {
            return Err(err);
        }
        let mut c = Cursor { b: &b[1..] };
        let mut r = BlockRecord {
            refcount: c.u64(),
            plain_len: c.u32(),
            sealed_len: c.u32(),
            header_hash: None,
        };
        if version == BLOCK_V2 && c.u8() == 1 {
            if b.len() != 50 {
                return Err(err);
            }
            r.header_hash = Some(c.take());
        }
        Ok(r)
    }
}

/// Key of a row scoped to an inode and a tag (directory entries, xattrs): `ino BE || tag`.
pub fn tagged_key(ino: InodeNo, tag: &Tag) -> [u8; 8 + TAG_LEN] {
    let mut k = [0u8; 8 + TAG_LEN];
    k[..8].copy_from_slice(&ino.0.to_be_bytes());
    k[8..].copy_from_slice(tag);
    k
}

/// Splits a tagged key back into its tag.
pub fn tag_of(key: &[u8]) -> Tag {
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&key[8..8 + TAG_LEN]);
    t
}

/// Key of a block-map slot: `ino BE || block index BE`.
pub fn blockmap_key(ino: InodeNo, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&ino.0.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The block index of a block-map key.
pub fn blockmap_index(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[8..16].try_into().expect("block-map keys are 16 bytes"))
}

/// A sealed (tag, ciphertext) pair stored as one value: `tag || ciphertext`.
pub fn encode_sealed(tag: &Tag, ct: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(TAG_LEN + ct.len());
    v.extend_from_slice(tag);
    v.extend_from_slice(ct);
    v
}

/// Splits a value written by [`encode_sealed`].
pub fn decode_sealed(v: &[u8]) -> Result<(Tag, &[u8]), DecodeError> {
    if v.len() < TAG_LEN {
        return Err(DecodeError {
            what: "sealed string",
            version: 0,
        });
    }
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&v[..TAG_LEN]);
    Ok((t, &v[TAG_LEN..]))
}

/// Converts a stored block id.
pub fn block_id_of(v: &[u8]) -> Result<BlockId, DecodeError> {
    Ok(slot_of(v)?.0)
}

/// A block-map slot's value: the block id, and how many of its plaintext bytes count when
/// a truncation cut the block without re-sealing it (`None`: all of them).
pub fn slot_of(v: &[u8]) -> Result<(BlockId, Option<u32>), DecodeError> {
    let err = DecodeError {
        what: "block-map slot",
        version: 0,
    };
    let id = BlockId(v.get(..32).ok_or(err)?.try_into().expect("32 bytes"));
    match v.len() {
        32 => Ok((id, None)),
        36 => Ok((
            id,
            Some(u32::from_le_bytes(v[32..].try_into().expect("4 bytes"))),
        )),
        _ => Err(DecodeError {
            what: "block-map slot",
            version: 0,
        }),
    }
}

/// Encodes a slot value (see [`slot_of`]).
pub fn encode_slot(id: &BlockId, valid: Option<u32>) -> Vec<u8> {
    let mut v = id.0.to_vec();
    if let Some(len) = valid {
        v.extend_from_slice(&len.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trip_and_unknown_version() {
        let ino = Inode {
            kind: Kind::Symlink,
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            nlink: 3,
            size: 5 << 32,
            rdev: 7,
            atime: Timestamp {
                secs: -5,
                nanos: 999_999_999,
            },
            mtime: Timestamp { secs: 1, nanos: 2 },
            ctime: Timestamp { secs: 3, nanos: 4 },
            crtime: Timestamp { secs: 5, nanos: 6 },
            stored_blocks: 9,
            parent: 1,
            reserved_blocks: 0,
            reserve_end: 0,
        };
        let mut b = ino.encode();
        assert_eq!(
            b[0], INODE_V1,
            "no reservation: version 1, readable by older releases"
        );
        assert_eq!(Inode::decode(&b).unwrap(), ino);
        b[0] = 2;
        assert!(Inode::decode(&b).is_err(), "version 2 is longer");
        assert!(Inode::decode(&[]).is_err());
        let reserved = Inode {
            reserved_blocks: 3,
            reserve_end: 7 << 20,
            ..ino
        };
        let mut b = reserved.encode();
        assert_eq!(b[0], INODE_V2);
        assert_eq!(Inode::decode(&b).unwrap(), reserved);
        b[0] = 1;
        assert!(Inode::decode(&b).is_err());
        b[0] = 3;
        assert!(Inode::decode(&b).is_err());
    }

    #[test]
    fn timestamps_before_epoch_round_trip() {
        for t in [
            Timestamp { secs: -1, nanos: 5 },
            Timestamp {
                secs: -100,
                nanos: 0,
            },
            Timestamp { secs: 7, nanos: 1 },
        ] {
            assert_eq!(Timestamp::from_system(t.to_system()), t);
        }
    }

    #[test]
    fn dirent_and_block_round_trip() {
        let d = Dirent {
            child: InodeNo(42),
            kind: Kind::Dir,
            sealed_name: b"xyz".to_vec(),
        };
        assert_eq!(Dirent::decode(&d.encode()).unwrap(), d);
        let mut r = BlockRecord {
            refcount: 2,
            plain_len: 4096,
            sealed_len: 4300,
            header_hash: None,
        };
        assert_eq!(BlockRecord::decode(&r.encode()).unwrap(), r);
        r.header_hash = Some([7; 32]);
        assert_eq!(BlockRecord::decode(&r.encode()).unwrap(), r);
        // Version 1 records (no header hash) still decode.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&2u64.to_le_bytes());
        v1.extend_from_slice(&4096u32.to_le_bytes());
        v1.extend_from_slice(&4300u32.to_le_bytes());
        assert_eq!(BlockRecord::decode(&v1).unwrap().header_hash, None);
    }
}
