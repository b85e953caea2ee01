//! The owner's side of the nodepool, in a mount: it connects the [`Volume`] (which knows
//! blocks, queues and placements, but no network) with the embedded [`node`](crate::node)
//! (which knows peers and streams, but no volume).
//!
//! - [`upload`]: drains the volume's durable upload queue: erasure-codes each sealed block,
//!   places its shards on distinct peers (weighted rendezvous, one per host), records the
//!   holders; retries with backoff, resumes after any restart.
//! - [`fetch`]: a block not on this machine: shards from their holders in parallel, data
//!   shards first, each verified, a slow peer hedged, decoded from the first `k` good ones,
//!   within `pool.read_timeout`.
//! - [`release`]: shards of collected blocks (and copies a repair replaced) are released on
//!   their holders.
//! - [`repair`]: blocks short of live shards get the missing ones rebuilt on new peers.
//! - [`audit`]: holders prove possession of random chunks of random shards.
//! - [`check`]: `fsck` with peers: every shard audited, failures re-spread at once.
//! - [`lease`]: the leases on every placed shard are renewed on its holder.
//! - the cache keeper: evicts fully placed blocks beyond `cache.size`.
//!
//! Everything runs on the node's tokio runtime; the volume calls in through
//! [`Remote`](crate::volume::remote::Remote), from its own threads.

pub mod audit;
pub mod backup;
pub mod check;
pub mod fetch;
pub mod lease;
pub mod release;
pub mod repair;
pub mod restore;
pub mod roots;
pub mod upload;

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use libp2p::PeerId;

use crate::ids::{BlockId, ShardId};
use crate::meta::placement::Placement;
use crate::node::NodeHandle;
use crate::volume::Volume;
use crate::volume::remote::Remote;

/// Settings of the pool side of a mount.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// A read from the pool gives up (EIO) after this long.
    pub read_timeout: Duration,
    /// Blocks uploaded at once.
    pub uploads_in_flight: usize,
    /// How often the repairer walks the placements.
    pub repair_interval: Duration,
    /// How long a holder may be silent before its shards count as missing.
    pub repair_grace: Duration,
    /// Live shards above `k` below which a block is repaired; `None`: `m` (any lost shard).
    pub repair_margin: Option<u8>,
    /// How often a round of audits runs.
    pub audit_interval: Duration,
    /// How often the metadata backup is published when something changed.
    pub backup_interval: Duration,
    /// This machine's node key, carried (encrypted) in the volume's root record.
    pub node_key: Option<NodeKeyBytes>,
}

/// A node key's bytes, never printed.
#[derive(Clone)]
pub struct NodeKeyBytes(pub Arc<zeroize::Zeroizing<Vec<u8>>>);

impl std::fmt::Debug for NodeKeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKeyBytes(..)")
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            read_timeout: Duration::from_secs(5),
            uploads_in_flight: 8,
            repair_interval: repair::DEFAULT_INTERVAL,
            repair_grace: repair::DEFAULT_GRACE,
            repair_margin: None,
            audit_interval: audit::DEFAULT_INTERVAL,
            backup_interval: DEFAULT_BACKUP_INTERVAL,
            node_key: None,
        }
    }
}

/// Longest `fsck --repair` waits for the metadata backup to be placed anew.
const BACKUP_REPAIR_WITHIN: Duration = Duration::from_secs(180);

/// How often the metadata backup is published when something changed, by default.
pub const DEFAULT_BACKUP_INTERVAL: Duration = Duration::from_secs(60);

/// Shared by the pool's tasks.
pub(crate) struct Shared {
    pub volume: Weak<Volume>,
    pub node: NodeHandle,
    pub config: PoolConfig,
    pub placement_key: [u8; 32],
    /// New blocks are queued (or a peer appeared): the uploader looks at once.
    pub kick: Notify,
    pub stopping: std::sync::atomic::AtomicBool,
    /// Blocks whose fetch failed just now: when, the peers' connection count then, and
    /// why. The kernel retries a failed read at once (readahead, then the read itself), and
    /// each retry would wait the whole read timeout again; a new connection since makes
    /// the pool worth asking again.
    pub failed:
        parking_lot::Mutex<std::collections::HashMap<BlockId, (std::time::Instant, u64, String)>>,
    /// Shards a holder was caught without (not found, or wrong bytes): they count as
    /// missing until a repair replaces them. Bounded by [`MAX_LOST`].
    pub lost: parking_lot::Mutex<std::collections::HashSet<(ShardId, PeerId)>>,
    /// The repairer looks at once (a fetch found a lost shard).
    pub repair_kick: Notify,
    /// When this pool started: a holder not heard from since counts as seen then.
    pub started: std::time::SystemTime,
    /// Shards rebuilt and placed by repairs.
    pub repaired_shards: std::sync::atomic::AtomicU64,
    /// Leases renewed on holders.
    pub renewed_leases: std::sync::atomic::AtomicU64,
    /// Blocks being repaired now (one repair per block at a time).
    pub repairing: parking_lot::Mutex<std::collections::HashSet<BlockId>>,
    /// The metadata backup publishes now (a change, or someone waits for it).
    pub backup_kick: Notify,
    /// Waiting for the next backup round's outcome (`umount`).
    pub backup_waiters: parking_lot::Mutex<Vec<tokio::sync::oneshot::Sender<Result<u64, String>>>>,
    pub backup_state: parking_lot::Mutex<crate::volume::remote::BackupLive>,
}

/// Most (shard, holder) pairs remembered as lost.
const MAX_LOST: usize = 100_000;

/// How long a failed fetch answers for its block without asking the pool again.
const FAILED_FETCH_MEMORY: Duration = Duration::from_secs(2);

impl Shared {
    pub(crate) fn new(
        volume: Weak<Volume>,
        node: NodeHandle,
        config: PoolConfig,
        placement_key: [u8; 32],
    ) -> Arc<Shared> {
        Arc::new(Shared {
            volume,
            node,
            config,
            placement_key,
            kick: Notify::new(),
            stopping: Default::default(),
            failed: Default::default(),
            lost: Default::default(),
            repair_kick: Notify::new(),
            started: std::time::SystemTime::now(),
            repaired_shards: Default::default(),
            renewed_leases: Default::default(),
            repairing: Default::default(),
            backup_kick: Notify::new(),
            backup_waiters: Default::default(),
            backup_state: Default::default(),
        })
    }

    /// The rendezvous key of a block: only this volume's owner can compute it.
    pub fn rendezvous_key(&self, id: &BlockId) -> [u8; 32] {
        *blake3::keyed_hash(&self.placement_key, &id.0).as_bytes()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `holder` still counts for `shard`: it was not caught without it, is not
    /// banned, and answers now, or was last heard from (or this pool started) within the
    /// grace period.
    pub fn holder_live(&self, holder: &[u8], shard: &ShardId) -> bool {
        let Ok(peer) = PeerId::from_bytes(holder) else {
            return false;
        };
        if self.lost.lock().contains(&(*shard, peer)) {
            return false;
        }
        let state = self.node.peers.get(&peer);
        if state.as_ref().is_some_and(|s| s.banned()) {
            return false;
        }
        if state
            .as_ref()
            .is_some_and(|s| s.connected && s.failing == 0)
        {
            return true;
        }
        let seen = state
            .and_then(|s| s.last_seen)
            .map_or(self.started, |t| t.max(self.started));
        // A last-seen time in the future (the clock went back) counts as just now.
        seen.elapsed()
            .map_or(true, |silent| silent < self.config.repair_grace)
    }

    /// `peer` was caught without `shard`: it counts as missing, and the repairer looks.
    pub fn mark_lost(&self, shard: ShardId, peer: PeerId) {
        let mut lost = self.lost.lock();
        if lost.len() < MAX_LOST {
            lost.insert((shard, peer));
        }
        drop(lost);
        self.repair_kick.notify_one();
    }

    /// A repair replaced `holder`'s copy of `shard`.
    pub fn forget_lost(&self, shard: &ShardId, holder: &[u8]) {
        if let Ok(peer) = PeerId::from_bytes(holder) {
            self.lost.lock().remove(&(*shard, peer));
        }
    }
}

/// Placements read per step of a walk.
const WALK_BATCH: usize = 1024;

/// Walks every placement in block order, a page of [`WALK_BATCH`] at a time, handing each
/// page to `each` (the repairer's and the renewer's walks). `None`: the volume went away; a
/// failed read ends the walk early, logged with `what`.
pub(crate) async fn walk_placements(
    shared: &Shared,
    what: &'static str,
    mut each: impl FnMut(Vec<(BlockId, Placement)>),
) -> Option<()> {
    let mut after: Option<BlockId> = None;
    loop {
        let volume = shared.volume.upgrade()?;
        let from = after;
        let page =
            tokio::task::spawn_blocking(move || volume.placements(from.as_ref(), WALK_BATCH))
                .await
                .ok()?;
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(target: "bitcloud::pool", error = %e, what, "reading placements failed");
                return Some(());
            }
        };
        let end = page.len() < WALK_BATCH;
        after = page.last().map(|(id, _)| *id);
        each(page);
        if end || shared.stopping() {
            return Some(());
        }
    }
}

/// The running pool side of a mount.
pub struct Pool {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Pool {
    /// Starts the uploader, the releaser and the cache keeper on `rt`, and attaches the
    /// pool to the volume (reads of blocks not here go through it from now on).
    pub fn start(
        volume: &Arc<Volume>,
        node: NodeHandle,
        rt: tokio::runtime::Handle,
        config: PoolConfig,
    ) -> Arc<Pool> {
        let shared = Shared::new(Arc::downgrade(volume), node, config, volume.placement_key());
        let tasks = vec![
            rt.spawn(upload::run(shared.clone())),
            rt.spawn(release::run(shared.clone())),
            rt.spawn(repair::run(shared.clone())),
            rt.spawn(audit::run(shared.clone())),
            rt.spawn(lease::run(shared.clone())),
            rt.spawn(backup::run(shared.clone())),
            rt.spawn(keep_cache(shared.clone())),
        ];
        let pool = Arc::new(Pool {
            shared,
            rt,
            tasks: parking_lot::Mutex::new(tasks),
        });
        volume.set_remote(pool.clone());
        pool
    }

    /// Stops the background tasks (what is queued stays queued for the next mount).
    pub fn stop(&self) {
        self.shared
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.shared.kick.notify_waiters();
        self.shared.repair_kick.notify_waiters();
        self.shared.backup_kick.notify_waiters();
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl Pool {
    /// Publishes the metadata backup now if anything changed since the last one, and waits
    /// (at most `within`) for the outcome: the sequence of the volume's current backup.
    pub fn backup_now(&self, within: Duration) -> Result<u64, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.backup_waiters.lock().push(tx);
        self.shared.backup_kick.notify_one();
        let shared = self.shared.clone();
        self.run(move |_| async move {
            match tokio::time::timeout(within, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the pool stopped".to_string()),
                Err(_) => {
                    shared.backup_waiters.lock().clear();
                    Err(format!("not done within {} s", within.as_secs()))
                }
            }
        })
        .unwrap_or_else(|| Err("the pool stopped".into()))
    }

    /// Runs `f` on the node's runtime and waits for it here (callers are volume threads,
    /// which may be inside another runtime's blocking pool). `None`: the pool stopped.
    fn run<T, F, Fut>(&self, f: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let shared = self.shared.clone();
        self.rt.spawn(async move {
            let _ = tx.send(f(shared).await);
        });
        rx.recv().ok()
    }
}

impl Remote for Pool {
    fn fetch(
        &self,
        id: &BlockId,
        placement: &Placement,
        sealed_len: u32,
    ) -> Result<Vec<u8>, String> {
        let connects = self.shared.node.peers.connects();
        {
            let mut failed = self.shared.failed.lock();
            failed.retain(|_, (at, c, _)| at.elapsed() < FAILED_FETCH_MEMORY && *c == connects);
            if let Some((_, _, why)) = failed.get(id) {
                return Err(why.clone());
            }
        }
        let (placement, id) = (placement.clone(), *id);
        let r =
            self.run(move |shared| async move {
                fetch::fetch(&shared, &id, &placement, sealed_len).await
            })
            .unwrap_or_else(|| Err("the pool stopped during the read".into()));
        if let Err(why) = &r {
            self.shared
                .failed
                .lock()
                .insert(id, (std::time::Instant::now(), connects, why.clone()));
        }
        r
    }

    fn holder_live(&self, shard: &crate::meta::placement::ShardPlace) -> bool {
        shard
            .holder
            .as_deref()
            .is_some_and(|h| self.shared.holder_live(h, &shard.id))
    }

    fn check_shards(
        &self,
        _id: &BlockId,
        placement: &Placement,
    ) -> Vec<crate::volume::remote::ShardCheck> {
        let placement = placement.clone();
        self.run(move |shared| async move { check::check_shards(&shared, &placement).await })
            .unwrap_or_default()
    }

    fn respread(
        &self,
        id: &BlockId,
        placement: &Placement,
        failed: &[usize],
    ) -> Result<(), String> {
        let (id, placement, failed) = (*id, placement.clone(), failed.to_vec());
        self.run(
            move |shared| async move { check::respread(&shared, id, &placement, &failed).await },
        )
        .unwrap_or_else(|| Err("the pool stopped".into()))
    }

    fn respread_backup(&self, failed: &[crate::meta::placement::ShardPlace]) -> Result<(), String> {
        let before = self
            .shared
            .volume
            .upgrade()
            .and_then(|v| v.backup_seq().ok())
            .map_or(0, |(seq, _)| seq);
        for s in failed {
            if let Some(peer) = s.holder.as_deref().and_then(|h| PeerId::from_bytes(h).ok()) {
                self.shared.mark_lost(s.id, peer);
            }
        }
        let after = self.backup_now(BACKUP_REPAIR_WITHIN)?;
        if after <= before {
            return Err("no new backup could be published (no storage peer took one)".into());
        }
        Ok(())
    }

    fn backup(&self) -> crate::volume::remote::BackupLive {
        self.shared.backup_state.lock().clone()
    }

    fn counters(&self) -> crate::volume::remote::PoolCounters {
        use std::sync::atomic::Ordering::Relaxed;
        crate::volume::remote::PoolCounters {
            repaired_shards: self.shared.repaired_shards.load(Relaxed),
            renewed_leases: self.shared.renewed_leases.load(Relaxed),
        }
    }

    fn can_place(&self) -> bool {
        !upload::candidates(&self.shared).is_empty()
    }

    fn kick(&self) {
        self.shared.kick.notify_one();
    }
}

/// Evicts fully placed blocks whenever the local files exceed the cache limit.
async fn keep_cache(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(volume) = shared.volume.upgrade() else {
            return;
        };
        let r = tokio::task::spawn_blocking(move || volume.enforce_cache_limit()).await;
        match r {
            Ok(Ok(Some(rep))) if rep.evicted_blocks > 0 => {
                tracing::debug!(target: "bitcloud::pool", blocks = rep.evicted_blocks, bytes = rep.evicted_bytes, "evicted from the local cache");
            }
            Ok(Err(e)) => {
                tracing::warn!(target: "bitcloud::pool", error = %e, "keeping the cache within its limit failed");
            }
            _ => {}
        }
    }
}
