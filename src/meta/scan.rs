//! Whole-table scans and the repairs `bitcloud fsck --repair` may make. Scans run over one
//! read snapshot, so a check of a mounted volume sees a consistent state; repairs are single
//! write transactions like any other change.

use redb::{ReadableTable, ReadableTableMetadata};

use super::codec::{self, BlockRecord, Dirent, Inode};
use super::tables::*;
use super::{MetaError, ReadTx, Result, WriteTx};
use crate::ids::{BlockId, InodeNo};
use crate::names::Tag;

/// Row counts, for progress reporting.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableSizes {
    pub inodes: u64,
    pub dirents: u64,
    pub slots: u64,
    pub blocks: u64,
}

impl ReadTx {
    pub fn table_sizes(&self) -> Result<TableSizes> {
        Ok(TableSizes {
            inodes: db!(db!(self.txn.open_table(INODES)).len()),
            dirents: db!(db!(self.txn.open_table(DIRENTS)).len()),
            slots: db!(db!(self.txn.open_table(BLOCKMAP)).len()),
            blocks: db!(db!(self.txn.open_table(BLOCKS)).len()),
        })
    }

    /// Calls `f` for every inode, in inode order.
    pub fn each_inode(&self, mut f: impl FnMut(InodeNo, Result<Inode>)) -> Result<()> {
        for row in db!(db!(self.txn.open_table(INODES)).iter()) {
            let (k, v) = db!(row);
            f(
                InodeNo(k.value()),
                Inode::decode(v.value()).map_err(Into::into),
            );
        }
        Ok(())
    }

    /// Calls `f` for every directory entry: parent, name tag, entry.
    pub fn each_dirent(&self, mut f: impl FnMut(InodeNo, Tag, Result<Dirent>)) -> Result<()> {
        for row in db!(db!(self.txn.open_table(DIRENTS)).iter()) {
            let (k, v) = db!(row);
            let key = k.value();
            let parent = InodeNo(u64::from_be_bytes(key[..8].try_into().expect("8 bytes")));
            f(
                parent,
                codec::tag_of(key),
                Dirent::decode(v.value()).map_err(Into::into),
            );
        }
        Ok(())
    }

    /// Calls `f` for every mapped block-map slot: file, block index, block id.
    pub fn each_slot(&self, mut f: impl FnMut(InodeNo, u64, Result<BlockId>)) -> Result<()> {
        for row in db!(db!(self.txn.open_table(BLOCKMAP)).iter()) {
            let (k, v) = db!(row);
            let key = k.value();
            let ino = InodeNo(u64::from_be_bytes(key[..8].try_into().expect("8 bytes")));
            f(
                ino,
                codec::blockmap_index(key),
                codec::block_id_of(v.value()).map_err(Into::into),
            );
        }
        Ok(())
    }

    /// Calls `f` for every stored block's record.
    pub fn each_block(&self, mut f: impl FnMut(BlockId, Result<BlockRecord>)) -> Result<()> {
        for row in db!(db!(self.txn.open_table(BLOCKS)).iter()) {
            let (k, v) = db!(row);
            let id = codec::block_id_of(k.value())?;
            f(id, BlockRecord::decode(v.value()).map_err(Into::into));
        }
        Ok(())
    }

    /// Inodes unlinked while open (deleted at the next mount).
    pub fn orphan_list(&self) -> Result<Vec<InodeNo>> {
        let mut out = Vec::new();
        for row in db!(db!(self.txn.open_table(ORPHANS)).iter()) {
            out.push(InodeNo(db!(row).0.value()));
        }
        Ok(out)
    }

    /// Whether a block is referenced or waiting for collection.
    pub fn block_is_known(&self, id: &BlockId) -> Result<bool> {
        use super::Reader;
        if self.block_record(id)?.is_some() {
            return Ok(true);
        }
        Ok(db!(db!(self.txn.open_table(GC)).get(&id.0[..])).is_some())
    }
}

impl WriteTx {
    /// Sets the refcount of `id` to `count` (what the block map really holds). Zero moves the
    /// block to the gc queue, as an ordinary last unlink does.
    pub fn fix_refcount(&mut self, id: &BlockId, count: u64) -> Result<()> {
        let mut blocks = db!(self.txn.open_table(BLOCKS));
        let current = db!(blocks.get(&id.0[..])).map(|g| g.value().to_vec());
        let Some(v) = current else {
            return Ok(());
        };
        let mut r = BlockRecord::decode(&v)?;
        if count == 0 {
            db!(blocks.remove(&id.0[..]));
            db!(db!(self.txn.open_table(GC)).insert(&id.0[..], self.epoch));
        } else {
            r.refcount = count;
            db!(blocks.insert(&id.0[..], &r.encode()[..]));
        }
        Ok(())
    }

    /// Removes a block-map slot that points at no known block (its data is gone).
    pub fn drop_slot(&mut self, ino: InodeNo, index: u64) -> Result<()> {
        db!(db!(self.txn.open_table(BLOCKMAP)).remove(&codec::blockmap_key(ino, index)[..]));
        Ok(())
    }
}
