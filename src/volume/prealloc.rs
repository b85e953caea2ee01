//! Preallocation: fallocate (mode 0 and `FALLOC_FL_KEEP_SIZE`) reserves real disk space, so
//! a later write into the range cannot fail with ENOSPC, and the file's `st_blocks` counts
//! the range from the start (a write into it does not make the allocation grow).
//!
//! Blocks are sealed and content-addressed, so space cannot be reserved where a block will
//! land. Instead the volume keeps one file, `reserved` in its data dir, allocated (with the
//! host filesystem's own fallocate) to one *unit* per reserved slot: the size of a full
//! sealed block file. The slots are rows of the `prealloc` table and a count in each inode.
//!
//! - fallocate grows the file first (the host's ENOSPC is the caller's ENOSPC, and nothing
//!   changes), then records the slots.
//! - A write that fills a reserved slot ends its reservation in the commit of the block.
//!   Truncation, hole punching and deletion end the reservations they cover.
//! - The file shrinks to the rows' worth at every checkpoint (and at open, after a crash).
//!   Between checkpoints space may be counted twice, never too little.
//! - A seal of a reserved slot that meets ENOSPC anyway (other programs filled the disk)
//!   gives back one unit and tries once more.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::{Result, Volume, VolumeError};
use crate::ids::InodeNo;
use crate::meta::Reader;
use crate::meta::codec::Timestamp;
use crate::store::StoreError;

/// Space each reserved slot keeps for the metadata of its block.
const METADATA_ROOM: u64 = 16 << 10;

/// The reservation file and its unit.
pub(super) struct Reservation {
    path: PathBuf,
    file: Mutex<Option<File>>,
    /// Bytes reserved per slot: a full block's sealed file, rounded up to 4 KiB.
    unit: u64,
}

impl Reservation {
    pub(super) fn new(data_dir: &Path, block_size: u64) -> Reservation {
        // age: a header of ~200 bytes and a 16-byte tag per 64 KiB chunk; and room for the
        // metadata the block's commit adds (redb grows its file as it fills).
        let sealed = block_size + 16 * block_size.div_ceil(64 << 10) + 512 + METADATA_ROOM;
        Reservation {
            path: data_dir.join("reserved"),
            file: Mutex::new(None),
            unit: sealed.div_ceil(4096) * 4096,
        }
    }

    fn io_err(&self, e: std::io::Error) -> VolumeError {
        let code = e.raw_os_error();
        if code == Some(libc::ENOSPC) || code == Some(libc::EDQUOT) {
            return VolumeError::NoSpace;
        }
        VolumeError::Store(StoreError::Io {
            path: self.path.clone(),
            source: e,
        })
    }

    fn with_file<T>(&self, f: impl FnOnce(&File) -> std::io::Result<T>) -> Result<T> {
        let mut slot = self.file.lock();
        if slot.is_none() {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .map_err(|e| self.io_err(e))?;
            *slot = Some(file);
        }
        f(slot.as_ref().expect("opened above")).map_err(|e| self.io_err(e))
    }

    /// Allocates `slots` more units on disk; ENOSPC if the disk cannot hold them.
    fn grow(&self, slots: u64) -> Result<()> {
        if slots == 0 {
            return Ok(());
        }
        let unit = self.unit;
        self.with_file(|f| {
            let len = f.metadata()?.len();
            let add = slots
                .checked_mul(unit)
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFBIG))?;
            // SAFETY: fallocate on an open descriptor with in-range arguments.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, len as i64, add as i64) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }

    /// Frees one unit (a reserved slot needs the space now).
    fn give_back_one(&self) -> Result<bool> {
        let unit = self.unit;
        self.with_file(|f| {
            let len = f.metadata()?.len();
            if len < unit {
                return Ok(false);
            }
            f.set_len(len - unit)?;
            Ok(true)
        })
    }

    /// Sets the file to `slots` units: shrinks exactly, grows as far as the disk allows.
    fn reconcile(&self, slots: u64) -> Result<()> {
        let target = slots.saturating_mul(self.unit);
        let len = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(self.io_err(e)),
        };
        if len > target {
            self.with_file(|f| f.set_len(target))?;
        } else if len < target {
            let missing = (target - len) / self.unit;
            if let Err(e) = self.grow(missing) {
                tracing::warn!(target: "bitcloud::volume", error = %e, missing, "cannot restore every fallocate reservation (disk full)");
            }
        }
        Ok(())
    }
}

impl Volume {
    /// fallocate mode 0 / KEEP_SIZE on `ino` for `offset..end`: reserves every slot in the
    /// range that holds no stored block, and extends the size unless `keep_size`.
    pub(super) fn preallocate(
        &self,
        ino: InodeNo,
        offset: u64,
        end: u64,
        keep_size: bool,
    ) -> Result<()> {
        let file = self.file(ino)?;
        let bs = self.block_size;
        let mut st = file.lock();
        let (first, last) = (offset / bs, end.div_ceil(bs));
        let wanted: Vec<u64> = {
            let tx = self.meta.read()?;
            let stored: std::collections::HashSet<u64> = tx
                .blocks_in(ino, first, last)?
                .into_iter()
                .map(|(i, _)| i)
                .collect();
            let mut v = Vec::new();
            for i in first..last {
                if !stored.contains(&i) && !tx.is_reserved(ino, i)? {
                    v.push(i);
                }
            }
            v
        };
        // Space first: if the disk cannot hold the range, nothing changes.
        self.reservation.grow(wanted.len() as u64)?;
        let now = Timestamp::now();
        let committed = (|| -> Result<()> {
            let mut tx = self.meta.write()?;
            let mut inode = self.load_inode(&tx, ino)?;
            inode.reserved_blocks += tx.reserve_slots(ino, &wanted)?;
            inode.reserve_end = inode.reserve_end.max(end);
            tx.put_inode(ino, &inode)?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = committed {
            // Give the space back at once rather than at the next checkpoint.
            drop(st);
            let total = self.meta.read()?.reserved_total()?;
            self.reservation.reconcile(total)?;
            return Err(e);
        }
        self.mark_dirty();
        // The size and times go through the file's state, like a write's.
        if !keep_size && end > st.size {
            st.size = end;
            st.mtime = now;
        }
        st.ctime = now;
        st.attr_dirty = true;
        Ok(())
    }

    /// Sets the reservation file to what the metadata reserves (checkpoints, open).
    pub(super) fn reconcile_reservations(&self) -> Result<()> {
        let total = self.meta.read()?.reserved_total()?;
        self.reservation.reconcile(total)
    }

    /// After a seal of slot (`ino`, `index`) failed with ENOSPC: if the slot is reserved,
    /// frees one unit of the reservation so the retry finds the space it was promised.
    pub(super) fn release_for(&self, ino: InodeNo, index: u64) -> Result<bool> {
        if !self.meta.read()?.is_reserved(ino, index)? {
            return Ok(false);
        }
        self.reservation.give_back_one()
    }
}
