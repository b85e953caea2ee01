//! What answering a request may wait for, told before it is answered: the FUSE side answers
//! quick requests on its one request thread and hands the others to threads of their own
//! (see `fuse/offload.rs`), so that a read from the pool, an fsync or a write held back by
//! the write budget never keeps a `stat` waiting.
//!
//! These are cheap guesses from the state at the time of asking (a file lock and a metadata
//! snapshot, no I/O). A wrong guess costs time, never correctness: every request gives the
//! same answer wherever it runs.

use std::sync::Arc;

use super::Volume;
use super::commit::INLINE_MAX;
use super::file::OpenFile;
use super::read::PARTIAL_READ_MAX;
use crate::ids::InodeNo;
use crate::meta::Reader;

/// What a request may wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wait {
    /// Memory and the metadata database: microseconds.
    Quick,
    /// This machine, for longer: a whole block read and decrypted, seals waited for, fsync.
    Local,
    /// The pool: a block that is on no local disk (up to `pool.read_timeout`).
    Pool,
}

impl Volume {
    /// What `read(ino, offset, len)` may wait for.
    pub fn read_wait(&self, ino: InodeNo, offset: u64, len: u64) -> Wait {
        self.load_wait(ino, offset, len, false)
    }

    /// What `write(ino, offset, len bytes)` may wait for: the write budget, or the blocks a
    /// partial write must read in first.
    pub fn write_wait(&self, ino: InodeNo, offset: u64, len: u64) -> Wait {
        if self.write_budget.over() {
            return Wait::Local;
        }
        let bs = self.block_size;
        let end = offset.saturating_add(len);
        let mut wait = Wait::Quick;
        // Only the edge blocks a write covers in part are read in.
        if len > 0 && !offset.is_multiple_of(bs) {
            wait = wait.max(self.load_wait(ino, offset, 1, true));
        }
        if len > 0 && !end.is_multiple_of(bs) {
            wait = wait.max(self.load_wait(ino, end - 1, 1, true));
        }
        wait
    }

    /// What close(2) of `ino` (FUSE FLUSH) may wait for: the seals of blocks larger than
    /// `INLINE_MAX` (see `Volume::close`).
    pub fn close_wait(&self, ino: InodeNo) -> Wait {
        match self.open_file(ino) {
            Some(file) => large_dirty(&file),
            None => Wait::Quick,
        }
    }

    /// What releasing handle `fh` may wait for: its file's close, if it is the last handle.
    pub fn release_wait(&self, fh: u64) -> Wait {
        let Some(ino) = self.handles.lock().get(&fh).copied() else {
            return Wait::Quick;
        };
        match self.open_file(ino) {
            Some(file) if file.opens() <= 1 => large_dirty(&file),
            _ => Wait::Quick,
        }
    }

    /// The open state of `ino`, if it has one. The map's lock is released on return: a file's
    /// lock is never taken under it (`maybe_evict` takes them the other way round).
    fn open_file(&self, ino: InodeNo) -> Option<Arc<OpenFile>> {
        let files = self.files.lock();
        files.get(&ino).cloned()
    }

    /// What loading the blocks of `len` bytes at `offset` may wait for. `whole`: a block is
    /// always loaded whole (a write's read-modify-write), never decrypted only in part.
    fn load_wait(&self, ino: InodeNo, offset: u64, len: u64, whole: bool) -> Wait {
        if len == 0 {
            return Wait::Quick;
        }
        let bs = self.block_size;
        let end = offset.saturating_add(len);
        let (first, last) = (offset / bs, (end - 1) / bs);
        let dirty: Vec<u64> = match self.open_file(ino) {
            Some(file) => file
                .lock()
                .dirty
                .range(first..=last)
                .map(|(i, _)| *i)
                .collect(),
            None => Vec::new(),
        };
        let Ok(tx) = self.meta.read() else {
            return Wait::Quick; // the request itself reports it
        };
        let Ok(slots) = tx.slots_in(ino, first, last + 1) else {
            return Wait::Quick;
        };
        let mut wait = Wait::Quick;
        for (index, id, _) in slots {
            if dirty.contains(&index) || self.cache.contains(&id) {
                continue;
            }
            if !self.store.contains(&id) {
                if tx.inline_block(&id).ok().flatten().is_some() {
                    continue; // at most INLINE_MAX bytes, in memory
                }
                if self.has_remote() {
                    return Wait::Pool;
                }
                continue; // missing everywhere: the request fails at once
            }
            let covered = end.min((index + 1) * bs) - offset.max(index * bs);
            if whole || covered > PARTIAL_READ_MAX as u64 {
                wait = Wait::Local;
            }
        }
        wait
    }
}

/// `Local` if a dirty block of `file` is larger than `INLINE_MAX`: its close waits for seals.
fn large_dirty(file: &Arc<OpenFile>) -> Wait {
    if file
        .lock()
        .dirty
        .values()
        .any(|d| d.data.len() > INLINE_MAX)
    {
        Wait::Local
    } else {
        Wait::Quick
    }
}
