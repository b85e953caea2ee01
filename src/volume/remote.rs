//! The volume's side of the nodepool, without any networking: the upload and release
//! queues (read and settled here, drained by the `pool` module), placements, fetching a
//! block that is not on this machine through the [`Remote`] the daemon installs, the local
//! block files as a bounded cache (eviction of fully placed blocks only), per-file state,
//! and `fsync` that waits for the pool (`mount.sync = "remote"`).
//!
//! Eviction relies on durable placements: a block file is deleted only after a durable
//! commit that records every shard of it as placed, so a crash can never roll the metadata
//! back to a state that needs the file.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

use super::{Result, Volume, VolumeError};
use crate::ids::{BlockId, InodeNo};
use crate::meta::Reader;
use crate::meta::codec::BlockRecord;
use crate::meta::placement::{Placement, Redundancy, ShardPlace};
use crate::store::StoreError;

/// Fetches blocks from the pool. Implemented by `pool::Pool`; blocking, bounded in time.
pub trait Remote: Send + Sync {
    /// The sealed bytes of block `id`, rebuilt from the shards `placement` names and
    /// verified against their shard ids (the caller verifies the block itself).
    fn fetch(
        &self,
        id: &BlockId,
        placement: &Placement,
        sealed_len: u32,
    ) -> std::result::Result<Vec<u8>, String>;

    /// New blocks are in the upload queue.
    fn kick(&self);

    /// Some peer can take shards now: queued blocks are on their way, not only local.
    fn can_place(&self) -> bool;

    /// Whether a placed shard still counts: its holder answers (or has been silent less
    /// than the repair grace period) and has not lost or corrupted it.
    fn holder_live(&self, shard: &ShardPlace) -> bool;

    /// Audits every placed shard of block `id` on its holder now (`fsck` with peers); one
    /// verdict per shard of `placement`, in order.
    fn check_shards(&self, id: &BlockId, placement: &Placement) -> Vec<ShardCheck>;

    /// Rebuilds the shards of `id` at `failed` (indexes into `placement`) on other peers now,
    /// whatever the grace period (`fsck --repair`).
    fn respread(
        &self,
        id: &BlockId,
        placement: &Placement,
        failed: &[usize],
    ) -> std::result::Result<(), String>;

    /// The shards `failed` of the metadata backup's chunks count as lost: the next backup,
    /// made now, places those chunks anew (`fsck --repair`).
    fn respread_backup(&self, failed: &[ShardPlace]) -> std::result::Result<(), String> {
        let _ = failed;
        Err("no pool".into())
    }

    /// What the pool's upkeep has done so far.
    fn counters(&self) -> PoolCounters {
        PoolCounters::default()
    }

    /// Where the metadata backup's publishing stands.
    fn backup(&self) -> BackupLive {
        BackupLive::default()
    }
}

/// What the metadata backup's publisher has done since the mount started (`status`).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BackupLive {
    /// Peers that acknowledged the current root record the last time it was given.
    pub root_holders: u64,
    /// Chunks placed since the mount started (new, or placed again).
    pub chunks_placed: u64,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// Another copy of this volume (recovered elsewhere) published a newer backup: this
    /// copy no longer publishes or releases anything.
    pub superseded: Option<String>,
    /// A backup is being made now.
    pub busy: bool,
    /// The volume's change count (`committed_changes`) that the newest backup covers.
    pub changes_covered: Option<u64>,
    /// The pool's newest root record was read since the mount started, and it is this
    /// copy's own (or older): until then nothing is released (see `pool::backup`).
    pub fenced: bool,
}

/// What an audit of one placed shard found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardCheck {
    /// The holder proved it has the shard.
    Good,
    /// The holder does not have it, or sent a proof that does not verify.
    Bad(String),
    /// The holder did not answer.
    NoAnswer(String),
    /// No holder.
    Unplaced,
}

/// What the pool's upkeep has done since it started.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PoolCounters {
    pub repaired_shards: u64,
    pub renewed_leases: u64,
}

/// The erasure scheme of a volume made without `--shards`: 4 data + 4 parity shards (any 4
/// of 8 peers rebuild a block; see docs/pool.md for the figures behind it).
pub const DEFAULT_SCHEME: (u8, u8) = (4, 4);

/// Pool-related state of the volume.
pub(super) struct RemoteState {
    pub remote: parking_lot::RwLock<Option<Arc<dyn Remote>>>,
    /// Erasure scheme for blocks placed from now on.
    pub scheme: Mutex<(u8, u8)>,
    /// Most bytes of block files to keep locally (`None`: no limit).
    pub cache_limit: Mutex<Option<u64>>,
    /// `fsync` waits until every block of the file has this many shards placed.
    pub sync_remote: Mutex<Option<(usize, Duration)>>,
    /// Signalled whenever a placement is recorded.
    pub placed: Condvar,
    pub placed_lock: Mutex<()>,
}

impl RemoteState {
    pub(super) fn new(scheme: (u8, u8)) -> RemoteState {
        RemoteState {
            remote: parking_lot::RwLock::new(None),
            scheme: Mutex::new(scheme),
            cache_limit: Mutex::new(None),
            sync_remote: Mutex::new(None),
            placed: Condvar::new(),
            placed_lock: Mutex::new(()),
        }
    }
}

/// One block to upload.
pub struct UploadJob {
    pub id: BlockId,
    pub sealed: Vec<u8>,
    /// What is already placed (a retry), or `None`.
    pub placement: Option<Placement>,
    /// The scheme to use when nothing is placed yet.
    pub scheme: (u8, u8),
}

/// A fully placed block the repairer rebuilds shards of.
pub struct RepairJob {
    pub placement: Placement,
    /// The sealed bytes, when they are on this machine (else fetched from the pool).
    pub sealed: Option<Vec<u8>>,
    pub sealed_len: u32,
}

/// The pool side of `status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RemoteStatus {
    pub redundancy: Redundancy,
    pub pending_blocks: u64,
    pub pending_bytes: u64,
    pub oldest_pending_secs: Option<u64>,
    pub cache_used_bytes: u64,
    pub cache_limit_bytes: Option<u64>,
    pub releases_pending: u64,
    pub counters: PoolCounters,
    /// The metadata backup as the database records it.
    pub backup: super::backup::BackupStatus,
    /// What its publisher is doing (`None`: no pool attached).
    pub backup_live: Option<BackupLive>,
}

/// What `cache drop` (or the cache limit) did.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EvictReport {
    pub evicted_blocks: u64,
    pub evicted_bytes: u64,
    /// Blocks kept because the pool does not hold them fully yet.
    pub kept_not_redundant_blocks: u64,
    pub kept_not_redundant_bytes: u64,
}

/// Where a file's data stands (`user.bitcloud.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    Writing,
    Local,
    Uploading,
    Degraded,
    Redundant,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Writing => "writing",
            FileState::Local => "local",
            FileState::Uploading => "uploading",
            FileState::Degraded => "degraded",
            FileState::Redundant => "redundant",
        }
    }
}

impl Volume {
    /// Connects the volume to the pool: reads of blocks not on this machine go to `remote`.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        *self.remote.remote.write() = Some(remote);
    }

    /// Whether a pool is attached.
    pub fn has_remote(&self) -> bool {
        self.remote.remote.read().is_some()
    }

    /// The erasure scheme for new placements.
    pub fn scheme(&self) -> (u8, u8) {
        *self.remote.scheme.lock()
    }

    /// Changes the scheme for blocks placed from now on (placed blocks keep theirs).
    pub fn set_scheme(&self, data: u8, parity: u8) {
        *self.remote.scheme.lock() = (data, parity);
    }

    /// Caps the local block files at `bytes` (`None`: no cap).
    pub fn set_cache_limit(&self, bytes: Option<u64>) {
        *self.remote.cache_limit.lock() = bytes;
    }

    pub fn cache_limit(&self) -> Option<u64> {
        *self.remote.cache_limit.lock()
    }

    /// Makes `fsync` also wait until every block of the file has `min_shards` shards placed,
    /// for at most `timeout` (then EIO). `None`: fsync is local only.
    pub fn set_sync_remote(&self, wait: Option<(usize, Duration)>) {
        *self.remote.sync_remote.lock() = wait;
    }

    pub(super) fn sync_remote(&self) -> Option<(usize, Duration)> {
        *self.remote.sync_remote.lock()
    }

    /// Up to `limit` blocks of the upload queue, in id order after `after`.
    pub fn upload_queue(&self, after: Option<&BlockId>, limit: usize) -> Result<Vec<BlockId>> {
        Ok(self.meta.read()?.upload_queue(after, limit)?)
    }

    /// Block `id` of the upload queue with its sealed bytes; `None` if it left the queue,
    /// or if its bytes are not on this machine (logged: nothing can upload it).
    pub fn upload_job(&self, id: &BlockId) -> Result<Option<UploadJob>> {
        let tx = self.meta.read()?;
        if !tx.is_queued(id)? {
            return Ok(None);
        }
        let sealed = match tx.inline_block(id)? {
            Some(b) => b,
            None => match self.store.get(id) {
                Ok(b) => b,
                Err(StoreError::Missing(_)) => {
                    tracing::error!(target: "bitcloud::volume", block = %id.short(), "a block waiting for upload is missing from the local store");
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Some(UploadJob {
            id: *id,
            placement: tx.placement(id)?,
            sealed,
            scheme: self.scheme(),
        }))
    }

    /// Records where `id`'s shards are; `done` takes it off the upload queue. Returns
    /// whether the block is still live (if not, its shards were queued for release).
    pub fn record_placement(&self, id: &BlockId, p: &Placement, done: bool) -> Result<bool> {
        let mut tx = self.meta.write()?;
        let live = tx.set_placement(id, p, done)?;
        tx.commit()?;
        self.mark_dirty();
        let _g = self.remote.placed_lock.lock();
        self.remote.placed.notify_all();
        Ok(live)
    }

    /// Blocks with shards to release (collected, or replaced by a repair), and the shards,
    /// from the block after `after` on (`limit` rows looked at; rows a published metadata
    /// backup may still need are held back).
    pub fn release_batch(
        &self,
        after: Option<&BlockId>,
        limit: usize,
    ) -> Result<crate::meta::placement::ReleasePage> {
        Ok(self.meta.read()?.release_queue_after(after, limit)?)
    }

    /// Up to `limit` placements in block id order after `after` (the repairer's walk).
    pub fn placements(
        &self,
        after: Option<&BlockId>,
        limit: usize,
    ) -> Result<Vec<(BlockId, Placement)>> {
        Ok(self.meta.read()?.placements(after, limit)?)
    }

    /// A live, fully placed block to repair, with its sealed bytes if they are here; `None`
    /// if it was freed or is still in the upload queue.
    pub fn repair_job(&self, id: &BlockId) -> Result<Option<RepairJob>> {
        let tx = self.meta.read()?;
        let (Some(record), Some(placement)) = (tx.block_record(id)?, tx.placement(id)?) else {
            return Ok(None);
        };
        if tx.is_queued(id)? {
            return Ok(None);
        }
        let sealed = match tx.inline_block(id)? {
            Some(b) => Some(b),
            None => match self.store.get(id) {
                Ok(b) => Some(b),
                Err(StoreError::Missing(_)) => None,
                Err(e) => {
                    tracing::warn!(target: "bitcloud::volume", block = %id.short(), error = %e, "the local copy of a block to repair is unreadable; rebuilding from the pool");
                    None
                }
            },
        };
        Ok(Some(RepairJob {
            placement,
            sealed,
            sealed_len: record.sealed_len,
        }))
    }

    /// Records a repaired placement and queues the replaced copies for release. Returns
    /// whether the block is still live.
    pub fn record_repair(
        &self,
        id: &BlockId,
        p: &Placement,
        surplus: Vec<ShardPlace>,
    ) -> Result<bool> {
        let mut tx = self.meta.write()?;
        let live = tx.set_repair(id, p, &surplus)?;
        tx.commit()?;
        self.mark_dirty();
        Ok(live)
    }

    /// Whether a placed shard counts (always, without a pool: nothing says otherwise).
    fn shard_live(&self, remote: Option<&Arc<dyn Remote>>, s: &ShardPlace) -> bool {
        s.holder.is_some() && remote.is_none_or(|r| r.holder_live(s))
    }

    /// Every shard of `p` is placed on a live holder.
    fn fully_live(&self, remote: Option<&Arc<dyn Remote>>, p: &Placement) -> bool {
        p.shards.iter().all(|s| self.shard_live(remote, s))
    }

    /// Forgets released blocks.
    pub fn forget_released(&self, ids: &[BlockId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.meta.write()?;
        for id in ids {
            tx.released(id)?;
        }
        tx.commit()?;
        self.mark_dirty();
        Ok(())
    }

    /// Puts every recorded block not yet fully placed in the upload queue (once per
    /// volume: volumes made before the pool). Returns how many.
    pub fn enqueue_unplaced(&self) -> Result<u64> {
        let mut tx = self.meta.write()?;
        let n = tx.enqueue_unplaced_once()?;
        tx.commit()?;
        if n > 0 {
            self.mark_dirty();
        }
        Ok(n)
    }

    /// Redundancy, upload queue and cache figures.
    pub fn remote_status(&self) -> Result<RemoteStatus> {
        let remote = self.remote.remote.read().clone();
        let tx = self.meta.read()?;
        let redundancy = tx.redundancy(
            |id| self.store.contains(id),
            |s| self.shard_live(remote.as_ref(), s),
        )?;
        let (pending_blocks, pending_bytes, oldest) = tx.upload_totals()?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(RemoteStatus {
            redundancy,
            pending_blocks,
            pending_bytes,
            oldest_pending_secs: oldest.map(|t| now.saturating_sub(t)),
            cache_used_bytes: self.store.disk_bytes(),
            cache_limit_bytes: self.cache_limit(),
            releases_pending: tx.release_queue(usize::MAX)?.len() as u64,
            counters: remote.as_ref().map(|r| r.counters()).unwrap_or_default(),
            backup: super::backup::backup_status_of(&tx)?,
            backup_live: remote.map(|r| r.backup()),
        })
    }

    /// How many of our blocks' shards each peer holds (peer id bytes → shards).
    pub fn shards_by_holder(&self) -> Result<std::collections::HashMap<Vec<u8>, u64>> {
        Ok(self.meta.read()?.shards_by_holder()?)
    }

    /// How many shards of the metadata backup's kept chunks each peer holds.
    pub fn backup_shards_by_holder(&self) -> Result<std::collections::HashMap<Vec<u8>, u64>> {
        let mut out = std::collections::HashMap::new();
        for (_, c) in self.meta.read()?.meta_chunks()? {
            for h in c.placement.shards.into_iter().filter_map(|s| s.holder) {
                *out.entry(h).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// Deletes local block files the pool holds at full redundancy, least recently used
    /// first, until at most `target` bytes remain (0: every such block). Placements are
    /// made durable first.
    pub fn evict_to(&self, target: u64) -> Result<EvictReport> {
        let mut report = EvictReport::default();
        let used = self.store.disk_bytes();
        if used <= target {
            return Ok(report);
        }
        let candidates = self.store.by_last_use();
        let mut evictable = Vec::new();
        let remote = self.remote.remote.read().clone();
        {
            let tx = self.meta.read()?;
            for (id, len) in candidates {
                let full = tx
                    .placement(&id)?
                    .is_some_and(|p| p.is_full() && self.fully_live(remote.as_ref(), &p))
                    && !tx.is_queued(&id)?;
                if full {
                    evictable.push((id, len));
                } else if tx.block_record(&id)?.is_some() {
                    report.kept_not_redundant_blocks += 1;
                    report.kept_not_redundant_bytes += len;
                }
            }
        }
        if evictable.is_empty() {
            return Ok(report);
        }
        // The placements we rely on must survive a crash before the files go.
        self.make_durable()?;
        let mut left = used;
        for (id, len) in evictable {
            if left <= target {
                break;
            }
            let _pins = self.pins.lock();
            if _pins.contains_key(&id) {
                continue;
            }
            self.store.delete(&id)?;
            left = left.saturating_sub(len);
            report.evicted_blocks += 1;
            report.evicted_bytes += len;
        }
        Ok(report)
    }

    /// Applies the cache limit (the daemon calls this periodically).
    pub fn enforce_cache_limit(&self) -> Result<Option<EvictReport>> {
        let Some(limit) = self.cache_limit() else {
            return Ok(None);
        };
        if self.store.disk_bytes() <= limit {
            return Ok(None);
        }
        // Leave room below the limit so that eviction does not run on every block.
        Ok(Some(self.evict_to(limit - limit / 8)?))
    }

    /// The sealed bytes of a block that is not on this machine, fetched from the pool and
    /// kept in the local store (as cache).
    pub(super) fn fetch_remote(
        &self,
        id: &BlockId,
        record: &BlockRecord,
    ) -> std::result::Result<Vec<u8>, String> {
        let remote = self.remote.remote.read().clone();
        let Some(remote) = remote else {
            return Err("the block is not on this machine and no pool is attached".into());
        };
        let placement = self
            .meta
            .read()
            .and_then(|tx| tx.placement(id))
            .map_err(|e| e.to_string())?
            .ok_or("the block is not on this machine and was never placed in the pool")?;
        let sealed = remote.fetch(id, &placement, record.sealed_len)?;
        if let Err(e) = self.store.put_cached(id, &sealed) {
            tracing::warn!(target: "bitcloud::volume", block = %id.short(), error = %e, "could not keep a fetched block in the local cache");
        }
        Ok(sealed)
    }

    /// Replaces a damaged (or missing) local copy of a pool-placed block with the block
    /// rebuilt from its shards (`fsck --repair` through a mount). The caller checks the
    /// result as any block.
    pub(super) fn restore_from_pool(
        &self,
        id: &BlockId,
        record: &BlockRecord,
    ) -> std::result::Result<(), String> {
        let placed = self
            .meta
            .read()
            .and_then(|tx| tx.placement(id))
            .map_err(|e| e.to_string())?
            .is_some_and(|p| p.placed() >= p.data as usize);
        if !placed || !self.has_remote() {
            return Err("the pool holds no copy of it".into());
        }
        self.store.delete(id).map_err(|e| e.to_string())?;
        self.fetch_remote(id, record).map(|_| ())
    }

    /// Where `ino`'s data stands.
    pub fn file_state(&self, ino: InodeNo) -> Result<FileState> {
        let writing = self
            .files
            .lock()
            .get(&ino)
            .cloned()
            .is_some_and(|f| f.is_dirty());
        if writing {
            return Ok(FileState::Writing);
        }
        if !self.has_remote() {
            return Ok(FileState::Local);
        }
        let remote = self.remote.remote.read().clone();
        let can_place = remote.as_ref().is_some_and(|r| r.can_place());
        let tx = self.meta.read()?;
        let slots = tx.slots_in(ino, 0, u64::MAX)?;
        let mut state = FileState::Redundant;
        for (_, id, _) in slots {
            let placement = tx.placement(&id)?;
            let live = placement.as_ref().map_or(0, |p| {
                p.shards
                    .iter()
                    .filter(|s| self.shard_live(remote.as_ref(), s))
                    .count()
            });
            let s = match placement {
                Some(p) if live == p.shards.len() => FileState::Redundant,
                Some(p) if live >= p.data as usize => FileState::Degraded,
                _ if can_place && tx.is_queued(&id)? => FileState::Uploading,
                _ => FileState::Local,
            };
            let rank = |s| match s {
                FileState::Local => 0,
                FileState::Uploading => 1,
                FileState::Degraded => 2,
                _ => 3,
            };
            if rank(s) < rank(state) {
                state = s;
            }
        }
        Ok(state)
    }

    /// Waits until every block of `ino` has at least `min` shards placed, at most `timeout`.
    pub(super) fn wait_placed(&self, ino: InodeNo, min: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        if let Some(r) = self.remote.remote.read().as_ref() {
            r.kick();
        }
        loop {
            let missing = {
                let tx = self.meta.read()?;
                let mut missing = 0usize;
                for (_, id, _) in tx.slots_in(ino, 0, u64::MAX)? {
                    if tx.placement(&id)?.is_none_or(|p| p.placed() < min) {
                        missing += 1;
                    }
                }
                missing
            };
            if missing == 0 {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::error!(target: "bitcloud::volume", %ino, blocks = missing, min_shards = min, "fsync: blocks not in the pool in time (mount.sync = \"remote\")");
                return Err(VolumeError::PoolTimeout {
                    ino,
                    blocks: missing,
                });
            }
            let mut g = self.remote.placed_lock.lock();
            self.remote
                .placed
                .wait_for(&mut g, (deadline - now).min(Duration::from_millis(500)));
        }
    }
}

impl Volume {
    /// The key of shard placement (`pool` hashes block ids with it).
    pub fn placement_key(&self) -> [u8; 32] {
        *self.keys.placement
    }
}
