//! Block slots reserved by fallocate and not yet stored (`fs-2` rows ino ‖ `05` ‖ index).
//! The rows say which slots a file may still fill without needing new space; the volume keeps
//! a real reservation on disk for as many blocks as there are rows (`volume::prealloc`).
//! Each row is counted in its inode's `reserved_blocks`, and all of them in the superblock's
//! `reserved`, both changed in the same transaction as the rows.

use super::keys;
use super::reader::key_index;
use super::tables::{FS, SUPERBLOCK};
use super::{MetaError, ReadTx, Result, WriteTx};
use crate::ids::InodeNo;

impl WriteTx {
    /// Reserves the slots `indices` of `ino`; returns how many were not reserved already.
    pub fn reserve_slots(&mut self, ino: InodeNo, indices: &[u64]) -> Result<u64> {
        let mut added = 0;
        {
            let t = db!(self.txn.open_table(FS));
            for &i in indices {
                if db!(t.insert(&keys::indexed(ino, keys::RESERVED, i)[..], &[][..])).is_none() {
                    added += 1;
                }
            }
        }
        self.add_reserved_total(added as i64)?;
        Ok(added)
    }

    /// Ends the reservation of one slot (it now holds a stored block); whether it had one.
    pub fn take_reserved(&mut self, ino: InodeNo, index: u64) -> Result<bool> {
        let taken = {
            let t = db!(self.txn.open_table(FS));
            db!(t.remove(&keys::indexed(ino, keys::RESERVED, index)[..])).is_some()
        };
        if taken {
            self.add_reserved_total(-1)?;
        }
        Ok(taken)
    }

    /// Ends the reservations of `ino` with index in `from..to`; returns how many there were.
    pub fn unreserve(&mut self, ino: InodeNo, from: u64, to: u64) -> Result<u64> {
        let lo = keys::indexed(ino, keys::RESERVED, from);
        let hi = if to == u64::MAX {
            keys::of(ino, keys::RESERVED + 1).to_vec()
        } else {
            keys::indexed(ino, keys::RESERVED, to).to_vec()
        };
        let found: Vec<Vec<u8>> = {
            let t = db!(self.txn.open_table(FS));
            db!(t.range::<&[u8]>(&lo[..]..&hi[..]))
                .map(|r| r.map(|(k, _)| k.value().to_vec()))
                .collect::<std::result::Result<_, _>>()
                .map_err(MetaError::from_redb)?
        };
        if found.is_empty() {
            return Ok(0);
        }
        {
            let t = db!(self.txn.open_table(FS));
            for k in &found {
                db!(t.remove(&k[..]));
            }
        }
        self.add_reserved_total(-(found.len() as i64))?;
        Ok(found.len() as u64)
    }

    /// Reserved slots in the whole volume.
    pub fn reserved_total(&self) -> Result<u64> {
        let sb = db!(self.txn.open_table(SUPERBLOCK));
        Ok(db!(sb.get("reserved")).map(|g| g.value()).unwrap_or(0))
    }

    pub(super) fn add_reserved_total(&mut self, delta: i64) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        let now = self.reserved_total()?;
        let sb = db!(self.txn.open_table(SUPERBLOCK));
        db!(sb.insert("reserved", now.saturating_add_signed(delta)));
        Ok(())
    }
}

impl ReadTx {
    /// Reserved slots in the whole volume.
    pub fn reserved_total(&self) -> Result<u64> {
        let sb = db!(self.txn.open_table(SUPERBLOCK));
        Ok(db!(sb.get("reserved")).map(|g| g.value()).unwrap_or(0))
    }

    /// Every reserved slot, as (ino, index), in key order (fsck).
    pub fn reserved_slots(&self) -> Result<Vec<(InodeNo, u64)>> {
        let t = db!(self.txn.open_table(FS));
        let mut out = Vec::new();
        for row in db!(t.iter()) {
            let (k, _) = db!(row);
            if let Some((ino, keys::RESERVED, _)) = keys::split(k.value()) {
                out.push((ino, key_index(k.value())?));
            }
        }
        Ok(out)
    }
}
