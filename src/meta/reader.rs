//! Reads shared by read and write transactions: the [`Reader`] trait, implemented once by a
//! macro over redb's `ReadableTable` for both [`ReadTx`] and [`WriteTx`], and the totals
//! `status` shows ([`Counts`]).

use super::codec::{self, BlockRecord, Dirent, Inode};
use super::keys;
use super::tables::*;
use super::{MetaError, ReadTx, Result, WriteTx};
use crate::ids::{BlockId, InodeNo};
use crate::names::Tag;

/// Reads shared by read and write transactions. Implemented once over redb's `ReadableTable`.
pub trait Reader {
    fn inode(&self, ino: InodeNo) -> Result<Option<Inode>>;
    fn dirent(&self, parent: InodeNo, tag: &Tag) -> Result<Option<Dirent>>;
    /// Entries of `parent` in tag order, starting after `after` (exclusive), at most `limit`.
    fn list_dir(
        &self,
        parent: InodeNo,
        after: Option<&Tag>,
        limit: usize,
    ) -> Result<Vec<(Tag, Dirent)>>;
    fn block_at(&self, ino: InodeNo, index: u64) -> Result<Option<BlockId>>;
    /// The slot's block and how many of its bytes are valid (`None`: all).
    fn slot_at(&self, ino: InodeNo, index: u64) -> Result<Option<(BlockId, Option<u32>)>>;
    /// Mapped slots of `ino` with index in `from..to`, with their valid lengths.
    fn slots_in(
        &self,
        ino: InodeNo,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, BlockId, Option<u32>)>>;
    /// Mapped blocks of `ino` with index in `from..to`.
    fn blocks_in(&self, ino: InodeNo, from: u64, to: u64) -> Result<Vec<(u64, BlockId)>>;
    fn block_record(&self, id: &BlockId) -> Result<Option<BlockRecord>>;
    fn symlink(&self, ino: InodeNo) -> Result<Option<Vec<u8>>>;
    /// The sealed bytes of a block stored inline, if it is.
    fn inline_block(&self, id: &BlockId) -> Result<Option<Vec<u8>>>;
    fn xattr(&self, ino: InodeNo, tag: &Tag) -> Result<Option<Vec<u8>>>;
    fn xattrs(&self, ino: InodeNo) -> Result<Vec<(Tag, Vec<u8>)>>;
    /// Whether slot (`ino`, `index`) is reserved by fallocate.
    fn is_reserved(&self, ino: InodeNo, index: u64) -> Result<bool>;
    fn counts(&self) -> Result<Counts>;
}

/// Totals for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub inodes: u64,
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    /// Block-map slots that point at a stored block.
    pub mapped_slots: u64,
    pub blocks: u64,
    pub block_plain_bytes: u64,
    pub block_sealed_bytes: u64,
    /// Plaintext bytes referenced by all block-map slots (counting shared blocks each time).
    pub referenced_plain_bytes: u64,
    pub gc_pending: u64,
}

macro_rules! impl_reader {
    ($ty:ty) => {
        impl Reader for $ty {
            fn inode(&self, ino: InodeNo) -> Result<Option<Inode>> {
                let t = db!(self.txn.open_table(FS));
                let g = db!(t.get(&keys::of(ino, keys::INODE)[..]));
                Ok(match g {
                    Some(v) => Some(Inode::decode(v.value())?),
                    None => None,
                })
            }

            fn dirent(&self, parent: InodeNo, tag: &Tag) -> Result<Option<Dirent>> {
                let t = db!(self.txn.open_table(FS));
                let g = db!(t.get(&keys::tagged(parent, keys::DIRENT, tag)[..]));
                Ok(match g {
                    Some(v) => Some(Dirent::decode(v.value())?),
                    None => None,
                })
            }

            fn list_dir(
                &self,
                parent: InodeNo,
                after: Option<&Tag>,
                limit: usize,
            ) -> Result<Vec<(Tag, Dirent)>> {
                let t = db!(self.txn.open_table(FS));
                let lo = keys::tagged(parent, keys::DIRENT, after.unwrap_or(&[0u8; 16]));
                let hi = keys::of(parent, keys::DIRENT + 1);
                let mut out = Vec::new();
                for row in db!(t.range::<&[u8]>(&lo[..]..&hi[..])) {
                    let (k, v) = db!(row);
                    let tag = key_tag(k.value())?;
                    if after == Some(&tag) {
                        continue;
                    }
                    out.push((tag, Dirent::decode(v.value())?));
                    if out.len() >= limit {
                        break;
                    }
                }
                Ok(out)
            }

            fn block_at(&self, ino: InodeNo, index: u64) -> Result<Option<BlockId>> {
                Ok(self.slot_at(ino, index)?.map(|(id, _)| id))
            }

            fn slot_at(&self, ino: InodeNo, index: u64) -> Result<Option<(BlockId, Option<u32>)>> {
                let t = db!(self.txn.open_table(FS));
                let g = db!(t.get(&keys::indexed(ino, keys::SLOT, index)[..]));
                Ok(match g {
                    Some(v) => Some(codec::slot_of(v.value())?),
                    None => None,
                })
            }

            fn blocks_in(&self, ino: InodeNo, from: u64, to: u64) -> Result<Vec<(u64, BlockId)>> {
                Ok(self
                    .slots_in(ino, from, to)?
                    .into_iter()
                    .map(|(i, id, _)| (i, id))
                    .collect())
            }

            fn slots_in(
                &self,
                ino: InodeNo,
                from: u64,
                to: u64,
            ) -> Result<Vec<(u64, BlockId, Option<u32>)>> {
                let mut out = Vec::new();
                if from >= to {
                    return Ok(out);
                }
                let t = db!(self.txn.open_table(FS));
                let lo = keys::indexed(ino, keys::SLOT, from);
                let hi = keys::indexed(ino, keys::SLOT, to);
                for row in db!(t.range::<&[u8]>(&lo[..]..&hi[..])) {
                    let (k, v) = db!(row);
                    let (id, valid) = codec::slot_of(v.value())?;
                    out.push((key_index(k.value())?, id, valid));
                }
                Ok(out)
            }

            fn block_record(&self, id: &BlockId) -> Result<Option<BlockRecord>> {
                let t = db!(self.txn.open_table(BLOCKS));
                let g = db!(t.get(&keys::block(keys::RECORD, id)[..]));
                Ok(match g {
                    Some(v) => Some(BlockRecord::decode(v.value())?),
                    None => None,
                })
            }

            fn symlink(&self, ino: InodeNo) -> Result<Option<Vec<u8>>> {
                let t = db!(self.txn.open_table(FS));
                let g = db!(t.get(&keys::of(ino, keys::SYMLINK)[..]));
                Ok(g.map(|v| v.value().to_vec()))
            }

            fn inline_block(&self, id: &BlockId) -> Result<Option<Vec<u8>>> {
                let t = db!(self.txn.open_table(BLOCKS));
                let g = db!(t.get(&keys::block(keys::INLINE, id)[..]));
                Ok(g.map(|v| v.value().to_vec()))
            }

            fn xattr(&self, ino: InodeNo, tag: &Tag) -> Result<Option<Vec<u8>>> {
                let t = db!(self.txn.open_table(FS));
                let g = db!(t.get(&keys::tagged(ino, keys::XATTR, tag)[..]));
                Ok(g.map(|v| v.value().to_vec()))
            }

            fn xattrs(&self, ino: InodeNo) -> Result<Vec<(Tag, Vec<u8>)>> {
                let t = db!(self.txn.open_table(FS));
                let lo = keys::of(ino, keys::XATTR);
                let hi = keys::of(ino, keys::XATTR + 1);
                let mut out = Vec::new();
                for row in db!(t.range::<&[u8]>(&lo[..]..&hi[..])) {
                    let (k, v) = db!(row);
                    out.push((key_tag(k.value())?, v.value().to_vec()));
                }
                Ok(out)
            }

            fn is_reserved(&self, ino: InodeNo, index: u64) -> Result<bool> {
                let t = db!(self.txn.open_table(FS));
                Ok(db!(t.get(&keys::indexed(ino, keys::RESERVED, index)[..])).is_some())
            }

            fn counts(&self) -> Result<Counts> {
                let mut c = Counts::default();
                let fs = db!(self.txn.open_table(FS));
                for row in db!(fs.iter()) {
                    let (k, v) = db!(row);
                    let Some((_, kind, _)) = keys::split(k.value()) else {
                        continue;
                    };
                    match kind {
                        keys::INODE => {
                            let ino = Inode::decode(v.value())?;
                            c.inodes += 1;
                            match ino.kind {
                                codec::Kind::File => {
                                    c.files += 1;
                                    c.logical_bytes += ino.size;
                                }
                                codec::Kind::Dir => c.dirs += 1,
                                _ => {}
                            }
                        }
                        keys::SLOT => c.mapped_slots += 1,
                        _ => {}
                    }
                }
                let blocks = db!(self.txn.open_table(BLOCKS));
                for row in db!(blocks.iter()) {
                    let (k, v) = db!(row);
                    match k.value().first() {
                        Some(&keys::RECORD) => {
                            let r = BlockRecord::decode(v.value())?;
                            c.blocks += 1;
                            c.block_plain_bytes += r.plain_len as u64;
                            c.block_sealed_bytes += r.sealed_len as u64;
                            c.referenced_plain_bytes += r.refcount * r.plain_len as u64;
                        }
                        Some(&keys::GC) => c.gc_pending += 1,
                        _ => {}
                    }
                }
                Ok(c)
            }
        }
    };
}

impl_reader!(ReadTx);
impl_reader!(WriteTx);

fn damaged_key() -> MetaError {
    MetaError::Decode(codec::DecodeError {
        what: "table key",
        version: 0,
    })
}

/// The tag of a tagged `fs-2` key.
pub(super) fn key_tag(key: &[u8]) -> Result<Tag> {
    keys::split(key)
        .and_then(|(_, _, rest)| keys::tag_in(rest))
        .ok_or_else(damaged_key)
}

/// The index of an indexed `fs-2` key.
pub(super) fn key_index(key: &[u8]) -> Result<u64> {
    keys::split(key)
        .and_then(|(_, _, rest)| keys::index_in(rest))
        .ok_or_else(damaged_key)
}
