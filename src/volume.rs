//! The volume: POSIX semantics over the metadata store and the block pipeline.
//!
//! Owns inodes, directory entries, hard links, symlinks, xattrs, open files, write buffers and
//! block maps. Knows nothing of FUSE (the adapter translates) or of the network (blocks go
//! through [`BlockStore`]; the nodepool will sit below that). Every method is callable from
//! several threads at once.
//!
//! Locking order, to rule out deadlock: a file's state lock, then a redb write transaction,
//! then the short-lived `files`/`handles` map locks. Nothing takes a file lock while holding
//! a write transaction.
//!
//! Submodules: `namespace` (names and links), `file` (open files, writes, flush, truncation),
//! `read` (reads, partial decryption, prefetch), `commit` (sealing and committing blocks, pins),
//! `dirty` (the write buffer and its budget), `sealer` (background sealing threads), `xattr`,
//! `cache` (decrypted block cache), `fsck` (the end-to-end check and its repairs).

mod atime;
pub mod backup;
mod cache;
mod commit;
mod dirty;
pub mod error;
mod fastsync;
mod file;
pub mod fsck;
mod headers;
mod journal;
mod namespace;
mod prealloc;
mod read;
pub mod remote;
mod sealer;
mod waits;
mod xattr;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

pub use atime::{AtimePolicy, AtimeRules};
pub use dirty::DEFAULT_WRITE_BUFFER;
pub use error::{Result, VolumeError};
pub use file::OpenFlags;
pub use namespace::{DirEntry, NewNode, RenameMode};
pub use waits::Wait;
pub use xattr::XattrMode;

use crate::ids::InodeNo;
use crate::keys::VolumeKeys;
use crate::meta::codec::{Inode, Kind, Timestamp};
use crate::meta::{MetaStore, Reader};
use crate::names::NameCipher;
use crate::store::BlockStore;

/// Lowers the calling thread's CPU priority (nice 10), for background work of the volume
/// that runs on a thread of its own (the metadata backup's dump).
pub fn lower_thread_priority() {
    sealer::lower_priority(10);
}

/// Largest file the volume accepts (bytes). Far above 4 GiB; keeps offsets well inside i64.
pub const MAX_FILE_SIZE: u64 = 1 << 50;
/// Longest name accepted in a directory (bytes), as on ext4.
pub const NAME_MAX: usize = 255;
/// Longest symlink target (bytes), as PATH_MAX.
pub const SYMLINK_MAX: usize = 4095;

/// Who is asking: owner of newly created inodes.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Attributes of an inode as the outside world sees them.
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: InodeNo,
    pub inode: Inode,
    /// Allocated size in 512-byte units (stored blocks only: holes are free).
    pub blocks512: u64,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// A time to set with `setattr`.
#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// The changes of one `setattr` call; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timestamp>,
}

/// Filesystem totals for `statfs`.
#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
}

/// One volume, opened on this machine.
pub struct Volume {
    meta: MetaStore,
    store: BlockStore,
    keys: VolumeKeys,
    names: NameCipher,
    block_size: u64,
    files: Mutex<HashMap<InodeNo, Arc<file::OpenFile>>>,
    handles: Mutex<HashMap<u64, InodeNo>>,
    /// Open directory handles per directory: a removed directory lives (with nlink 0) until
    /// the last is closed.
    open_dirs: Mutex<HashMap<InodeNo, u32>>,
    next_fh: AtomicU64,
    sealer: sealer::Sealer,
    cache: cache::BlockCache,
    /// Payload keys of recently read blocks, for small reads.
    keys_cache: cache::KeyCache,
    /// Set by every commit, cleared by a checkpoint: whether a durable commit is owed.
    needs_checkpoint: AtomicBool,
    data_dir: std::path::PathBuf,
    /// Background prefetches running now.
    prefetching: std::sync::atomic::AtomicUsize,
    /// Block ids being sealed and not yet committed: garbage collection must not delete
    /// their files (a seal may have found the file present and counted on it).
    pins: commit::Pins,
    /// Metadata commits so far, and how many of them are known durable (`commit_counts`).
    commits: AtomicU64,
    durable_commits: AtomicU64,
    /// Memory for dirty blocks of all open files (see `dirty`).
    write_budget: Arc<dirty::WriteBudget>,
    /// The mount's `AtimeRules`, encoded (see `atime`).
    atime_rules: std::sync::atomic::AtomicU8,
    /// Orphans left by unlinks since the last `reap_orphans`.
    orphans_pending: AtomicU64,
    /// When the last metadata change was committed (for `reap_when_due`).
    last_change: Mutex<std::time::Instant>,
    /// Access times recorded since the last checkpoint, not yet written (see `atime`).
    atimes: Mutex<HashMap<InodeNo, Timestamp>>,
    /// The fsync journal, and what a journalled fsync must write (see `fastsync`).
    journal: journal::Journal,
    undurable: Mutex<fastsync::Undurable>,
    /// Age headers wrapped ahead of time (see `headers`).
    headers: headers::HeaderPool,
    /// Disk space held for fallocated ranges (see `prealloc`).
    reservation: prealloc::Reservation,
    /// Seals hold it shared while they write; one that fills a reserved slot on a full disk
    /// holds it alone while it frees that slot's space and uses it.
    space: parking_lot::RwLock<()>,
    /// The pool: scheme, cache limit, the installed `Remote` (see `remote`).
    remote: remote::RemoteState,
    /// This volume, for work handed to background threads.
    me: std::sync::Weak<Volume>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

/// What `Volume::load` repaired after an unclean stop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recovery {
    /// fsync journal records re-applied (data fsynced since the last durable commit).
    pub journal_records: u64,
    pub orphans_removed: u64,
    pub stray_blocks_removed: u64,
    pub blocks_collected: u64,
    /// Blocks put in the pool's upload queue because the volume predates it.
    pub blocks_queued_for_upload: u64,
}

impl Volume {
    /// Creates the metadata database and block store of a new volume in `data_dir`.
    pub fn create(data_dir: &Path, block_size: u32, owner: Caller) -> Result<()> {
        Self::create_with_shards(data_dir, block_size, owner, None)
    }

    /// [`create`](Self::create), recording the erasure scheme (data, parity) its blocks get
    /// in the pool (`None`: [`remote::DEFAULT_SCHEME`]).
    pub fn create_with_shards(
        data_dir: &Path,
        block_size: u32,
        owner: Caller,
        shards: Option<(u8, u8)>,
    ) -> Result<()> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            VolumeError::Store(crate::store::StoreError::Io {
                path: data_dir.into(),
                source: e,
            })
        })?;
        let meta = MetaStore::create(
            &data_dir.join("meta.redb"),
            block_size,
            owner.uid,
            owner.gid,
        )?;
        let (data, parity) = shards.unwrap_or(remote::DEFAULT_SCHEME);
        meta.set_shards(data, parity)?;
        drop(meta);
        BlockStore::open(&data_dir.join("blocks"))?;
        Ok(())
    }

    /// Opens the volume in `data_dir`, finishing what an unclean stop left behind: unlinked
    /// files still open at the crash are deleted, block files no metadata references (sealed
    /// but never committed) are removed, and collectable blocks are freed.
    pub fn load(
        data_dir: &Path,
        keys: VolumeKeys,
        seal_threads: usize,
    ) -> Result<(Arc<Volume>, Recovery)> {
        let meta = MetaStore::open(&data_dir.join("meta.redb"))?;
        let superblock = meta.superblock()?;
        let block_size = superblock.block_size as u64;
        let scheme = superblock.shards.unwrap_or(remote::DEFAULT_SCHEME);
        let store = BlockStore::open(&data_dir.join("blocks"))?;
        let names = NameCipher::new(*keys.name_mac, *keys.name_enc);
        let headers = headers::HeaderPool::start(keys.recipient.clone());
        let journal = journal::Journal::new(
            data_dir.join("journal"),
            *keys.journal,
            meta.journal_epoch()?,
        );
        let volume = Arc::new_cyclic(|weak| Volume {
            meta,
            store,
            names,
            keys,
            block_size,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            open_dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            sealer: sealer::Sealer::start(weak.clone(), seal_threads),
            cache: cache::BlockCache::new(cache::BLOCK_CACHE_BLOCKS),
            keys_cache: cache::KeyCache::new(16 * 1024),
            needs_checkpoint: AtomicBool::new(false),
            data_dir: data_dir.to_path_buf(),
            prefetching: std::sync::atomic::AtomicUsize::new(0),
            pins: commit::Pins::default(),
            commits: AtomicU64::new(0),
            durable_commits: AtomicU64::new(0),
            write_budget: Arc::new(dirty::WriteBudget::new(block_size, DEFAULT_WRITE_BUFFER)),
            atime_rules: std::sync::atomic::AtomicU8::new(atime::default_encoded()),
            atimes: Mutex::new(HashMap::new()),
            orphans_pending: AtomicU64::new(0),
            last_change: Mutex::new(std::time::Instant::now()),
            headers,
            journal,
            undurable: Mutex::new(fastsync::Undurable::default()),
            reservation: prealloc::Reservation::new(data_dir, block_size),
            space: parking_lot::RwLock::new(()),
            remote: remote::RemoteState::new(scheme),
            me: weak.clone(),
        });
        // Before anything sweeps block files: journal records may name files the durable
        // metadata does not know yet.
        let replayed = volume.replay_journal()?;
        let mut recovery = volume.recover()?;
        recovery.journal_records = replayed as u64;
        recovery.blocks_queued_for_upload = volume.enqueue_unplaced()?;
        Ok((volume, recovery))
    }

    fn recover(&self) -> Result<Recovery> {
        let mut rec = Recovery::default();
        let mut tx = self.meta.write()?;
        for ino in tx.orphans()? {
            tx.remove_inode(ino)?;
            rec.orphans_removed += 1;
        }
        let mut stray = Vec::new();
        for id in self.store.list()? {
            if !tx.block_known(&id)? {
                stray.push(id);
            }
        }
        tx.commit()?;
        for id in &stray {
            self.store.delete(id)?;
        }
        rec.stray_blocks_removed = stray.len() as u64;
        rec.blocks_collected = self.checkpoint()?;
        Ok(rec)
    }

    /// Sets how many bytes of written data may wait in memory for sealing (at least four
    /// blocks' worth).
    pub fn set_write_buffer(&self, bytes: u64) {
        self.write_budget.set_limit(bytes.max(4 * self.block_size));
    }

    /// The most the write buffer held since the last call (the daemon returns memory to the
    /// system after a large burst).
    pub fn take_write_buffer_peak(&self) -> u64 {
        self.write_budget.take_peak()
    }

    /// The block size of this volume.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    #[cfg(test)]
    pub(crate) fn meta(&self) -> &MetaStore {
        &self.meta
    }

    #[cfg(test)]
    pub(crate) fn store(&self) -> &BlockStore {
        &self.store
    }

    /// Called after every metadata commit.
    fn mark_dirty(&self) {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.needs_checkpoint.store(true, Ordering::Relaxed);
        *self.last_change.lock() = std::time::Instant::now();
    }

    /// Called after a commit of the metadata backup's own bookkeeping: it is made durable
    /// like any commit, but is no change of the volume (the backup does not hold those rows,
    /// and counting them would make every backup due another).
    fn mark_bookkeeping(&self) {
        self.needs_checkpoint.store(true, Ordering::Relaxed);
    }

    /// (commits so far, commits known durable): when the second reaches a value the first had,
    /// everything committed up to then is on disk.
    pub fn commit_counts(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::SeqCst),
            self.durable_commits.load(Ordering::SeqCst),
        )
    }

    /// Whether changes were committed since the last checkpoint.
    pub fn needs_checkpoint(&self) -> bool {
        self.needs_checkpoint.load(Ordering::Relaxed)
    }

    /// [`make_durable`](Self::make_durable), then frees blocks whose zero refcount is now
    /// durable (the periodic checkpoint, unmount). Returns how many blocks were freed.
    pub fn checkpoint(&self) -> Result<u64> {
        self.reap_orphans()?;
        self.checkpoint_inner()
    }

    /// The periodic checkpoint: as [`checkpoint`](Self::checkpoint), but unlinked inodes are
    /// deleted only when that is due (see [`reap_when_due`](Self::reap_when_due)).
    pub fn checkpoint_tick(&self) -> Result<u64> {
        self.reap_when_due(false)?;
        self.checkpoint_inner()
    }

    fn checkpoint_inner(&self) -> Result<u64> {
        let covered = self.make_durable()?;
        self.reconcile_reservations()?;
        let mut freed = 0;
        loop {
            let ids = self.meta.collectable(covered, 1024)?;
            if ids.is_empty() {
                break;
            }
            // Under the pins lock: a seal that pins an id after this sees the file gone and
            // writes it again; one pinned before keeps its file.
            let deleted: Vec<_> = {
                let pins = self.pins.lock();
                let mut deleted = Vec::with_capacity(ids.len());
                for (id, inline) in ids.iter().filter(|(id, _)| !pins.contains_key(id)) {
                    if !inline {
                        self.store.delete(id)?;
                    }
                    self.cache.forget(id);
                    self.keys_cache.forget(id);
                    deleted.push(*id);
                }
                deleted
            };
            if deleted.is_empty() {
                break;
            }
            let mut tx = self.meta.write()?;
            tx.remove_gc(&deleted)?;
            tx.commit()?;
            freed += deleted.len() as u64;
            if deleted.len() < ids.len() {
                break; // the rest are pinned: next checkpoint
            }
        }
        Ok(freed)
    }

    /// Flushes every open file's buffers and makes the volume durable (unmount, SIGTERM).
    pub fn shutdown(&self) -> Result<()> {
        let open: Vec<InodeNo> = self.files.lock().keys().copied().collect();
        let mut first_err = None;
        for ino in open {
            if let Err(e) = self.flush(ino) {
                tracing::error!(target: "bitcloud::volume", %ino, error = %e, "flush at shutdown failed");
                first_err.get_or_insert(e);
            }
        }
        self.checkpoint()?;
        self.sealer.stop();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The attributes of `ino`, given its inode as some transaction read it. For an open file
    /// the inode is read again under the file's lock and overlaid with what is still in
    /// memory (see `OpenFile::overlay`).
    fn attr_of(&self, ino: InodeNo, inode: Inode) -> Attr {
        let open = self.files.lock().get(&ino).cloned();
        let mut inode = match open {
            Some(f) => f
                .overlay(|| self.meta.read().ok()?.inode(ino).ok()?)
                .unwrap_or(inode),
            None => inode,
        };
        self.overlay_atime(ino, &mut inode);
        // Stored and reserved blocks, as far as the file (or its furthest reservation) goes:
        // a short last block is not counted whole, and a write into a reserved range moves a
        // block from one count to the other without changing the sum.
        let blocks512 = if inode.kind == Kind::File {
            let bound = inode.size.max(inode.reserve_end).div_ceil(512) * 512;
            ((inode.stored_blocks + inode.reserved_blocks) * self.block_size).min(bound) / 512
        } else {
            0
        };
        Attr {
            ino,
            inode,
            blocks512,
            blksize: 4096,
        }
    }

    fn load_inode(&self, r: &impl Reader, ino: InodeNo) -> Result<Inode> {
        r.inode(ino)?.ok_or(VolumeError::NotFound)
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: InodeNo) -> Result<Attr> {
        let inode = self.live_inode(&self.meta.read()?, ino)?;
        Ok(self.attr_of(ino, inode))
    }

    /// `ino` as the kernel may still ask for it: an unlinked inode exists only while
    /// something holds it open (it waits for `reap_orphans` otherwise, and a file handle of
    /// it must be stale).
    fn live_inode(&self, r: &impl Reader, ino: InodeNo) -> Result<Inode> {
        let inode = self.load_inode(r, ino)?;
        if inode.nlink == 0
            && ino != InodeNo::ROOT
            && !self.is_open(ino)
            && !self.open_dirs.lock().contains_key(&ino)
        {
            return Err(VolumeError::NotFound);
        }
        Ok(inode)
    }

    /// Changes attributes (chmod, chown, truncate, utimens) in one transaction.
    pub fn setattr(&self, ino: InodeNo, req: SetAttr) -> Result<Attr> {
        if let Some(size) = req.size {
            self.truncate(ino, size)?;
        }
        let now = Timestamp::now();
        let open = self.files.lock().get(&ino).cloned();
        let mut guard = open.as_ref().map(|f| f.lock());
        let mut tx = self.meta.write()?;
        let mut inode = self.load_inode(&tx, ino)?;
        let mut changed = false;
        if let Some(mode) = req.mode {
            inode.perm = (mode & 0o7777) as u16;
            changed = true;
        }
        if req.uid.is_some() || req.gid.is_some() {
            if let Some(uid) = req.uid {
                inode.uid = uid;
            }
            if let Some(gid) = req.gid {
                inode.gid = gid;
            }
            // As on Linux: a change of owner drops set-user-id, and set-group-id where it
            // means "set group on exec" (group-executable), unless the same call sets a mode.
            if req.mode.is_none() && inode.kind != Kind::Dir {
                inode.perm &= !0o4000;
                if inode.perm & 0o010 != 0 {
                    inode.perm &= !0o2000;
                }
            }
            changed = true;
        }
        let resolve = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(ts) => ts,
        };
        if let Some(t) = req.atime {
            self.forget_atime(ino);
            inode.atime = resolve(t);
            changed = true;
        }
        if let Some(t) = req.mtime {
            inode.mtime = resolve(t);
            changed = true;
        }
        if changed || req.size.is_some() {
            inode.ctime = req.ctime.unwrap_or(now);
        } else if let Some(c) = req.ctime {
            inode.ctime = c;
        }
        if let Some(state) = guard.as_mut() {
            state.take_times(&mut inode, req.mtime.is_some());
        }
        tx.put_inode(ino, &inode)?;
        tx.commit()?;
        drop(guard);
        self.mark_dirty();
        if changed {
            // Mode, owner or times set by hand: the fsync journal does not carry those.
            self.note_fresh(ino);
        }
        Ok(self.attr_of(ino, inode))
    }

    /// Totals for `statfs`: the space of the disk holding the volume.
    pub fn statfs(&self) -> Result<FsStats> {
        let c_path = std::ffi::CString::new(self.data_dir.as_os_str().as_encoded_bytes())
            .map_err(|_| VolumeError::Invalid("data dir path has a NUL byte"))?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c_path is a valid NUL-terminated string and st a valid out-pointer.
        let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(VolumeError::Store(crate::store::StoreError::Io {
                path: self.data_dir.clone(),
                source: std::io::Error::last_os_error(),
            }));
        }
        let frsize = st.f_frsize as u64;
        let scale = |n: u64| n * frsize / 4096;
        Ok(FsStats {
            block_size: 4096,
            blocks: scale(st.f_blocks as u64),
            blocks_free: scale(st.f_bfree as u64),
            blocks_avail: scale(st.f_bavail as u64),
            files: u64::from(u32::MAX),
            files_free: u64::from(u32::MAX) / 2,
        })
    }

    /// Bytes written to the volume that are not yet durable on this machine's disk: still in
    /// write buffers, or in block files not yet fsynced. Zero after a checkpoint with no
    /// writes since. (With the nodepool this is where "not yet at full redundancy" goes.)
    pub fn pending_bytes(&self) -> u64 {
        let open: Vec<_> = self.files.lock().values().cloned().collect();
        let unsealed: u64 = open.iter().map(|f| f.unsealed_bytes()).sum();
        unsealed + self.store.unsynced_bytes()
    }

    /// Totals for `bitcloud status`.
    pub fn counts(&self) -> Result<crate::meta::Counts> {
        Ok(self.meta.read()?.counts()?)
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(VolumeError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(VolumeError::Invalid("bad file name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
