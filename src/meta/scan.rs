//! Whole-table scans and the repairs `bitcloud fsck --repair` may make. Scans run over one
//! read snapshot, so a check of a mounted volume sees a consistent state; repairs are single
//! write transactions like any other change.

use super::codec::{self, BlockRecord, Dirent, Inode};
use super::keys;
use super::tables::*;
use super::{MetaError, ReadTx, Result, WriteTx};
use crate::ids::{BlockId, InodeNo};
use crate::names::Tag;

/// Row counts, for progress reporting.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableSizes {
    /// Rows of `fs-2`: inodes, entries, slots, xattrs and the rest.
    pub fs_rows: u64,
    /// Rows of `blocks-2`.
    pub block_rows: u64,
}

/// One row of `fs-2`, decoded as far as fsck needs.
pub enum FsRow {
    Inode(InodeNo, Result<Inode>),
    Dirent(InodeNo, Tag, Result<Dirent>),
    Slot(InodeNo, u64, Result<BlockId>),
    Other,
}

impl ReadTx {
    pub fn table_sizes(&self) -> Result<TableSizes> {
        Ok(TableSizes {
            fs_rows: db!(db!(self.txn.open_table(FS)).len()),
            block_rows: db!(db!(self.txn.open_table(BLOCKS)).len()),
        })
    }

    /// Calls `f` for every row of `fs-2`, in key order (inode by inode).
    pub fn each_fs_row(&self, mut f: impl FnMut(FsRow)) -> Result<()> {
        for row in db!(db!(self.txn.open_table(FS)).iter()) {
            let (k, v) = db!(row);
            let key = k.value();
            let Some((ino, kind, rest)) = keys::split(key) else {
                f(FsRow::Other);
                continue;
            };
            f(match kind {
                keys::INODE => FsRow::Inode(ino, Inode::decode(v.value()).map_err(Into::into)),
                keys::DIRENT => match keys::tag_in(rest) {
                    Some(tag) => {
                        FsRow::Dirent(ino, tag, Dirent::decode(v.value()).map_err(Into::into))
                    }
                    None => FsRow::Other,
                },
                keys::SLOT => match keys::index_in(rest) {
                    Some(i) => {
                        FsRow::Slot(ino, i, codec::block_id_of(v.value()).map_err(Into::into))
                    }
                    None => FsRow::Other,
                },
                _ => FsRow::Other,
            });
        }
        Ok(())
    }

    /// Calls `f` for every inode, in inode order.
    pub fn each_inode(&self, mut f: impl FnMut(InodeNo, Result<Inode>)) -> Result<()> {
        self.each_fs_row(|r| {
            if let FsRow::Inode(ino, i) = r {
                f(ino, i)
            }
        })
    }

    /// Calls `f` for every directory entry: parent, name tag, entry.
    pub fn each_dirent(&self, mut f: impl FnMut(InodeNo, Tag, Result<Dirent>)) -> Result<()> {
        self.each_fs_row(|r| {
            if let FsRow::Dirent(p, t, d) = r {
                f(p, t, d)
            }
        })
    }

    /// Calls `f` for every mapped block-map slot: file, block index, block id.
    pub fn each_slot(&self, mut f: impl FnMut(InodeNo, u64, Result<BlockId>)) -> Result<()> {
        self.each_fs_row(|r| {
            if let FsRow::Slot(ino, i, id) = r {
                f(ino, i, id)
            }
        })
    }

    /// Calls `f` for every stored block's record.
    pub fn each_block(&self, mut f: impl FnMut(BlockId, Result<BlockRecord>)) -> Result<()> {
        let t = db!(self.txn.open_table(BLOCKS));
        let lo = [keys::RECORD];
        let hi = [keys::RECORD + 1];
        for row in db!(t.range::<&[u8]>(&lo[..]..&hi[..])) {
            let (k, v) = db!(row);
            let id = keys::block_id_in(k.value()).ok_or_else(damaged_key)?;
            f(id, BlockRecord::decode(v.value()).map_err(Into::into));
        }
        Ok(())
    }

    /// Calls `f` for every block in the gc queue with the epoch it was freed in.
    pub fn each_gc(&self, mut f: impl FnMut(BlockId, u64)) -> Result<()> {
        self.each_gc_row(|id, epoch, _| f(id, epoch))
    }

    /// [`each_gc`](Self::each_gc), also saying whether the block is inline (no file).
    pub fn each_gc_row(&self, mut f: impl FnMut(BlockId, u64, bool)) -> Result<()> {
        let t = db!(self.txn.open_table(BLOCKS));
        let lo = [keys::GC];
        let hi = [keys::GC + 1];
        for row in db!(t.range::<&[u8]>(&lo[..]..&hi[..])) {
            let (k, v) = db!(row);
            let id = keys::block_id_in(k.value()).ok_or_else(damaged_key)?;
            let v = v.value();
            let epoch = v
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .ok_or_else(damaged_key)?;
            // Rows migrated from format 1 carry no flag: treated as files (deleting a file
            // that is not there is harmless).
            f(id, u64::from_le_bytes(epoch), v.get(8) == Some(&1));
        }
        Ok(())
    }

    /// Inodes unlinked and not yet deleted (open, or waiting for the reaper).
    pub fn orphan_list(&self) -> Result<Vec<InodeNo>> {
        super::orphans_of(&db!(self.txn.open_table(FS)))
    }

    /// Whether a block is referenced or waiting for collection.
    pub fn block_is_known(&self, id: &BlockId) -> Result<bool> {
        let t = db!(self.txn.open_table(BLOCKS));
        Ok(db!(t.get(&keys::block(keys::RECORD, id)[..])).is_some()
            || db!(t.get(&keys::block(keys::GC, id)[..])).is_some())
    }
}

fn damaged_key() -> MetaError {
    MetaError::Decode(codec::DecodeError {
        what: "table key",
        version: 0,
    })
}

impl WriteTx {
    /// Sets the refcount of `id` to `count` (what the block map really holds). Zero moves the
    /// block to the gc queue, as an ordinary last unlink does.
    pub fn fix_refcount(&mut self, id: &BlockId, count: u64) -> Result<()> {
        let blocks = db!(self.txn.open_table(BLOCKS));
        let rkey = keys::block(keys::RECORD, id);
        let current = db!(blocks.get(&rkey[..])).map(|g| g.value().to_vec());
        let Some(v) = current else {
            return Ok(());
        };
        let mut r = BlockRecord::decode(&v)?;
        if count == 0 {
            db!(blocks.remove(&rkey[..]));
            let inline = db!(blocks.get(&keys::block(keys::INLINE, id)[..])).is_some();
            db!(blocks.insert(
                &keys::block(keys::GC, id)[..],
                &super::gc_value(self.epoch, inline)[..]
            ));
        } else {
            r.refcount = count;
            db!(blocks.insert(&rkey[..], &r.encode()[..]));
        }
        Ok(())
    }

    /// Removes a block-map slot that points at no known block (its data is gone).
    pub fn drop_slot(&mut self, ino: InodeNo, index: u64) -> Result<()> {
        db!(db!(self.txn.open_table(FS)).remove(&keys::indexed(ino, keys::SLOT, index)[..]));
        Ok(())
    }
}
