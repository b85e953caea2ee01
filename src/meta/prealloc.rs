//! Block slots reserved by fallocate and not yet stored (`PREALLOC`: ino BE || index BE).
//! The rows say which slots a file may still fill without needing new space; the volume keeps
//! a real reservation on disk for as many blocks as there are rows (`volume::prealloc`).
//! Each row is counted in its inode's `reserved_blocks`, changed in the same transaction.

use redb::{ReadableTable, ReadableTableMetadata};

use super::codec;
use super::tables::PREALLOC;
use super::{MetaError, ReadTx, Result, WriteTx};
use crate::ids::InodeNo;

impl WriteTx {
    /// Reserves the slots `indices` of `ino`; returns how many were not reserved already.
    pub fn reserve_slots(&mut self, ino: InodeNo, indices: &[u64]) -> Result<u64> {
        let mut t = db!(self.txn.open_table(PREALLOC));
        let mut added = 0;
        for &i in indices {
            if db!(t.insert(&codec::blockmap_key(ino, i)[..], ())).is_none() {
                added += 1;
            }
        }
        Ok(added)
    }

    /// Ends the reservation of one slot (it now holds a stored block); whether it had one.
    pub fn take_reserved(&mut self, ino: InodeNo, index: u64) -> Result<bool> {
        let mut t = db!(self.txn.open_table(PREALLOC));
        Ok(db!(t.remove(&codec::blockmap_key(ino, index)[..])).is_some())
    }

    /// Ends the reservations of `ino` with index in `from..to`; returns how many there were.
    pub fn unreserve(&mut self, ino: InodeNo, from: u64, to: u64) -> Result<u64> {
        let mut t = db!(self.txn.open_table(PREALLOC));
        let lo = codec::blockmap_key(ino, from);
        let hi = codec::blockmap_key(ino, to);
        let keys: Vec<Vec<u8>> = db!(t.range::<&[u8]>(&lo[..]..&hi[..]))
            .map(|r| r.map(|(k, _)| k.value().to_vec()))
            .collect::<std::result::Result<_, _>>()
            .map_err(MetaError::from_redb)?;
        for k in &keys {
            db!(t.remove(&k[..]));
        }
        Ok(keys.len() as u64)
    }

    /// Reserved slots in the whole volume.
    pub fn reserved_total(&self) -> Result<u64> {
        Ok(db!(db!(self.txn.open_table(PREALLOC)).len()))
    }
}

impl ReadTx {
    /// Whether slot (`ino`, `index`) is reserved.
    pub fn is_reserved(&self, ino: InodeNo, index: u64) -> Result<bool> {
        let t = db!(self.txn.open_table(PREALLOC));
        Ok(db!(t.get(&codec::blockmap_key(ino, index)[..])).is_some())
    }

    /// Reserved slots in the whole volume.
    pub fn reserved_total(&self) -> Result<u64> {
        Ok(db!(db!(self.txn.open_table(PREALLOC)).len()))
    }

    /// Every reserved slot, as (ino, index), in key order (fsck).
    pub fn reserved_slots(&self) -> Result<Vec<(InodeNo, u64)>> {
        let t = db!(self.txn.open_table(PREALLOC));
        let mut out = Vec::new();
        for row in db!(t.iter()) {
            let (k, _) = db!(row);
            let k = k.value();
            let ino = u64::from_be_bytes(k[..8].try_into().expect("prealloc keys are 16 bytes"));
            out.push((InodeNo(ino), codec::blockmap_index(k)));
        }
        Ok(out)
    }
}
