//! Keys of the format-2 tables (big-endian, so rows sort by inode, then kind, then position).
//!
//! `fs-2`:
//!
//! | row | key | value |
//! |---|---|---|
//! | inode | ino ‖ `00` | inode record |
//! | directory entry | parent ino ‖ `01` ‖ name tag (16) | dirent |
//! | block-map slot | ino ‖ `02` ‖ block index | block id (32) |
//! | xattr | ino ‖ `03` ‖ name tag (16) | sealed name and value |
//! | symlink target | ino ‖ `04` | tag ‖ ciphertext |
//! | fallocate reservation | ino ‖ `05` ‖ block index | empty |
//! | orphan | `ff`×8 ‖ `06` ‖ ino | empty: unlinked, to be deleted |
//!
//! `blocks-2`: `00` ‖ id → block record; `01` ‖ id → inline sealed bytes; `02` ‖ id → gc
//! epoch (`u64` LE); `03` ‖ id → placement of its shards; `04` ‖ id → (upload queue);
//! `05` ‖ id → placement of a collected block (release queue). See `placement`.
//! `06` ‖ chunk id → a chunk of the metadata backup in the pool. See `backup`.
//!
//! Inode numbers stay below 2^63, so the orphan rows (under the all-ones prefix) never mix
//! with an inode's rows.

use crate::ids::{BlockId, InodeNo};
use crate::names::Tag;

pub const INODE: u8 = 0x00;
pub const DIRENT: u8 = 0x01;
pub const SLOT: u8 = 0x02;
pub const XATTR: u8 = 0x03;
pub const SYMLINK: u8 = 0x04;
pub const RESERVED: u8 = 0x05;
pub const ORPHAN: u8 = 0x06;

pub const RECORD: u8 = 0x00;
pub const INLINE: u8 = 0x01;
pub const GC: u8 = 0x02;
pub const PLACEMENT: u8 = 0x03;
pub const UPLOAD: u8 = 0x04;
pub const RELEASE: u8 = 0x05;
pub const META_CHUNK: u8 = 0x06;

const ORPHANS_PREFIX: u64 = u64::MAX;

/// `ino ‖ kind`: an inode row, a symlink row, or the start of a kind's range.
pub fn of(ino: InodeNo, kind: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&ino.0.to_be_bytes());
    k[8] = kind;
    k
}

/// `ino ‖ kind ‖ tag` (directory entries, xattrs).
pub fn tagged(ino: InodeNo, kind: u8, tag: &Tag) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[..9].copy_from_slice(&of(ino, kind));
    k[9..].copy_from_slice(tag);
    k
}

/// `ino ‖ kind ‖ index` (block-map slots, reservations).
pub fn indexed(ino: InodeNo, kind: u8, index: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&of(ino, kind));
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The orphan row of `ino`.
pub fn orphan(ino: InodeNo) -> [u8; 17] {
    indexed(InodeNo(ORPHANS_PREFIX), ORPHAN, ino.0)
}

/// The first key of every orphan row (they run to the end of the table).
pub fn orphans_start() -> [u8; 9] {
    of(InodeNo(ORPHANS_PREFIX), ORPHAN)
}

/// The first key after every row of `ino` (its own rows; a directory's entries included).
pub fn after_inode(ino: InodeNo) -> [u8; 9] {
    of(InodeNo(ino.0 + 1), INODE)
}

/// `blocks-2` key: `kind ‖ id`.
pub fn block(kind: u8, id: &BlockId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = kind;
    k[1..].copy_from_slice(&id.0);
    k
}

/// What an `fs-2` key holds: (ino, kind, the rest).
pub fn split(key: &[u8]) -> Option<(InodeNo, u8, &[u8])> {
    if key.len() < 9 {
        return None;
    }
    let ino = u64::from_be_bytes(key[..8].try_into().ok()?);
    Some((InodeNo(ino), key[8], &key[9..]))
}

/// The tag at the end of a tagged key.
pub fn tag_in(rest: &[u8]) -> Option<Tag> {
    rest.try_into().ok()
}

/// The index at the end of an indexed key.
pub fn index_in(rest: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// The block id in a `blocks-2` key.
pub fn block_id_in(key: &[u8]) -> Option<BlockId> {
    Some(BlockId(key.get(1..33)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_an_inode_sort_together_and_orphans_last() {
        let a = InodeNo(5);
        let b = InodeNo(6);
        let t = [0xaa; 16];
        let mut keys = [
            of(b, INODE).to_vec(),
            indexed(a, SLOT, u64::MAX - 1).to_vec(),
            of(a, SYMLINK).to_vec(),
            tagged(a, DIRENT, &t).to_vec(),
            of(a, INODE).to_vec(),
            orphan(InodeNo(1)).to_vec(),
            indexed(a, RESERVED, 0).to_vec(),
        ];
        keys.sort();
        assert_eq!(keys[0], of(a, INODE));
        assert!(keys[..5].iter().all(|k| k[..] < after_inode(a)[..]));
        assert_eq!(keys[5], of(b, INODE));
        assert!(keys[6][..] >= orphans_start()[..]);
        let key = indexed(a, SLOT, 77);
        let (ino, kind, rest) = split(&key).unwrap();
        assert_eq!((ino, kind, index_in(rest)), (a, SLOT, Some(77)));
        assert_eq!(
            block_id_in(&block(GC, &BlockId([3; 32]))),
            Some(BlockId([3; 32]))
        );
    }
}
