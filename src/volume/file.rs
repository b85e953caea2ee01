//! Open files: per-inode write buffers, reads, writes, flush, fsync, truncation, fallocate.
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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::dirty::{Dirty, DirtyBlocks};
use super::sealer::SealJob;
use super::{Result, Volume, VolumeError};
use crate::ids::{BlockId, InodeNo};
use crate::meta::Reader;
use crate::meta::codec::{BlockRecord, Inode, Kind, Timestamp};
use crate::pipeline::{block_id::block_id, seal};

/// How a file is being opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenFlags {
    pub write: bool,
}

/// Blocks of at most this many plaintext bytes are stored inside the metadata database
/// rather than as files: a file per small block costs an ext4 inode allocation, a rename and
/// a later unlink, which dominated small-file creation.
pub(super) const INLINE_MAX: usize = 32 * 1024;

/// A sealed block ready to be committed.
pub(super) struct SealedBlock {
    id: BlockId,
    record: BlockRecord,
    /// Sealed bytes to store in the database (small blocks), or `None` if already stored.
    inline: Option<Vec<u8>>,
    _pin: PinGuard,
}

/// Reads of at most this many bytes within one block decrypt only the chunks they cover.
const PARTIAL_READ_MAX: usize = 64 * 1024;

type PinMap = Arc<Mutex<std::collections::HashMap<BlockId, usize>>>;

/// Block ids being sealed and not yet committed (see `Volume::pins`).
#[derive(Default)]
pub(super) struct Pins(PinMap);

impl Pins {
    pub(super) fn lock(&self) -> MutexGuard<'_, std::collections::HashMap<BlockId, usize>> {
        self.0.lock()
    }

    fn pin(&self, id: BlockId) -> PinGuard {
        *self.0.lock().entry(id).or_default() += 1;
        PinGuard {
            pins: self.0.clone(),
            id,
        }
    }
}

/// Unpins its block id when dropped.
pub(super) struct PinGuard {
    pins: PinMap,
    id: BlockId,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut pins = self.pins.lock();
        if let Some(n) = pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

/// Background block decryptions allowed at once (see `Volume::prefetch`).
const MAX_PREFETCH: usize = 2;
/// How many blocks past a sequential read are decrypted ahead of it.
const PREFETCH_AHEAD: u64 = 3;

pub(super) struct FileState {
    size: u64,
    mtime: Timestamp,
    ctime: Timestamp,
    /// Size or times are ahead of the database.
    attr_dirty: bool,
    dirty: DirtyBlocks,
    in_flight: usize,
    next_seq: u64,
    /// A sealing failure not yet reported; the next flush or fsync returns it.
    error: Option<VolumeError>,
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

    fn bump(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// The shared state of one open inode.
pub(super) struct OpenFile {
    pub(super) ino: InodeNo,
    state: Mutex<FileState>,
    changed: Condvar,
    /// Open handles; changed only under the volume's `files` map lock.
    opens: AtomicU32,
    /// Where the last read ended: a read starting there is sequential (prefetch pays).
    read_end: AtomicU64,
}

impl OpenFile {
    pub(super) fn lock(&self) -> MutexGuard<'_, FileState> {
        self.state.lock()
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
    pub(super) fn overlay(&self, inode: &mut Inode) {
        let st = self.state.lock();
        if st.attr_dirty {
            inode.size = st.size;
            inode.mtime = st.mtime;
            inode.ctime = st.ctime;
        }
    }
}

impl Volume {
    /// The open state of `ino`, created from the database if needed (does not count as open).
    fn file(&self, ino: InodeNo) -> Result<Arc<OpenFile>> {
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
    fn maybe_evict(&self, file: &Arc<OpenFile>) {
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

    /// Opens a regular file; returns a handle number.
    pub fn open(&self, ino: InodeNo, _flags: OpenFlags) -> Result<u64> {
        let file = self.file(ino)?;
        {
            let files = self.files.lock();
            // Re-check under the map lock: eviction may have raced with us.
            if !files.get(&ino).is_some_and(|f| Arc::ptr_eq(f, &file)) {
                drop(files);
                return self.open(ino, _flags);
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
            self.flush(ino)
        };
        if result.is_err() {
            // The error reached close(); do not keep unsealable data forever.
            let mut st = file.lock();
            st.dirty.retain(|_, d| d.queued);
            st.attr_dirty = false;
        }
        self.maybe_evict(&file);
        result
    }

    /// Reads up to `len` bytes at `offset`.
    pub fn read(&self, ino: InodeNo, offset: u64, len: u32) -> Result<Vec<u8>> {
        let file = self.file(ino)?;
        let bs = self.block_size;
        let (end, sources) = {
            let st = file.lock();
            let end = st.size.min(offset.saturating_add(len as u64));
            if offset >= end {
                drop(st);
                self.maybe_evict(&file);
                return Ok(Vec::new());
            }
            let first = offset / bs;
            let last = (end - 1) / bs;
            let mapped: BTreeMap<u64, BlockId> = self
                .meta
                .read()?
                .blocks_in(ino, first, last + 1 + PREFETCH_AHEAD)?
                .into_iter()
                .collect();
            // A sequential read (it starts where the last one ended) reaching past the middle
            // of its last block: warm the next few, so decryption runs ahead of the reader on
            // the other core. Random reads must not: each would decrypt megabytes.
            let sequential = file.read_end.swap(end, Ordering::Relaxed) == offset;
            if sequential && end > last * bs + bs / 2 {
                for next in last + 1..=last + PREFETCH_AHEAD {
                    if !st.dirty.contains_key(&next)
                        && let Some(id) = mapped.get(&next)
                    {
                        self.prefetch(ino, next, *id);
                    }
                }
            }
            let sources: Vec<(u64, Source)> = (first..=last)
                .map(|i| {
                    let s = match (st.dirty.get(&i), mapped.get(&i)) {
                        (Some(d), _) => Source::Dirty(d.data.clone()),
                        (None, Some(id)) => Source::Stored(*id),
                        (None, None) => Source::Hole,
                    };
                    (i, s)
                })
                .collect();
            (end, sources)
        };
        let mut out = vec![0u8; (end - offset) as usize];
        for (index, source) in sources {
            let data = match source {
                Source::Dirty(d) => d,
                Source::Stored(id) => {
                    let bstart = index * bs;
                    let (from, to) = (offset.max(bstart), end.min(bstart + bs));
                    if to - from <= PARTIAL_READ_MAX as u64
                        && !self.cache.contains(&id)
                        && let Some(part) =
                            self.read_partial(ino, index, id, from - bstart, (to - from) as usize)?
                    {
                        let dst = (from - offset) as usize;
                        out[dst..dst + part.len()].copy_from_slice(&part);
                        continue;
                    }
                    self.load_block(ino, index, id)?
                }
                Source::Hole => continue,
            };
            let bstart = index * bs;
            let from = offset.max(bstart);
            let to = end.min(bstart + data.len() as u64);
            if from < to {
                let dst = (from - offset) as usize..(to - offset) as usize;
                out[dst].copy_from_slice(&data[(from - bstart) as usize..(to - bstart) as usize]);
            }
        }
        Ok(out)
    }

    /// Decrypts only `len` bytes at `offset` of a stored block, for small random reads (a
    /// whole-block decrypt per 4 KiB read capped random reads at ~700 IOPS). `None` when the
    /// block cannot be read in part (inline, or recorded before header hashes existed).
    fn read_partial(
        &self,
        ino: InodeNo,
        index: u64,
        id: BlockId,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>> {
        let Some(header) = self
            .meta
            .read()?
            .block_record(&id)?
            .and_then(|r| r.header_hash)
        else {
            return Ok(None);
        };
        let corrupt = |why: String| VolumeError::Corrupt {
            ino,
            index,
            block: id,
            why,
        };
        let file = self
            .store
            .open_file(&id)
            .map_err(|e| corrupt(e.to_string()))?;
        let reader = std::io::BufReader::with_capacity(64 * 1024, file);
        seal::open_range(&self.keys.identity, &header, reader, offset, len)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Loads, decrypts and verifies a stored block (through the cache).
    fn load_block(&self, ino: InodeNo, index: u64, id: BlockId) -> Result<Arc<Vec<u8>>> {
        self.cache
            .get_or_load(id, || {
                let inline = self.meta.read().and_then(|tx| tx.inline_block(&id));
                let sealed = match inline.map_err(|e| e.to_string())? {
                    Some(bytes) => bytes,
                    None => self.store.get(&id).map_err(|e| e.to_string())?,
                };
                seal::open(&self.keys.identity, &self.keys.dedup, id, &sealed)
                    .map_err(|e| e.to_string())
            })
            .map_err(|why| VolumeError::Corrupt {
                ino,
                index,
                block: id,
                why,
            })
    }

    /// Decrypts block `index` into the cache on a background thread, so a sequential reader
    /// finds it ready. At most [`MAX_PREFETCH`] run at once; errors are left for the real read.
    fn prefetch(&self, ino: InodeNo, index: u64, id: BlockId) {
        if self.cache.contains(&id) {
            return;
        }
        if self.prefetching.fetch_add(1, Ordering::SeqCst) >= MAX_PREFETCH {
            self.prefetching.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let Some(volume) = self.me.upgrade() else {
            self.prefetching.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("bitcloud-prefetch".into())
            .spawn(move || {
                let _ = volume.load_block(ino, index, id);
                volume.prefetching.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.prefetching.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The current plaintext of block `index` of a file whose state is locked.
    fn current_block(&self, ino: InodeNo, st: &FileState, index: u64) -> Result<Vec<u8>> {
        if let Some(d) = st.dirty.get(&index) {
            return Ok(d.data.as_ref().clone());
        }
        match self.meta.read()?.block_at(ino, index)? {
            Some(id) => Ok(self.load_block(ino, index, id)?.as_ref().clone()),
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

    /// Hands jobs to the sealer threads; seals here any the sealer refuses (stopping), or all
    /// of them when `inline`.
    fn dispatch(&self, jobs: Vec<SealJob>, inline: bool) {
        for job in jobs {
            let refused = if inline {
                Err(job)
            } else {
                self.sealer.submit(job)
            };
            if let Err(job) = refused {
                let r = self.seal_block(&job.data);
                self.finish_seal(job, r);
            }
        }
    }

    /// Hashes, encrypts and stores one plaintext block. `None` for an all-zero block: it
    /// becomes a hole and is not stored. A block of at most [`INLINE_MAX`] bytes is not
    /// written to a file: its sealed bytes travel with the result into the metadata commit.
    pub(super) fn seal_block(&self, plain: &[u8]) -> Result<Option<SealedBlock>> {
        if is_all_zero(plain) {
            return Ok(None);
        }
        let id = block_id(&self.keys.dedup, plain);
        // Pinned until committed or dropped: gc leaves this id's file alone meanwhile.
        let pin = self.pins.pin(id);
        let known = {
            let tx = self.meta.read()?;
            match tx.block_record(&id)? {
                Some(r) if tx.inline_block(&id)?.is_some() || self.store.contains(&id) => Some(r),
                _ => None,
            }
        };
        let (record, inline) = match known {
            Some(r) => (BlockRecord { refcount: 0, ..r }, None),
            None => {
                let sealed = seal::seal(&self.keys.recipient, plain)
                    .map_err(|e| VolumeError::Seal(e.to_string()))?;
                let mut record = BlockRecord {
                    refcount: 0,
                    plain_len: plain.len() as u32,
                    sealed_len: sealed.len() as u32,
                    header_hash: None,
                };
                if plain.len() <= INLINE_MAX {
                    (record, Some(sealed))
                } else {
                    // The header of the file on disk, which may be another sealer's.
                    record.header_hash = self.store.put(&id, &sealed)?;
                    (record, None)
                }
            }
        };
        Ok(Some(SealedBlock {
            id,
            record,
            inline,
            _pin: pin,
        }))
    }

    /// Points slot (`ino`, `index`) at `block` in `tx`, storing inline bytes with it.
    pub(super) fn apply_block(
        tx: &mut crate::meta::WriteTx,
        ino: InodeNo,
        index: u64,
        block: Option<&SealedBlock>,
    ) -> Result<i64> {
        let delta = tx.set_block(ino, index, block.map(|b| (b.id, b.record)))?;
        if let Some(SealedBlock {
            id,
            inline: Some(bytes),
            ..
        }) = block
        {
            tx.put_inline(id, bytes)?;
        }
        Ok(delta)
    }

    /// Commits a finished seal if its block is still current (see module doc).
    pub(super) fn finish_seal(&self, job: SealJob, result: Result<Option<SealedBlock>>) {
        let file = job.file;
        let mut st = file.lock();
        st.in_flight -= 1;
        let current = st
            .dirty
            .get(&job.index)
            .is_some_and(|d| d.seq == job.seq && d.queued);
        if current {
            let outcome =
                result.and_then(|block| self.commit_block(file.ino, job.index, block, &st));
            match outcome {
                Ok(()) => {
                    st.dirty.remove(&job.index);
                    if st.dirty.is_empty() && st.in_flight == 0 {
                        st.attr_dirty = false;
                    }
                }
                Err(e) => {
                    tracing::error!(target: "bitcloud::volume", ino = %file.ino, index = job.index, error = %e, "sealing a block failed");
                    if let Some(d) = st.dirty.get_mut(&job.index) {
                        d.queued = false;
                    }
                    st.error.get_or_insert(e);
                }
            }
        }
        drop(st);
        file.changed.notify_all();
    }

    fn commit_block(
        &self,
        ino: InodeNo,
        index: u64,
        block: Option<SealedBlock>,
        st: &FileState,
    ) -> Result<()> {
        let mut tx = self.meta.write()?;
        let Some(mut inode) = tx.inode(ino)? else {
            return Ok(()); // deleted meanwhile
        };
        let delta = Self::apply_block(&mut tx, ino, index, block.as_ref())?;
        inode.stored_blocks = inode.stored_blocks.saturating_add_signed(delta);
        inode.size = st.size;
        inode.mtime = st.mtime;
        inode.ctime = st.ctime;
        tx.put_inode(ino, &inode)?;
        tx.commit()?;
        self.mark_dirty();
        Ok(())
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

    /// Seals every dirty block of `ino` and commits its size and times.
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
                        inode.size = st.size;
                        inode.mtime = st.mtime;
                        inode.ctime = st.ctime;
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

    /// Flushes `ino` and makes the whole volume durable.
    pub fn fsync(&self, ino: InodeNo) -> Result<()> {
        self.flush(ino)?;
        // Durability only: freeing overwritten blocks is left to the periodic checkpoint.
        self.make_durable()?;
        Ok(())
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

    fn truncate_locked(&self, file: &Arc<OpenFile>, new_size: u64) -> Result<()> {
        let ino = file.ino;
        let bs = self.block_size;
        let mut st = file.lock();
        let now = Timestamp::now();
        let keep_blocks = new_size.div_ceil(bs);
        let edge = (!new_size.is_multiple_of(bs)).then_some(new_size / bs);
        let mut edge_block = None;
        if new_size < st.size {
            if let Some(index) = edge {
                let mut data = self.current_block(ino, &st, index)?;
                data.truncate((new_size - index * bs) as usize);
                edge_block = Some((index, self.seal_block(&data)?));
            }
            st.dirty.retain(|i, _| *i < keep_blocks && Some(*i) != edge);
        }
        let mut tx = self.meta.write()?;
        let mut inode = self.load_inode(&tx, ino)?;
        let mut delta = -(tx.set_blocks_from(ino, keep_blocks)? as i64);
        if let Some((index, block)) = edge_block {
            delta += Self::apply_block(&mut tx, ino, index, block.as_ref())?;
        }
        inode.stored_blocks = inode.stored_blocks.saturating_add_signed(delta);
        inode.size = new_size;
        inode.mtime = now;
        inode.ctime = now;
        tx.put_inode(ino, &inode)?;
        tx.commit()?;
        self.mark_dirty();
        st.size = new_size;
        st.mtime = now;
        st.ctime = now;
        Ok(())
    }

    /// fallocate(2): mode 0 (extend), KEEP_SIZE (no-op: nothing to reserve), PUNCH_HOLE.
    pub fn fallocate(&self, ino: InodeNo, offset: u64, len: u64, mode: i32) -> Result<()> {
        let end = offset.checked_add(len).ok_or(VolumeError::FileTooBig)?;
        if end > super::MAX_FILE_SIZE {
            return Err(VolumeError::FileTooBig);
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) != 0
            || (punch && !keep_size)
        {
            return Err(VolumeError::NotSupported("fallocate mode"));
        }
        let file = self.file(ino)?;
        if punch {
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
        } else if !keep_size && end > file.lock().size {
            self.truncate(ino, end)?;
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
        let now = Timestamp::now();
        inode.mtime = now;
        inode.ctime = now;
        tx.put_inode(file.ino, &inode)?;
        tx.commit()?;
        st.mtime = now;
        st.ctime = now;
        self.mark_dirty();
        Ok(())
    }
}

/// Marks every dirty block of a locked file that no sealer has yet as queued, counts them in
/// flight, and returns their jobs.
fn queue_unqueued(file: &Arc<OpenFile>, st: &mut FileState) -> Vec<SealJob> {
    queue_where(file, st, |_| true)
}

/// [`queue_unqueued`] for the blocks `pick` chooses.
fn queue_where(
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

/// Whether every byte is zero (compares 64 bytes at a time: a byte loop was visible in
/// profiles of sequential writes).
fn is_all_zero(data: &[u8]) -> bool {
    let chunks = data.chunks_exact(64);
    let tail = chunks.remainder();
    chunks.into_iter().all(|c| c == [0u8; 64]) && tail.iter().all(|b| *b == 0)
}

enum Source {
    Dirty(Arc<Vec<u8>>),
    Stored(BlockId),
    Hole,
}
