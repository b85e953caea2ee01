//! The local block store: sealed (age-encrypted) blocks as content-addressed files under
//! `blocks/xx/<block id hex>`.
//!
//! Writes are atomic: bytes go to a unique temp file, which is then hard-linked into place
//! (creating the name only if absent, so an existing block is never replaced), so a reader or
//! a crash sees either no block or the whole block. Files are not fsynced one by one on the
//! write path; the names written since the last [`BlockStore::sync_pending`] are remembered and
//! synced (files, then their directories) right before the metadata store's durable commit, so
//! a durable reference never points at a block that was not on disk.
//!
//! The store does not verify contents: that is the pipeline's `open`, which every read passes.
//!
//! With a pool, the local files are also a cache: the store keeps an index of its files
//! (size and last use, rebuilt from the directory at open) so that the volume can evict the
//! least recently used ones the pool holds in full, and put back what it fetches.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::ids::BlockId;

/// Failures of the block store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("block {0:?} is missing from the local store")]
    Missing(BlockId),
    #[error("no space left on the device holding the block store")]
    NoSpace,
    #[error("block store i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    match source.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace,
        _ => StoreError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Files `sync_pending` keeps open at once (well under the usual 1024 descriptor limit).
const SYNC_BATCH: usize = 256;

/// Sealed blocks on the local disk.
#[derive(Debug)]
pub struct BlockStore {
    root: PathBuf,
    /// Block files written since the last `sync_pending`, with their sizes.
    pending_sync: Mutex<Vec<(PathBuf, u64)>>,
    /// Bytes of block files written and not yet fsynced (what a checkpoint still has to do).
    unsynced_bytes: AtomicU64,
    tmp_counter: AtomicU64,
    index: Mutex<LocalIndex>,
}

/// The files of the store: size and a use counter (higher: used more recently).
#[derive(Debug, Default)]
struct LocalIndex {
    files: std::collections::HashMap<BlockId, (u64, u64)>,
    bytes: u64,
    tick: u64,
}

impl LocalIndex {
    fn insert(&mut self, id: BlockId, len: u64) {
        self.tick += 1;
        if let Some(old) = self.files.insert(id, (len, self.tick)) {
            self.bytes -= old.0;
        }
        self.bytes += len;
    }

    fn touch(&mut self, id: &BlockId) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.files.get_mut(id) {
            e.1 = tick;
        }
    }

    fn remove(&mut self, id: &BlockId) {
        if let Some((len, _)) = self.files.remove(id) {
            self.bytes -= len;
        }
    }
}

impl BlockStore {
    /// Opens (creating if needed) a store rooted at `root`, removing stale temp files.
    pub fn open(root: &Path) -> Result<BlockStore, StoreError> {
        fs::create_dir_all(root.join("tmp")).map_err(|e| io_err(root, e))?;
        if let Ok(entries) = fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let store = BlockStore {
            root: root.to_path_buf(),
            pending_sync: Mutex::new(Vec::new()),
            unsynced_bytes: AtomicU64::new(0),
            tmp_counter: AtomicU64::new(0),
            index: Mutex::new(LocalIndex::default()),
        };
        // Oldest files first, so the first evictions take what was used longest ago.
        let mut found: Vec<(std::time::SystemTime, BlockId, u64)> = store
            .list()?
            .into_iter()
            .filter_map(|id| {
                let m = fs::metadata(store.path_of(&id)).ok()?;
                Some((m.modified().ok()?, id, m.len()))
            })
            .collect();
        found.sort();
        {
            let mut ix = store.index.lock();
            for (_, id, len) in found {
                ix.insert(id, len);
            }
        }
        Ok(store)
    }

    /// Where block `id` lives.
    pub fn path_of(&self, id: &BlockId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Whether block `id` has a file.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.index.lock().files.contains_key(id)
    }

    /// Stores a sealed block atomically, never replacing an existing file (two sealers of
    /// the same id race harmlessly: the first file stays). Returns the header hash (see
    /// `pipeline::seal::header_hash`) of the file that is on disk afterwards.
    pub fn put(&self, id: &BlockId, sealed: &[u8]) -> Result<Option<[u8; 32]>, StoreError> {
        let path = self.path_of(id);
        if path.exists() {
            return self.header_hash_of(&path);
        }
        let dir = path.parent().expect("block paths have a fan-out directory");
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{}.{n}", id.short(), std::process::id()));
        let _guard = DeleteOnDrop(Some(tmp.clone()));
        write_new_file(&tmp, sealed).map_err(|e| io_err(&tmp, e))?;
        // hard_link creates the name only if it does not exist: atomic "put if absent".
        match fs::hard_link(&tmp, &path) {
            Ok(()) => {
                self.unsynced_bytes
                    .fetch_add(sealed.len() as u64, Ordering::Relaxed);
                self.pending_sync.lock().push((path, sealed.len() as u64));
                self.index.lock().insert(*id, sealed.len() as u64);
                Ok(crate::pipeline::seal::header_hash(sealed))
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => self.header_hash_of(&path),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn header_hash_of(&self, path: &Path) -> Result<Option<[u8; 32]>, StoreError> {
        use std::io::Read;
        let mut head = Vec::with_capacity(4096);
        let f = fs::File::open(path).map_err(|e| io_err(path, e))?;
        f.take(4096)
            .read_to_end(&mut head)
            .map_err(|e| io_err(path, e))?;
        Ok(crate::pipeline::seal::header_hash(&head))
    }

    /// Keeps a copy of a block fetched from the pool. Not synced: the pool holds it, and a
    /// copy damaged by a crash fails verification and is fetched again.
    pub fn put_cached(&self, id: &BlockId, sealed: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(id);
        let dir = path.parent().expect("block paths have a fan-out directory");
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{}.{n}", id.short(), std::process::id()));
        let _guard = DeleteOnDrop(Some(tmp.clone()));
        write_new_file(&tmp, sealed).map_err(|e| io_err(&tmp, e))?;
        // Replaces a damaged copy (rename is atomic: readers see the old or the new file).
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        self.index.lock().insert(*id, sealed.len() as u64);
        Ok(())
    }

    /// Local block files, least recently used first, with their sizes.
    pub fn by_last_use(&self) -> Vec<(BlockId, u64)> {
        let ix = self.index.lock();
        let mut v: Vec<(u64, BlockId, u64)> = ix
            .files
            .iter()
            .map(|(id, (len, t))| (*t, *id, *len))
            .collect();
        drop(ix);
        v.sort_unstable();
        v.into_iter().map(|(_, id, len)| (id, len)).collect()
    }

    /// Opens a sealed block for reading a range of it.
    pub fn open_file(&self, id: &BlockId) -> Result<fs::File, StoreError> {
        self.index.lock().touch(id);
        let path = self.path_of(id);
        fs::File::open(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StoreError::Missing(*id),
            _ => io_err(&path, e),
        })
    }

    /// Reads a sealed block (unverified: pass it through `pipeline::seal::open`).
    pub fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        self.index.lock().touch(id);
        let path = self.path_of(id);
        fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StoreError::Missing(*id),
            _ => io_err(&path, e),
        })
    }

    /// Deletes a block file; a missing file is not an error.
    pub fn delete(&self, id: &BlockId) -> Result<(), StoreError> {
        let path = self.path_of(id);
        self.index.lock().remove(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Makes every block written since the last call durable (file data, then directories).
    ///
    /// Writeback of every pending file is started first (`sync_file_range`), then each is
    /// `fdatasync`ed: the disk works on all of them at once, and after the first sync the
    /// journal commit that covers the new files is already done, so the rest are cheap. One
    /// `syncfs` would be simpler but also flushes every other dirty file on the filesystem
    /// (measured: a 1 GiB write with fsync fell to 226 MB/s next to other writers).
    ///
    /// If any sync fails, every file of this call is queued again (and counted as unsynced):
    /// the caller must not treat the metadata as durable, and the next call retries them.
    pub fn sync_pending(&self) -> Result<(), StoreError> {
        let paths = std::mem::take(&mut *self.pending_sync.lock());
        let mut synced = 0u64;
        let result = self.sync_files(&paths, &mut synced);
        if result.is_err() {
            self.unsynced_bytes.fetch_add(synced, Ordering::Relaxed);
            let mut pending = self.pending_sync.lock();
            let newer = std::mem::replace(&mut *pending, paths);
            pending.extend(newer);
        }
        result
    }

    /// `sync_pending`'s work; `synced` counts the bytes it took off `unsynced_bytes`.
    fn sync_files(&self, paths: &[(PathBuf, u64)], synced: &mut u64) -> Result<(), StoreError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for batch in paths.chunks(SYNC_BATCH) {
            let mut files = Vec::with_capacity(batch.len());
            for (p, len) in batch {
                match fs::File::open(p) {
                    Ok(f) => {
                        // SAFETY: a valid descriptor; the call only starts writeback.
                        unsafe {
                            libc::sync_file_range(
                                std::os::fd::AsRawFd::as_raw_fd(&f),
                                0,
                                0,
                                libc::SYNC_FILE_RANGE_WRITE,
                            )
                        };
                        files.push((p, *len, f));
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        // Collected since it was written: nothing to sync.
                        self.unsynced_bytes.fetch_sub(*len, Ordering::Relaxed);
                        *synced += len;
                        continue;
                    }
                    Err(e) => return Err(io_err(p, e)),
                }
                if let Some(d) = p.parent()
                    && !dirs.iter().any(|x| x == d)
                {
                    dirs.push(d.to_path_buf());
                }
            }
            for (p, len, f) in files {
                f.sync_data().map_err(|e| io_err(p, e))?;
                self.unsynced_bytes.fetch_sub(len, Ordering::Relaxed);
                *synced += len;
            }
        }
        dirs.push(self.root.clone());
        for d in dirs {
            if let Ok(f) = fs::File::open(&d) {
                f.sync_all().map_err(|e| io_err(&d, e))?;
            }
        }
        Ok(())
    }

    /// Bytes of block files written but not yet fsynced.
    pub fn unsynced_bytes(&self) -> u64 {
        self.unsynced_bytes.load(Ordering::Relaxed)
    }

    /// Every block id that has a file (for the orphan sweep and `status`).
    pub fn list(&self) -> Result<Vec<BlockId>, StoreError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(|e| io_err(&self.root, e))?;
        for fan in entries.flatten() {
            let name = fan.file_name();
            if name.len() != 2 {
                continue;
            }
            let Ok(files) = fs::read_dir(fan.path()) else {
                continue;
            };
            for f in files.flatten() {
                if let Some(id) = f.file_name().to_str().and_then(BlockId::from_hex) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Bytes of block files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.index.lock().bytes
    }

    /// Number of block files on disk.
    pub fn file_count(&self) -> u64 {
        self.index.lock().files.len() as u64
    }
}

/// Alignment O_DIRECT needs for buffer, offset and length on the filesystems we run on.
const DIRECT_ALIGN: usize = 4096;

/// A reusable buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
}

impl AlignedBuf {
    fn with_capacity(cap: usize) -> AlignedBuf {
        let cap = cap.div_ceil(DIRECT_ALIGN).max(1) * DIRECT_ALIGN;
        let layout = std::alloc::Layout::from_size_align(cap, DIRECT_ALIGN).expect("valid layout");
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        AlignedBuf {
            ptr: std::ptr::NonNull::new(ptr)
                .unwrap_or_else(|| std::alloc::handle_alloc_error(layout)),
            cap,
        }
    }

    fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        assert!(
            len <= self.cap,
            "aligned buffer of {} bytes asked for {len}",
            self.cap
        );
        // SAFETY: ptr is valid for cap bytes, initialised (zeroed) at allocation.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout =
            std::alloc::Layout::from_size_align(self.cap, DIRECT_ALIGN).expect("valid layout");
        // SAFETY: allocated in with_capacity with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

thread_local! {
    static DIRECT_BUF: std::cell::RefCell<Option<AlignedBuf>> = const { std::cell::RefCell::new(None) };
}

/// Writes a new file holding `bytes`. With O_DIRECT where the filesystem allows it: the bytes
/// go from a reused aligned buffer to the disk without filling fresh page-cache pages (perf
/// of sequential writes showed the kernel's copy into new page-cache folios costing more
/// than the encryption), and the later fdatasync has little left to do.
fn write_new_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let mut f = match direct {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut f = fs::File::create(path)?;
            return f.write_all(bytes);
        }
        Err(e) => return Err(e),
    };
    let padded = bytes.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let written = DIRECT_BUF.with(|cell| -> std::io::Result<()> {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|b| b.cap < padded) {
            *slot = Some(AlignedBuf::with_capacity(padded));
        }
        let buf = slot.as_mut().expect("set above").as_mut_slice(padded);
        buf[..bytes.len()].copy_from_slice(bytes);
        buf[bytes.len()..].fill(0);
        f.write_all(buf)
    });
    match written {
        Ok(()) => f.set_len(bytes.len() as u64),
        // Opened, but the filesystem wants another alignment (or none): write it plainly.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            drop(f);
            let mut f = fs::File::create(path)?;
            f.write_all(bytes)
        }
        Err(e) => Err(e),
    }
}

/// Removes a temp file when dropped: after it was linked into place, or when the write
/// failed half-way.
struct DeleteOnDrop(Option<PathBuf>);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let id = BlockId([3; 32]);
        assert!(matches!(store.get(&id), Err(StoreError::Missing(_))));
        store.put(&id, b"sealed").unwrap();
        store.put(&id, b"ignored: same id").unwrap();
        assert_eq!(store.get(&id).unwrap(), b"sealed");
        assert_eq!(store.list().unwrap(), vec![id]);
        store.sync_pending().unwrap();
        store.delete(&id).unwrap();
        store.delete(&id).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn odd_sizes_come_back_exactly_direct_or_buffered() {
        // /var/tmp is usually a disk filesystem (O_DIRECT); the temp dir may be tmpfs, which
        // refuses O_DIRECT and takes the buffered path.
        for parent in [std::env::temp_dir(), "/var/tmp".into()] {
            let Ok(dir) = tempfile::tempdir_in(&parent) else {
                continue;
            };
            let store = BlockStore::open(dir.path()).unwrap();
            for (i, len) in [1usize, 4095, 4096, 4097, 65_536 + 17, (1 << 20) + 300]
                .into_iter()
                .enumerate()
            {
                let id = BlockId([i as u8 + 1; 32]);
                let bytes: Vec<u8> = (0..len).map(|j| (j % 251) as u8).collect();
                store.put(&id, &bytes).unwrap();
                assert_eq!(store.get(&id).unwrap(), bytes, "{len} bytes in {parent:?}");
            }
            assert_eq!(
                store.unsynced_bytes(),
                4095 + 4096 + 4097 + 65_553 + (1 << 20) + 301
            );
            store.sync_pending().unwrap();
            assert_eq!(store.unsynced_bytes(), 0);
        }
    }
}
