//! Open files: per-inode state and write buffers, writes, flush, fsync, truncation,
//! fallocate. Reads are in `read`, sealing and committing blocks in `commit`.
//!
//! Every inode that is open (or being truncated) has one [`OpenFile`], shared by all its
//! handles and hard links. Its state holds the logical size and times while they are ahead of
//! the metadata database, plus *dirty blocks*: plaintext blocks that differ from what the block
//! map says. Writes patch dirty blocks in memory (a block not yet dirty is read in first when
//! the write covers it only partly). A block written to its end is handed to the sealer at
//! once; the rest are sealed at flush, by age (`write_back`), or when the volume's write
//! budget is exceeded, in which case the writer waits for sealing to catch up (see `dirty`).
//!
//! Each dirty block carries a sequence number. A finished seal commits only if its block is
//! still the current version (a later write bumps the number), so out-of-order completion can
//! never put old bytes back. Commit happens under the file's lock, inside one transaction with
//! the inode's size and times.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::dirty::{Dirty, DirtyBlocks};
use super::sealer::SealJob;
use super::{Result, Volume, VolumeError};
use crate::ids::InodeNo;
use crate::meta::Reader;
use crate::meta::codec::{Inode, Kind, Timestamp};

/// How a file is being opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
}

impl OpenFlags {
    pub fn write_only() -> OpenFlags {
        OpenFlags {
            read: false,
            write: true,
        }
    }
}

pub(super) struct FileState {
    pub(super) size: u64,
    pub(super) mtime: Timestamp,
    pub(super) ctime: Timestamp,
    /// Size or times are ahead of the database.
    pub(super) attr_dirty: bool,
    pub(super) dirty: DirtyBlocks,
    /// Blocks handed to a sealer and not yet committed or discarded.
    pub(super) in_flight: usize,
    next_seq: u64,
    /// A sealing failure not yet reported; the next flush or fsync returns it.
    pub(super) error: Option<VolumeError>,
}

impl FileState {
    /// Merges pending times into an inode being written by `setattr`.
    pub(super) fn take_times(&mut self, inode: &mut Inode, mtime_set: bool) {
        if self.attr_dirty {
            inode.size = self.size;
            if !mtime_set {
                inode.mtime = self.mtime;
            }
        }
        self.mtime = inode.mtime;
        self.ctime = inode.ctime;
    }

    /// Writes the size and times held here into `inode` (before committing it, or to show
    /// what is ahead of the database).
    pub(super) fn stamp(&self, inode: &mut Inode) {
        inode.size = self.size;
        inode.mtime = self.mtime;
        inode.ctime = self.ctime;
    }

    fn bump(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// The shared state of one open inode.
pub(super) struct OpenFile {
    pub(super) ino: InodeNo,
    state: Mutex<FileState>,
    /// Notified when a seal of this file finishes.
    pub(super) changed: Condvar,
    /// Open handles; changed only under the volume's `files` map lock.
    opens: AtomicU32,
    /// Where the last read ended: a read starting there is sequential (prefetch pays).
    pub(super) read_end: AtomicU64,
}

impl OpenFile {
    pub(super) fn lock(&self) -> MutexGuard<'_, FileState> {
        self.state.lock()
    }

    /// Open handles now.
    pub(super) fn opens(&self) -> u32 {
        self.opens.load(Ordering::SeqCst)
    }

    /// Whether some of this file's data is still only in memory.
    pub(super) fn is_dirty(&self) -> bool {
        let st = self.state.lock();
        !st.dirty.is_empty() || st.in_flight > 0 || st.attr_dirty
    }

    /// Bytes of this file's data still only in memory (written, not yet sealed and stored).
    pub(super) fn unsealed_bytes(&self) -> u64 {
        let st = self.state.lock();
        st.dirty.values().map(|d| d.data.len() as u64).sum()
    }

    /// Shows size and times that are ahead of the database.
    ///
    /// `fresh` reads the inode from the database *under the file's lock*: reading it first
    /// and overlaying after raced with a seal that committed the new size and cleared
    /// `attr_dirty` in between, and a stat could then see a size from before a write that
    /// had already returned (found by the fsx mount test). `None` if the inode is gone.
    ///
    /// A closed file whose last blocks are still being sealed (`Volume::close`) is waited
    /// for: its allocation (`st_blocks`) is known once they are committed, microseconds away.
    /// An open file is not (a long write would hold every stat of it back).
    pub(super) fn overlay(&self, fresh: impl FnOnce() -> Option<Inode>) -> Option<Inode> {
        let mut st = self.state.lock();
        while st.in_flight > 0 && self.opens.load(Ordering::SeqCst) == 0 {
            self.changed.wait(&mut st);
        }
        let mut inode = fresh()?;
        if st.attr_dirty {
            st.stamp(&mut inode);
        }
        Some(inode)
    }
}

impl Volume {
    /// The open state of `ino`, created from the database if needed (does not count as open).
    pub(super) fn file(&self, ino: InodeNo) -> Result<Arc<OpenFile>> {
        if let Some(f) = self.files.lock().get(&ino) {
            return Ok(f.clone());
        }
        let inode = self.load_inode(&self.meta.read()?, ino)?;
        match inode.kind {
            Kind::File => {}
            Kind::Dir => return Err(VolumeError::IsDir),
            _ => return Err(VolumeError::Invalid("not a regular file")),
        }
        let fresh = Arc::new(OpenFile {
            ino,
            state: Mutex::new(FileState {
                size: inode.size,
                mtime: inode.mtime,
                ctime: inode.ctime,
                attr_dirty: false,
                dirty: DirtyBlocks::new(self.write_budget.clone()),
                in_flight: 0,
                next_seq: 0,
                error: None,
            }),
            changed: Condvar::new(),
            opens: AtomicU32::new(0),
            read_end: AtomicU64::new(0),
        });
        Ok(self.files.lock().entry(ino).or_insert(fresh).clone())
    }

    /// Forgets the open state of `ino` if nothing needs it any more.
    pub(super) fn maybe_evict(&self, file: &Arc<OpenFile>) {
        let st = file.lock();
        if !st.dirty.is_empty() || st.in_flight > 0 || st.attr_dirty {
            return;
        }
        let mut files = self.files.lock();
        if file.opens.load(Ordering::SeqCst) == 0
            && files.get(&file.ino).is_some_and(|f| Arc::ptr_eq(f, file))
        {
            files.remove(&file.ino);
        }
    }

    /// Whether `ino` has open handles.
    pub(super) fn is_open(&self, ino: InodeNo) -> bool {
        self.files
            .lock()
            .get(&ino)
            .is_some_and(|f| f.opens.load(Ordering::SeqCst) > 0)
    }

    /// Opens a regular file; returns a handle number. Opening for reading counts as an access
    /// (see `atime`): reads the kernel then serves from its page cache never reach the volume.
    pub fn open(&self, ino: InodeNo, flags: OpenFlags) -> Result<u64> {
        // An unlinked inode nothing holds open is waiting to be deleted: not openable.
        self.live_inode(&self.meta.read()?, ino)?;
        let file = self.file(ino)?;
        if flags.read
            && let Some(inode) = file.overlay(|| self.meta.read().ok()?.inode(ino).ok()?)
        {
            self.touch_atime(ino, &inode, false);
        }
        {
            let files = self.files.lock();
            // Re-check under the map lock: eviction may have raced with us.
            if !files.get(&ino).is_some_and(|f| Arc::ptr_eq(f, &file)) {
                drop(files);
                return self.open(ino, flags);
            }
            file.opens.fetch_add(1, Ordering::SeqCst);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, ino);
        Ok(fh)
    }

    /// Closes a handle. The last close of an inode flushes it, and deletes it if unlinked.
    pub fn release(&self, fh: u64) -> Result<()> {
        let ino = self
            .handles
            .lock()
            .remove(&fh)
            .ok_or(VolumeError::BadHandle)?;
        let Some(file) = self.files.lock().get(&ino).cloned() else {
            return Ok(());
        };
        let last = {
            let _files = self.files.lock();
            file.opens.fetch_sub(1, Ordering::SeqCst) == 1
        };
        if !last {
            return Ok(());
        }
        let unlinked = self.meta.read()?.inode(ino)?.is_none_or(|i| i.nlink == 0);
        let result = if unlinked {
            let mut st = file.lock();
            st.dirty.clear();
            st.attr_dirty = false;
            while st.in_flight > 0 {
                file.changed.wait(&mut st);
            }
            drop(st);
            if !self.is_open(ino) {
                let mut tx = self.meta.write()?;
                if tx.inode(ino)?.is_some_and(|i| i.nlink == 0) {
                    tx.remove_inode(ino)?;
                }
                tx.commit()?;
                self.mark_dirty();
            }
            Ok(())
        } else {
            self.close(ino)
        };
        if result.is_err() {
            // The error reached close(); do not keep unsealable data forever. Seals still in
            // flight may fail too (and leave their blocks dirty): wait for them first.
            let mut st = file.lock();
            while st.in_flight > 0 {
                file.changed.wait(&mut st);
            }
            st.dirty.retain(|_, d| d.queued);
            st.attr_dirty = false;
        }
        self.maybe_evict(&file);
        result
    }

    /// The current plaintext of block `index` of a file whose state is locked.
    fn current_block(&self, ino: InodeNo, st: &FileState, index: u64) -> Result<Vec<u8>> {
        if let Some(d) = st.dirty.get(&index) {
            return Ok(d.data.as_ref().clone());
        }
        match self.meta.read()?.slot_at(ino, index)? {
            Some((id, valid)) => {
                let mut data = self.load_block(ino, index, id)?.as_ref().clone();
                if let Some(v) = valid {
                    data.truncate(v as usize);
                }
                Ok(data)
            }
            None => Ok(Vec::new()),
        }
    }

    /// Writes `data` at `offset`; returns the bytes written.
    pub fn write(&self, ino: InodeNo, offset: u64, data: &[u8]) -> Result<usize> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(VolumeError::FileTooBig)?;
        if end > super::MAX_FILE_SIZE {
            return Err(VolumeError::FileTooBig);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let file = self.file(ino)?;
        let bs = self.block_size;
        let mut jobs = Vec::new();
        {
            let mut st = file.lock();
            if let Some(e) = st.error.take() {
                return Err(e);
            }
            let mut pos = offset;
            while pos < end {
                let index = pos / bs;
                let bstart = index * bs;
                let within = (pos - bstart) as usize;
                let take = ((bstart + bs).min(end) - pos) as usize;
                if !st.dirty.contains_key(&index) {
                    let base = if within == 0 && take as u64 == bs {
                        Vec::with_capacity(bs as usize)
                    } else {
                        self.current_block(ino, &st, index)?
                    };
                    let seq = st.bump();
                    st.dirty.insert(
                        index,
                        Dirty {
                            data: Arc::new(base),
                            seq,
                            queued: false,
                            since: Instant::now(),
                            unlogged: Vec::new(),
                        },
                    );
                }
                let seq = st.bump();
                let d = st.dirty.get_mut(&index).expect("inserted above");
                if d.queued {
                    d.queued = false;
                    d.seq = seq;
                    d.since = Instant::now();
                }
                let buf = Arc::make_mut(&mut d.data);
                if buf.len() < within + take {
                    buf.resize(within + take, 0);
                }
                buf[within..within + take]
                    .copy_from_slice(&data[(pos - offset) as usize..][..take]);
                d.note_written(within as u32, (within + take) as u32);
                if within + take == bs as usize {
                    d.queued = true;
                    jobs.push((index, d.seq, d.data.clone()));
                }
                pos += take as u64;
            }
            st.in_flight += jobs.len();
            st.size = st.size.max(end);
            let now = Timestamp::now();
            st.mtime = now;
            st.ctime = now;
            st.attr_dirty = true;
        }
        let jobs = jobs
            .into_iter()
            .map(|(index, seq, data)| SealJob {
                file: file.clone(),
                index,
                seq,
                data,
            })
            .collect();
        self.dispatch(jobs, false);
        // Bound memory: over the volume's write budget, this file's blocks go to the sealers
        // and the writer waits for them (see `dirty`).
        if self.write_budget.over() {
            let mut st = file.lock();
            let extra = queue_unqueued(&file, &mut st);
            drop(st);
            self.dispatch(extra, false);
            let mut st = file.lock();
            while self.write_budget.over() && st.in_flight > 0 {
                file.changed.wait(&mut st);
            }
        }
        Ok(data.len())
    }

    /// Hands every dirty block older than `age` to the sealers (the daemon's tick): bounds
    /// how long written data stays only in memory. Returns how many blocks were queued.
    pub fn write_back(&self, age: Duration) -> usize {
        let open: Vec<Arc<OpenFile>> = self.files.lock().values().cloned().collect();
        let mut queued = 0;
        for file in open {
            let jobs = {
                let mut st = file.lock();
                queue_where(&file, &mut st, |d| d.since.elapsed() >= age)
            };
            queued += jobs.len();
            self.dispatch(jobs, false);
        }
        queued
    }

    /// What close(2) does (FUSE FLUSH, and the last RELEASE): reports an earlier failure and
    /// hands the dirty blocks to the sealer. Blocks of at most `INLINE_MAX` bytes (a small
    /// file) are sealed in the background: they go into the metadata database, in memory,
    /// so their seal meets no full disk worth reporting to close, and waiting for it was the
    /// largest part of a small file's creation (FLUSH p50 50-75 us under FUSE, a request
    /// bindfs does not even get). Anything else is waited for, as [`flush`](Self::flush),
    /// so that close reports a full disk. Reads, fsync and stat see the blocks as before:
    /// they are dirty until committed (and a stat of a closed file waits for its seals).
    pub fn close(&self, ino: InodeNo) -> Result<()> {
        let Some(file) = self.files.lock().get(&ino).cloned() else {
            return Ok(());
        };
        let jobs = {
            let mut st = file.lock();
            if let Some(e) = st.error.take() {
                return Err(e);
            }
            // Queued blocks count too: a large one in flight is waited for.
            let small = st
                .dirty
                .values()
                .all(|d| d.data.len() <= super::commit::INLINE_MAX);
            if !small {
                drop(st);
                return self.flush(ino);
            }
            let jobs = queue_unqueued(&file, &mut st);
            if st.in_flight == 0 {
                // Nothing to seal: commit the times, if they changed.
                drop(st);
                return self.flush(ino);
            }
            jobs
        };
        // The last seal to finish commits the size and times (`finish_seal`).
        self.dispatch(jobs, false);
        Ok(())
    }

    /// Seals every dirty block of `ino`, waits for them and commits its size and times.
    pub fn flush(&self, ino: InodeNo) -> Result<()> {
        let Some(file) = self.files.lock().get(&ino).cloned() else {
            return Ok(());
        };
        loop {
            let mut st = file.lock();
            if let Some(e) = st.error.take() {
                return Err(e);
            }
            let jobs = queue_unqueued(&file, &mut st);
            if jobs.is_empty() {
                while st.in_flight > 0 {
                    file.changed.wait(&mut st);
                }
                if let Some(e) = st.error.take() {
                    return Err(e);
                }
                if !st.dirty.is_empty() {
                    continue;
                }
                if st.attr_dirty {
                    let mut tx = self.meta.write()?;
                    if let Some(mut inode) = tx.inode(ino)? {
                        st.stamp(&mut inode);
                        tx.put_inode(ino, &inode)?;
                    }
                    tx.commit()?;
                    self.mark_dirty();
                    st.attr_dirty = false;
                }
                return Ok(());
            }
            drop(st);
            // One block (a small file's close): sealing here beats a thread hand-off.
            let inline = jobs.len() == 1;
            self.dispatch(jobs, inline);
        }
    }

    /// Sets the size of a regular file, dropping or zero-extending its tail.
    pub fn truncate(&self, ino: InodeNo, new_size: u64) -> Result<()> {
        if new_size > super::MAX_FILE_SIZE {
            return Err(VolumeError::FileTooBig);
        }
        let file = self.file(ino)?;
        let result = self.truncate_locked(&file, new_size);
        self.maybe_evict(&file);
        result
    }

    /// Truncation never re-seals the block it cuts (the *edge*): the slot is marked as holding
    /// only the block's first bytes (`clip_slot`), and a dirty edge is cut in memory, so a
    /// truncate costs one transaction whatever the block size.
    fn truncate_locked(&self, file: &Arc<OpenFile>, new_size: u64) -> Result<()> {
        let ino = file.ino;
        let bs = self.block_size;
        let mut st = file.lock();
        let now = Timestamp::now();
        let keep_blocks = new_size.div_ceil(bs);
        let shrinking = new_size < st.size;
        // The block that keeps some of its bytes, and how many.
        let edge = (!new_size.is_multiple_of(bs)).then(|| (new_size / bs, (new_size % bs) as u32));
        if shrinking {
            st.dirty.retain(|i, _| *i < keep_blocks);
            if let Some((index, len)) = edge {
                let seq = st.bump();
                if let Some(d) = st.dirty.get_mut(&index) {
                    let buf = Arc::make_mut(&mut d.data);
                    buf.truncate(len as usize);
                    d.unlogged.retain_mut(|r| {
                        r.1 = r.1.min(len);
                        r.0 < r.1
                    });
                    // A seal of the longer version in flight must not commit.
                    if d.queued {
                        d.queued = false;
                        d.seq = seq;
                    }
                }
            }
        }
        let mut tx = self.meta.write()?;
        let mut inode = self.load_inode(&tx, ino)?;
        let delta = -(tx.set_blocks_from(ino, keep_blocks)? as i64);
        let unreserved = tx.unreserve(ino, keep_blocks, u64::MAX)?;
        if shrinking && let Some((index, len)) = edge {
            tx.clip_slot(ino, index, len)?;
        }
        inode.stored_blocks = inode.stored_blocks.saturating_add_signed(delta);
        inode.reserved_blocks = inode.reserved_blocks.saturating_sub(unreserved);
        inode.reserve_end = inode.reserve_end.min(new_size);
        inode.size = new_size;
        inode.mtime = now;
        inode.ctime = now;
        tx.put_inode(ino, &inode)?;
        tx.commit()?;
        self.mark_dirty();
        if shrinking {
            self.note_truncate(ino, new_size, keep_blocks, edge);
        }
        st.size = new_size;
        st.mtime = now;
        st.ctime = now;
        Ok(())
    }

    /// Drops set-user-id, and set-group-id where it means "set group on exec", when someone
    /// other than root changes a file's data outside write(2) (fallocate, hole punching): the
    /// kernel does this itself for writes through FUSE, ext4 for these too (`file_remove_privs`).
    fn remove_privs(&self, ino: InodeNo, caller: super::Caller) -> Result<()> {
        if caller.uid == 0 {
            return Ok(());
        }
        let mut tx = self.meta.write()?;
        let mut inode = self.load_inode(&tx, ino)?;
        let mut kill = 0o4000;
        if inode.perm & 0o010 != 0 {
            kill |= 0o2000;
        }
        if inode.perm & kill == 0 {
            return Ok(());
        }
        inode.perm &= !kill;
        inode.ctime = Timestamp::now();
        tx.put_inode(ino, &inode)?;
        tx.commit()?;
        self.mark_dirty();
        Ok(())
    }

    /// fallocate(2): mode 0 and KEEP_SIZE reserve space (see `prealloc`), PUNCH_HOLE (with
    /// KEEP_SIZE) zeroes the range and frees whole blocks, ZERO_RANGE zeroes it and reserves
    /// it. Other modes (collapse, insert, unshare) are EOPNOTSUPP.
    pub fn fallocate(
        &self,
        ino: InodeNo,
        offset: u64,
        len: u64,
        mode: i32,
        caller: super::Caller,
    ) -> Result<()> {
        let end = offset.checked_add(len).ok_or(VolumeError::FileTooBig)?;
        if end > super::MAX_FILE_SIZE {
            return Err(VolumeError::FileTooBig);
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && !keep_size) || (punch && zero) {
            return Err(VolumeError::NotSupported("fallocate mode"));
        }
        let file = self.file(ino)?;
        self.remove_privs(ino, caller)?;
        if punch || zero {
            let size = file.lock().size;
            let end = end.min(size);
            let bs = self.block_size;
            let mut pos = offset;
            while pos < end {
                let index = pos / bs;
                let bstart = index * bs;
                let chunk_end = (bstart + bs).min(end);
                if pos == bstart && chunk_end == bstart + bs {
                    self.punch_block(&file, index)?;
                } else {
                    self.write(ino, pos, &vec![0u8; (chunk_end - pos) as usize])?;
                }
                pos = chunk_end;
            }
        }
        if !punch {
            // Mode 0, KEEP_SIZE, and ZERO_RANGE after zeroing: the range is allocated.
            self.preallocate(ino, offset, end, keep_size)?;
        }
        self.maybe_evict(&file);
        Ok(())
    }

    fn punch_block(&self, file: &Arc<OpenFile>, index: u64) -> Result<()> {
        let mut st = file.lock();
        st.dirty.remove(&index);
        let mut tx = self.meta.write()?;
        let mut inode = self.load_inode(&tx, file.ino)?;
        let delta = tx.set_block(file.ino, index, None)?;
        inode.stored_blocks = inode.stored_blocks.saturating_add_signed(delta);
        // A punched block is deallocated, reserved or not (as on ext4).
        let unreserved = tx.unreserve(file.ino, index, index + 1)?;
        inode.reserved_blocks = inode.reserved_blocks.saturating_sub(unreserved);

        let now = Timestamp::now();
        inode.mtime = now;
        inode.ctime = now;
        tx.put_inode(file.ino, &inode)?;
        tx.commit()?;
        st.mtime = now;
        st.ctime = now;
        self.mark_dirty();
        // Also when the slot was a hole already: bytes journalled for it earlier are gone.
        self.note_slot(file.ino, index, None);
        Ok(())
    }
}

/// Marks every dirty block of a locked file that no sealer has yet as queued, counts them in
/// flight, and returns their jobs.
fn queue_unqueued(file: &Arc<OpenFile>, st: &mut FileState) -> Vec<SealJob> {
    queue_where(file, st, |_| true)
}

/// [`queue_unqueued`] for the blocks `pick` chooses.
pub(super) fn queue_where(
    file: &Arc<OpenFile>,
    st: &mut FileState,
    pick: impl Fn(&Dirty) -> bool,
) -> Vec<SealJob> {
    let jobs: Vec<SealJob> = st
        .dirty
        .iter_mut()
        .filter(|(_, d)| !d.queued && pick(d))
        .map(|(i, d)| {
            d.queued = true;
            SealJob {
                file: file.clone(),
                index: *i,
                seq: d.seq,
                data: d.data.clone(),
            }
        })
        .collect();
    st.in_flight += jobs.len();
    jobs
}
