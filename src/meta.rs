//! The metadata store: sole owner of the volume's redb database.
//!
//! Every POSIX change is one [`WriteTx`]; its commit is atomic, so a crash leaves either the old
//! or the new state. A commit puts the transaction's rows into the in-memory write-back layer
//! (`overlay`: fast, lost in a crash, like a `Durability::None` redb commit);
//! [`MetaStore::commit_durable`] writes them all into redb and makes everything so far durable,
//! and is what `fsync`, the periodic checkpoint and unmount call.
//!
//! Refcounts change in the same transaction as the block map slot that references them. A
//! block whose refcount falls to zero moves to the `gc` table stamped with the current durable
//! *epoch*; its file may be deleted only once a durable commit has covered that epoch (see
//! [`MetaStore::collectable`]), so a crash can never roll the volume back to a state that
//! references a deleted block.

pub mod codec;
pub mod tables;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, Durability, ReadableDatabase};

use crate::ids::{BlockId, InodeNo};
use crate::names::Tag;
use codec::{BlockRecord, DecodeError, Dirent, Inode};
use tables::*;

/// Memory redb may use to cache database pages. Its default (1 GiB) would dominate the
/// mount's footprint; metadata is small and hot pages fit easily in this.
const META_CACHE_BYTES: usize = 32 << 20;

/// On-disk format version of the metadata database. Bumped on any incompatible change.
/// 2: two tables (`fs-2`, `blocks-2`) instead of format 1's ten; `migrate` converts.
pub const FORMAT_VERSION: u64 = 2;

/// Failures of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database: {0}")]
    Storage(#[from] redb::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("metadata database has format version {found}, this bitcloud reads {FORMAT_VERSION}")]
    UnsupportedFormat { found: u64 },
    #[error("metadata database is not initialised (missing superblock)")]
    NotInitialised,
    #[error("no space left on the device holding the metadata database")]
    NoSpace,
    /// A caller's callback stopped a walk of the rows (the metadata backup's upload failed).
    #[error("{0}")]
    Aborted(String),
}

impl MetaError {
    fn from_redb(e: impl Into<redb::Error>) -> MetaError {
        let e: redb::Error = e.into();
        if let redb::Error::Io(io) = &e
            && (io.raw_os_error() == Some(libc::ENOSPC) || io.raw_os_error() == Some(libc::EDQUOT))
        {
            return MetaError::NoSpace;
        }
        MetaError::Storage(e)
    }
}

macro_rules! db {
    ($e:expr) => {
        $e.map_err(MetaError::from_redb)?
    };
}

pub type Result<T> = std::result::Result<T, MetaError>;

pub mod backup;
mod keys;
mod migrate;
mod overlay;
pub mod placement;
mod prealloc;
mod reader;
mod scan;
pub use reader::{Counts, Reader};
pub use scan::TableSizes;

/// Volume-wide parameters stored in the superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub format: u64,
    pub block_size: u32,
    /// The erasure scheme chosen at `init` (data, parity shards); `None` for volumes made
    /// before the pool (the default applies).
    pub shards: Option<(u8, u8)>,
}

/// Inode numbers handed out per superblock update: creating a file then changes one table
/// fewer in most transactions (each changed table costs a redb commit several microseconds).
/// Numbers reserved but unused when the process stops are skipped, never reused.
const INO_BATCH: u64 = 1024;

/// Inode numbers reserved in the superblock by a committed transaction and not yet used.
#[derive(Debug, Default)]
struct InoRange {
    next: u64,
    end: u64,
}

/// The metadata database of one volume.
#[derive(Debug)]
pub struct MetaStore {
    shared: Arc<Shared>,
    /// The durable epoch the next commit belongs to (see module doc).
    epoch: AtomicU64,
    inos: Arc<parking_lot::Mutex<InoRange>>,
}

impl Drop for MetaStore {
    /// A clean close keeps every commit, as redb's own close does for non-durable commits.
    fn drop(&mut self) {
        if self.shared.pending.lock().is_empty() {
            return;
        }
        if let Err(e) = self.shared.flush(Durability::Immediate, &[]) {
            tracing::error!(target: "bitcloud::meta", error = %e, "metadata changes since the last checkpoint could not be written at close");
        }
    }
}

/// What the store and its write transactions share.
struct Shared {
    /// The redb snapshot transactions read under the pending rows (`overlay::RedbView`):
    /// taken when first needed after each flush, dropped by the flush's commit. Declared
    /// before `db`: dropped before the database closes.
    view: parking_lot::Mutex<Option<Arc<overlay::RedbView>>>,
    db: Database,
    /// Committed rows not yet in redb (`overlay`). Locked before `view` when both are.
    pending: parking_lot::Mutex<overlay::Rows>,
    /// Held by the one write transaction that may run at a time, and by a durable commit.
    writer: Arc<parking_lot::Mutex<()>>,
    /// Held while rows are written into redb: one flush at a time.
    flushing: parking_lot::Mutex<()>,
    /// The last flush failed (commits are refused once rows pile up).
    flush_failed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shared({} rows pending)", self.pending.lock().len())
    }
}

impl Shared {
    fn new(db: Database) -> Arc<Shared> {
        Arc::new(Shared {
            view: Default::default(),
            db,
            pending: Default::default(),
            writer: Default::default(),
            flushing: Default::default(),
            flush_failed: Default::default(),
        })
    }

    /// The current redb view (a new one after a flush). The caller holds the pending rows'
    /// lock and took its rows snapshot under it: a flush cannot commit rows newer than that
    /// snapshot into the view, nor drop rows from the map while an older view is current.
    fn view(&self, _pending: &overlay::Rows) -> Result<Arc<overlay::RedbView>> {
        let mut view = self.view.lock();
        if let Some(v) = &*view {
            return Ok(v.clone());
        }
        let fresh = overlay::RedbView::new(db!(self.db.begin_read()));
        *view = Some(fresh.clone());
        Ok(fresh)
    }

    /// After `rows` were committed into redb: drops the view (it lacks them) and, in the
    /// same step, the rows from the map that are still what was written.
    fn flushed(&self, rows: &overlay::Rows) {
        let mut pending = self.pending.lock();
        self.forget_view();
        overlay::trim(&mut pending, rows);
    }

    /// Drops the redb view: the next transaction begins a new one.
    fn forget_view(&self) {
        *self.view.lock() = None;
    }

    /// Writes the pending rows into redb (one transaction of `durability`, with `extra`
    /// superblock values) and drops them from the map. Runs alongside write transactions,
    /// unless the caller holds the writer lock.
    fn flush(&self, durability: Durability, extra: &[(&str, u64)]) -> Result<()> {
        let _one = self.flushing.lock();
        let rows = self.pending.lock().clone();
        if rows.is_empty() && extra.is_empty() && matches!(durability, Durability::None) {
            return Ok(());
        }
        match overlay::write_rows(&self.db, &rows, durability, extra) {
            Ok(()) => {
                self.flush_failed.store(false, Ordering::Relaxed);
                self.flushed(&rows);
                Ok(())
            }
            Err(e) => {
                self.flush_failed.store(true, Ordering::Relaxed);
                Err(MetaError::from_redb(e))
            }
        }
    }
}

impl MetaStore {
    /// Creates a new database with an empty root directory owned by `uid`/`gid`.
    pub fn create(path: &Path, block_size: u32, uid: u32, gid: u32) -> Result<MetaStore> {
        let db = db!(Database::builder()
            .set_cache_size(META_CACHE_BYTES)
            .create(path));
        let store = MetaStore {
            shared: Shared::new(db),
            epoch: AtomicU64::new(1),
            inos: Default::default(),
        };
        let mut tx = store.write()?;
        {
            let sb = db!(tx.txn.open_table(SUPERBLOCK));
            db!(sb.insert("format", FORMAT_VERSION));
            db!(sb.insert("block_size", block_size as u64));
            db!(sb.insert("next_ino", InodeNo::ROOT.0 + 1));
            // Every block of a new volume enters the upload queue as it is recorded.
            db!(sb.insert("upload_queue", 1));
        }
        let now = codec::Timestamp::now();
        tx.put_inode(
            InodeNo::ROOT,
            &Inode {
                kind: codec::Kind::Dir,
                perm: 0o755,
                uid,
                gid,
                nlink: 2,
                size: 0,
                rdev: 0,
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                stored_blocks: 0,
                reserved_blocks: 0,
                reserve_end: 0,
                parent: InodeNo::ROOT.0,
            },
        )?;
        tx.commit()?;
        store.commit_durable()?;
        Ok(store)
    }

    /// Opens an existing database and checks its format version.
    pub fn open(path: &Path) -> Result<MetaStore> {
        let db = db!(Database::builder()
            .set_cache_size(META_CACHE_BYTES)
            .open(path));
        let store = MetaStore {
            shared: Shared::new(db),
            epoch: AtomicU64::new(0),
            inos: Default::default(),
        };
        let sb = store.superblock()?;
        match sb.format {
            FORMAT_VERSION => {}
            1 => {
                migrate::from_v1(&store)?;
                // The migration wrote redb itself, not through a flush.
                store.shared.forget_view();
            }
            found => return Err(MetaError::UnsupportedFormat { found }),
        }
        // Everything that survived the open is durable: start past every stamped epoch.
        let tx = store.read()?;
        let mut max = 0u64;
        tx.each_gc(|_, epoch| max = max.max(epoch))?;
        store.epoch.store(max + 1, Ordering::SeqCst);
        Ok(store)
    }

    /// The volume's parameters (read from redb itself: `create` and `set_shards` write them
    /// with a durable commit).
    pub fn superblock(&self) -> Result<Superblock> {
        let tx = db!(self.shared.db.begin_read());
        let sb = match tx.open_table(SUPERBLOCK) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Err(MetaError::NotInitialised),
            Err(e) => return Err(MetaError::from_redb(e)),
        };
        let get = |k: &str| -> Result<u64> {
            db!(sb.get(k))
                .map(|g| g.value())
                .ok_or(MetaError::NotInitialised)
        };
        let opt = |k: &str| -> Result<Option<u64>> { Ok(db!(sb.get(k)).map(|g| g.value())) };
        let shards = match (opt("shards_data")?, opt("shards_parity")?) {
            (Some(d), Some(p)) => Some((d as u8, p as u8)),
            _ => None,
        };
        Ok(Superblock {
            format: get("format")?,
            block_size: get("block_size")? as u32,
            shards,
        })
    }

    /// Records the volume's erasure scheme (at `init`).
    pub fn set_shards(&self, data: u8, parity: u8) -> Result<()> {
        let tx = self.write()?;
        {
            let sb = db!(tx.txn.open_table(SUPERBLOCK));
            db!(sb.insert("shards_data", data as u64));
            db!(sb.insert("shards_parity", parity as u64));
        }
        tx.commit()?;
        self.commit_durable()?;
        Ok(())
    }

    /// Starts a read transaction (a consistent snapshot).
    pub fn read(&self) -> Result<ReadTx> {
        // The rows first, then redb, both under the rows' lock: a commit that came after
        // the rows' snapshot cannot be flushed into the redb snapshot (see `overlay`).
        let pending = self.shared.pending.lock();
        let rows = pending.clone();
        let view = self.shared.view(&pending)?;
        drop(pending);
        Ok(ReadTx {
            txn: overlay::Txn::new(rows, view, false),
        })
    }

    /// Starts a write transaction. Only one runs at a time; others wait.
    pub fn write(&self) -> Result<WriteTx> {
        let writer = self.shared.writer.lock_arc();
        let pending = self.shared.pending.lock();
        let rows = pending.clone();
        let view = self.shared.view(&pending)?;
        drop(pending);
        Ok(WriteTx {
            txn: overlay::Txn::new(rows, view, true),
            epoch: self.epoch.load(Ordering::SeqCst),
            inos: self.inos.clone(),
            ino_grant: None,
            shared: self.shared.clone(),
            _writer: writer,
        })
    }

    /// Makes every commit so far durable. Returns the epoch that is now safe to collect.
    pub fn commit_durable(&self) -> Result<u64> {
        self.begin_durable()?.commit(None)
    }

    /// The first half of a durable commit: writes most pending rows into redb while write
    /// transactions go on, then holds further commits off until [`DurableCommit::commit`].
    /// In between, the caller makes durable what the commits so far point at (block files
    /// sealed meanwhile): no commit can come in that the durable one would carry unsynced.
    pub fn begin_durable(&self) -> Result<DurableCommit<'_>> {
        self.shared.flush(Durability::None, &[])?;
        Ok(DurableCommit {
            store: self,
            _writer: self.shared.writer.lock(),
        })
    }

    /// The last fsync-journal epoch whose records the database holds (0: none yet; written
    /// only by durable commits, straight into redb).
    pub fn journal_epoch(&self) -> Result<u64> {
        let tx = db!(self.shared.db.begin_read());
        let sb = db!(tx.open_table(SUPERBLOCK));
        Ok(db!(sb.get("journal_epoch")).map(|g| g.value()).unwrap_or(0))
    }

    /// Blocks whose zero refcount is durable (stamped at or before `covered`), at most
    /// `limit`, each with whether it is inline (has no file to delete).
    pub fn collectable(&self, covered: u64, limit: usize) -> Result<Vec<(BlockId, bool)>> {
        let tx = self.read()?;
        let mut out = Vec::new();
        tx.each_gc_row(|id, epoch, inline| {
            if epoch <= covered && out.len() < limit {
                out.push((id, inline));
            }
        })?;
        Ok(out)
    }
}

/// A durable commit under way: commits wait until it is done (see
/// [`MetaStore::begin_durable`]).
pub struct DurableCommit<'a> {
    store: &'a MetaStore,
    _writer: parking_lot::MutexGuard<'a, ()>,
}

impl DurableCommit<'_> {
    /// Writes the rest of the pending rows durably, also recording, if given, that the fsync
    /// journal's records up to `journal_epoch` are in the database (`volume::journal`).
    /// Returns the gc epoch now covered.
    pub fn commit(self, journal_epoch: Option<u64>) -> Result<u64> {
        let store = self.store;
        let extra: Vec<(&str, u64)> = journal_epoch
            .map(|e| ("journal_epoch", e))
            .into_iter()
            .collect();
        // Commits are held off: none can slip between reading and bumping the epoch.
        let covered = store.epoch.load(Ordering::SeqCst);
        store.shared.flush(Durability::Immediate, &extra)?;
        store.epoch.store(covered + 1, Ordering::SeqCst);
        Ok(covered)
    }
}

/// A read-only snapshot.
pub struct ReadTx {
    txn: overlay::Txn,
}

impl std::fmt::Debug for ReadTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadTx")
    }
}

/// One atomic change to the volume. Dropped without [`commit`](WriteTx::commit), it
/// changes nothing.
pub struct WriteTx {
    txn: overlay::Txn,
    epoch: u64,
    inos: Arc<parking_lot::Mutex<InoRange>>,
    /// Numbers this transaction reserved in the superblock: usable once it commits.
    ino_grant: Option<InoRange>,
    shared: Arc<Shared>,
    _writer: parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()>,
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteTx(epoch {})", self.epoch)
    }
}

impl WriteTx {
    /// Commits (not yet durable: see [`MetaStore::commit_durable`]). Refused with
    /// [`MetaError::NoSpace`] only when the rows waiting for redb could not be written (a
    /// full disk, most likely) and have piled up past the layer's bound.
    pub fn commit(self) -> Result<()> {
        let WriteTx {
            txn,
            inos,
            ino_grant,
            shared,
            _writer,
            ..
        } = self;
        // Dropping the transaction's snapshot first lets the map change in place.
        let changes = txn.into_changes();
        let rows = {
            let mut pending = shared.pending.lock();
            if pending.len() >= overlay::FLUSH_ROWS && shared.flush_failed.load(Ordering::Relaxed) {
                return Err(MetaError::NoSpace);
            }
            for (k, v) in changes {
                pending.insert(k, v);
            }
            pending.len()
        };
        if let Some(grant) = ino_grant {
            *inos.lock() = grant;
        }
        drop(_writer);
        if rows >= overlay::FLUSH_ROWS
            && let Err(e) = shared.flush(Durability::None, &[])
        {
            tracing::warn!(target: "bitcloud::meta", error = %e, rows, "metadata rows could not be written into the database; they stay in memory");
        }
        Ok(())
    }

    /// Allocates a fresh inode number (never reused).
    ///
    /// Numbers come from a range the superblock already counts as used (reserved by an
    /// earlier, committed transaction); when it runs out, this transaction reserves the next
    /// [`INO_BATCH`]. An aborted transaction's reservation is never used, so every number a
    /// committed inode has is below the superblock's `next_ino` in the same commit or before.
    pub fn alloc_ino(&mut self) -> Result<InodeNo> {
        if let Some(grant) = &mut self.ino_grant {
            if grant.next < grant.end {
                grant.next += 1;
                return Ok(InodeNo(grant.next - 1));
            }
        } else {
            let mut range = self.inos.lock();
            if range.next < range.end {
                range.next += 1;
                return Ok(InodeNo(range.next - 1));
            }
        }
        let sb = db!(self.txn.open_table(SUPERBLOCK));
        let next = db!(sb.get("next_ino"))
            .map(|g| g.value())
            .ok_or(MetaError::NotInitialised)?;
        db!(sb.insert("next_ino", next + INO_BATCH));
        self.ino_grant = Some(InoRange {
            next: next + 1,
            end: next + INO_BATCH,
        });
        Ok(InodeNo(next))
    }

    pub fn put_inode(&mut self, ino: InodeNo, inode: &Inode) -> Result<()> {
        let t = db!(self.txn.open_table(FS));
        db!(t.insert(&keys::of(ino, keys::INODE)[..], &inode.encode()[..]));
        Ok(())
    }

    /// Deletes an inode with everything that is its own: block-map slots (refcounts drop),
    /// xattrs, symlink target, reservations, orphan mark. One range of the table.
    pub fn remove_inode(&mut self, ino: InodeNo) -> Result<()> {
        let slots = self.blocks_in(ino, 0, u64::MAX)?;
        for (_, id) in &slots {
            self.decref(id)?;
        }
        let mut reserved = 0i64;
        {
            let t = db!(self.txn.open_table(FS));
            let lo = keys::of(ino, keys::INODE);
            let hi = keys::after_inode(ino);
            // A directory's own entries are gone before it is (rmdir of a non-empty one
            // fails); any left (a damaged volume) stay for fsck to report.
            db!(t.retain_in(&lo[..]..&hi[..], |k, _| {
                let kind = keys::split(k).map(|(_, kind, _)| kind);
                reserved += i64::from(kind == Some(keys::RESERVED));
                kind == Some(keys::DIRENT)
            }));
            db!(t.remove(&keys::orphan(ino)[..]));
        }
        self.add_reserved_total(-reserved)
    }

    pub fn put_dirent(&mut self, parent: InodeNo, tag: &Tag, d: &Dirent) -> Result<()> {
        let t = db!(self.txn.open_table(FS));
        db!(t.insert(
            &keys::tagged(parent, keys::DIRENT, tag)[..],
            &d.encode()[..]
        ));
        Ok(())
    }

    pub fn remove_dirent(&mut self, parent: InodeNo, tag: &Tag) -> Result<()> {
        let t = db!(self.txn.open_table(FS));
        db!(t.remove(&keys::tagged(parent, keys::DIRENT, tag)[..]));
        Ok(())
    }

    pub fn put_symlink(&mut self, ino: InodeNo, sealed: &[u8]) -> Result<()> {
        db!(db!(self.txn.open_table(FS)).insert(&keys::of(ino, keys::SYMLINK)[..], sealed));
        Ok(())
    }

    pub fn put_xattr(&mut self, ino: InodeNo, tag: &Tag, sealed: &[u8]) -> Result<()> {
        let t = db!(self.txn.open_table(FS));
        db!(t.insert(&keys::tagged(ino, keys::XATTR, tag)[..], sealed));
        Ok(())
    }

    /// Removes an xattr; returns whether it existed.
    pub fn remove_xattr(&mut self, ino: InodeNo, tag: &Tag) -> Result<bool> {
        let t = db!(self.txn.open_table(FS));
        Ok(db!(t.remove(&keys::tagged(ino, keys::XATTR, tag)[..])).is_some())
    }

    /// Marks an unlinked inode for deletion (still open, or left to the background reaper):
    /// a crash cannot leak it, the next mount deletes it.
    pub fn add_orphan(&mut self, ino: InodeNo) -> Result<()> {
        db!(db!(self.txn.open_table(FS)).insert(&keys::orphan(ino)[..], &[][..]));
        Ok(())
    }

    /// Every orphan, in inode order.
    pub fn orphans(&self) -> Result<Vec<InodeNo>> {
        orphans_of(&db!(self.txn.open_table(FS)))
    }

    /// Points slot (`ino`, `index`) at `block` (or makes it a hole), adjusting refcounts and
    /// the inode's stored-block count. `new_record` describes `block` if it is not yet known.
    /// Returns the change in stored blocks of the inode (-1, 0, +1).
    pub fn set_block(
        &mut self,
        ino: InodeNo,
        index: u64,
        block: Option<(BlockId, BlockRecord)>,
    ) -> Result<i64> {
        let key = keys::indexed(ino, keys::SLOT, index);
        let old = {
            let map = db!(self.txn.open_table(FS));
            let old = match &block {
                Some((id, _)) => db!(map.insert(&key[..], &id.0[..])).map(|g| g.value().to_vec()),
                None => db!(map.remove(&key[..])).map(|g| g.value().to_vec()),
            };
            old.map(|v| codec::block_id_of(&v)).transpose()?
        };
        if old.as_ref() == block.as_ref().map(|(id, _)| id) {
            return Ok(0);
        }
        if let Some((id, record)) = block {
            self.incref(&id, record)?;
        }
        if let Some(old) = old {
            self.decref(&old)?;
        }
        Ok(match (old.is_some(), block.is_some()) {
            (false, true) => 1,
            (true, false) => -1,
            _ => 0,
        })
    }

    /// Marks slot (`ino`, `index`) as holding only the first `len` bytes of its block (a
    /// truncation cut it without re-sealing). No-op for a hole or a shorter valid length.
    pub fn clip_slot(&mut self, ino: InodeNo, index: u64, len: u32) -> Result<()> {
        let key = keys::indexed(ino, keys::SLOT, index);
        let map = db!(self.txn.open_table(FS));
        let current = db!(map.get(&key[..])).map(|g| g.value().to_vec());
        if let Some(v) = current {
            let (id, valid) = codec::slot_of(&v)?;
            if valid.is_none_or(|old| len < old) {
                db!(map.insert(&key[..], &codec::encode_slot(&id, Some(len))[..]));
            }
        }
        Ok(())
    }

    /// Drops every slot of `ino` from block index `from` on. Returns how many were mapped.
    pub fn set_blocks_from(&mut self, ino: InodeNo, from: u64) -> Result<u64> {
        let slots = self.blocks_in(ino, from, u64::MAX)?;
        for (index, _) in &slots {
            self.set_block(ino, *index, None)?;
        }
        Ok(slots.len() as u64)
    }

    fn incref(&mut self, id: &BlockId, record: BlockRecord) -> Result<()> {
        let blocks = db!(self.txn.open_table(BLOCKS));
        let rkey = keys::block(keys::RECORD, id);
        let current = db!(blocks.get(&rkey[..])).map(|g| g.value().to_vec());
        let next = match current {
            Some(v) => {
                let mut r = BlockRecord::decode(&v)?;
                r.refcount += 1;
                r
            }
            None => {
                // Re-referenced before collection: it leaves the gc queue.
                db!(blocks.remove(&keys::block(keys::GC, id)[..]));
                // New (or re-referenced and not fully placed): the uploader takes it.
                let placed = match db!(blocks.get(&keys::block(keys::PLACEMENT, id)[..])) {
                    Some(v) => placement::Placement::decode(v.value())?.is_full(),
                    None => false,
                };
                if !placed {
                    db!(blocks.insert(
                        &keys::block(keys::UPLOAD, id)[..],
                        &placement::queued_now()[..]
                    ));
                }
                BlockRecord {
                    refcount: 1,
                    ..record
                }
            }
        };
        db!(blocks.insert(&rkey[..], &next.encode()[..]));
        Ok(())
    }

    fn decref(&mut self, id: &BlockId) -> Result<()> {
        let blocks = db!(self.txn.open_table(BLOCKS));
        let rkey = keys::block(keys::RECORD, id);
        let current = db!(blocks.get(&rkey[..])).map(|g| g.value().to_vec());
        let Some(v) = current else {
            return Ok(());
        };
        let mut r = BlockRecord::decode(&v)?;
        r.refcount = r.refcount.saturating_sub(1);
        if r.refcount == 0 {
            db!(blocks.remove(&rkey[..]));
            let inline = db!(blocks.get(&keys::block(keys::INLINE, id)[..])).is_some();
            db!(blocks.insert(
                &keys::block(keys::GC, id)[..],
                &gc_value(self.epoch, inline)[..]
            ));
        } else {
            db!(blocks.insert(&rkey[..], &r.encode()[..]));
        }
        Ok(())
    }

    /// Forgets collected blocks (their files are gone).
    pub fn remove_gc(&mut self, ids: &[BlockId]) -> Result<()> {
        let mut dead = Vec::new();
        {
            let blocks = db!(self.txn.open_table(BLOCKS));
            for id in ids {
                db!(blocks.remove(&keys::block(keys::GC, id)[..]));
                // Re-referenced since it was chosen for collection: its inline bytes are live.
                if db!(blocks.get(&keys::block(keys::RECORD, id)[..])).is_none() {
                    db!(blocks.remove(&keys::block(keys::INLINE, id)[..]));
                    dead.push(*id);
                }
            }
        }
        // Its shards in the pool are released too.
        for id in dead {
            self.retire_placement(&id)?;
        }
        Ok(())
    }

    /// Stores the sealed bytes of a small block in the database.
    pub fn put_inline(&mut self, id: &BlockId, sealed: &[u8]) -> Result<()> {
        db!(db!(self.txn.open_table(BLOCKS)).insert(&keys::block(keys::INLINE, id)[..], sealed));
        Ok(())
    }

    /// Whether a block is referenced or waiting for collection (used by the orphan-file sweep).
    pub fn block_known(&self, id: &BlockId) -> Result<bool> {
        let t = db!(self.txn.open_table(BLOCKS));
        Ok(db!(t.get(&keys::block(keys::RECORD, id)[..])).is_some()
            || db!(t.get(&keys::block(keys::GC, id)[..])).is_some())
    }
}

/// A gc row's value: the epoch the block was freed in (`u64` LE) and whether it is inline.
fn gc_value(epoch: u64, inline: bool) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&epoch.to_le_bytes());
    v[8] = u8::from(inline);
    v
}

/// The orphan rows of an `fs-2` table.
fn orphans_of(t: &overlay::Table<'_>) -> Result<Vec<InodeNo>> {
    let lo = keys::orphans_start();
    let mut out = Vec::new();
    for row in db!(t.range::<&[u8]>(&lo[..]..)) {
        let (k, _) = db!(row);
        out.push(InodeNo(reader::key_index(k.value())?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
