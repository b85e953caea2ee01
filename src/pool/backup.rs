//! Publishing the volume's metadata to the pool, so that the identity file alone brings the
//! volume back on a new machine (`bitcloud recover`, see [`restore`](super::restore)).
//!
//! Every `pool.backup_secs` after a change (and at unmount), the publisher takes a point
//! ([`Volume::backup_point`]), waits until every block it names is on `k` peers, dumps it
//! as content-defined chunks and places the chunks that are new (or whose shards are no
//! longer all live) like blocks; chunks of the last backup are reused. A manifest listing
//! the chunks is sealed and placed too. Then a *root record* (`node::root`) is signed with
//! the volume's root key and given to every storage peer: sequence one above the highest
//! any of them holds, payload encrypted to the volume's recipient (the manifest's place
//! and this machine's node key). Only then is the backup recorded as published
//! ([`Volume::record_backup`]): what the previous two backups named may go.
//!
//! Before signing, the publisher reads the pool's newest record: one with a higher
//! sequence from another *instance* means the volume was recovered elsewhere. This copy
//! then stops publishing and releasing (it would destroy the newer copy's data) and says so
//! in its log and `status`.
//!
//! The current record is given again to every storage peer every [`REFRESH`] (new peers
//! get it, holders renew it), and each time the chunks of the current backup are checked:
//! one with a holder that is gone triggers a new backup that places it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::Shared;
use super::roots::{self, give_record, storage_peers};
use crate::ids::BlockId;
use crate::meta::backup::MetaChunk;
use crate::node::root::{self, RootRecord};
use crate::volume::Volume;
use crate::volume::backup::manifest::{ChunkRef, Manifest, RootPayload};
use crate::volume::backup::{BackupPoint, Readiness};

/// How often the current root record is given again and its chunks checked.
pub const REFRESH: Duration = Duration::from_secs(600);
/// A point whose blocks are not all placed within this long is dropped.
const READY_WITHIN: Duration = Duration::from_secs(600);
/// Points taken in one round before giving up (each dropped because a block it named was
/// freed before it was placed).
const MAX_POINTS: u32 = 20;
/// Chunks placed at once.
const IN_FLIGHT: usize = 4;

/// The publisher's memory between rounds.
#[derive(Default)]
struct Memory {
    /// Change count of the last point that was published or found unchanged.
    backed_up: Option<u64>,
    /// Chunk ids of the current backup, its manifest included (from the database at the
    /// first round: a mount that starts with nothing changed publishes nothing).
    chunks: Option<std::collections::HashSet<BlockId>>,
    /// The current root record's bytes.
    record: Option<Vec<u8>>,
    /// This copy was recovered from the pool's newest record and has not published one of
    /// its own yet: it must, so that a copy left on the lost machine finds it superseded.
    must_publish: bool,
    refreshed: Option<Instant>,
}

/// Runs until the pool stops or the volume goes.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut mem = Memory::default();
    loop {
        // Until the pool's newest record has been read, look every second: releases wait
        // for it (see `check_fence`).
        let mut wait = shared.config.backup_interval;
        if !shared.backup_state.lock().fenced {
            wait = wait.min(Duration::from_secs(1));
        }
        let _ = tokio::time::timeout(wait, shared.backup_kick.notified()).await;
        if shared.stopping() {
            return;
        }
        let Some(volume) = shared.volume.upgrade() else {
            return;
        };
        let asked = std::mem::take(&mut *shared.backup_waiters.lock());
        let result = round(&shared, &volume, &mut mem, !asked.is_empty()).await;
        let mut st = shared.backup_state.lock();
        if let Err(e) = &result
            && st.last_error.as_ref() != Some(e)
        {
            tracing::warn!(target: "bitcloud::pool", error = %e, "the metadata backup was not published; trying again later");
        }
        st.last_error = result.as_ref().err().cloned();
        drop(st);
        for w in asked {
            let _ = w.send(result.clone());
        }
    }
}

/// One round: publish if something changed (or a chunk needs placing again), refresh the
/// record if due. Returns the sequence published (or current).
async fn round(
    shared: &Arc<Shared>,
    volume: &Arc<Volume>,
    mem: &mut Memory,
    asked: bool,
) -> Result<u64, String> {
    if let Some(why) = &shared.backup_state.lock().superseded {
        return Err(why.clone());
    }
    if storage_peers(shared).is_empty() {
        // A volume with no pool (or none reachable now): nothing to publish to.
        return Ok(blocking(volume, |v| v.backup_seq()).await?.0);
    }
    if !shared.backup_state.lock().fenced {
        check_fence(shared, volume, mem).await?;
    }
    let refresh_due = mem.refreshed.is_none_or(|t| t.elapsed() >= REFRESH);
    let changed = mem.backed_up != Some(volume.change_count());
    let degraded = refresh_due && current_chunks_degraded(shared, volume).await;
    // Shards of freed blocks wait until no kept backup can name them: publishing again
    // (the same chunks, a new manifest) lets them go.
    let held = blocking(volume, |v| v.backup_status()).await?.releases_held > 0;
    if !changed && !degraded && !asked && !held && !mem.must_publish {
        if refresh_due && let Some(record) = mem.record.clone() {
            let (held, _) = give_record(shared, &record).await;
            shared.backup_state.lock().root_holders = held;
            mem.refreshed = Some(Instant::now());
        }
        return Ok(blocking(volume, |v| v.backup_seq()).await?.0);
    }
    shared.backup_state.lock().busy = true;
    let force = degraded || held || mem.must_publish;
    let r = publish(shared, volume, mem, force).await;
    shared.backup_state.lock().busy = false;
    r
}

/// Waits until every block `point` names is on `k` peers: `false` if one was freed first
/// (take a new point).
async fn ready(
    shared: &Arc<Shared>,
    volume: &Arc<Volume>,
    point: &Arc<BackupPoint>,
) -> Result<bool, String> {
    let since = Instant::now();
    loop {
        let p = point.clone();
        match blocking(volume, move |v| v.backup_readiness(&p)).await? {
            Readiness::Ready => return Ok(true),
            Readiness::Stale => return Ok(false),
            Readiness::Waiting(n) => {
                if since.elapsed() > READY_WITHIN {
                    return Err(format!(
                        "{n} blocks of the volume are still not in the pool"
                    ));
                }
                if shared.stopping() {
                    return Err("the pool stopped".into());
                }
                shared.kick.notify_one();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Takes a point, waits until it can be published, and publishes it (unless it holds
/// exactly the chunks of the last backup and none needs placing again).
async fn publish(
    shared: &Arc<Shared>,
    volume: &Arc<Volume>,
    mem: &mut Memory,
    force: bool,
) -> Result<u64, String> {
    // Nothing is placed for a backup no peer could keep the record of.
    if roots::check(shared, volume).await?.keeping == 0 {
        return Err(
            "no storage peer keeps root records (they run an older bitcloud): the metadata is not backed up"
                .into(),
        );
    }
    let mut attempts = 0u32;
    let (point, (chunks, stats, placed_any)) = loop {
        attempts += 1;
        if attempts > MAX_POINTS {
            return Err(format!(
                "{MAX_POINTS} snapshots in a row named blocks freed before they were in the pool; trying again later"
            ));
        }
        let point = Arc::new(blocking(volume, |v| v.backup_point()).await?);
        if !ready(shared, volume, &point).await? {
            tracing::debug!(target: "bitcloud::pool", "a block of the backup's snapshot was freed before it was placed; taking a new one");
            continue;
        }
        match place_chunks(shared, volume, point.clone()).await? {
            Some(placed) => break (point, placed),
            None => {
                tracing::debug!(target: "bitcloud::pool", "a block of the backup's snapshot was freed and written again before the dump; taking a new one");
            }
        }
    };
    let ids: Vec<BlockId> = chunks.iter().map(|c| c.id).collect();
    if mem.chunks.is_none() {
        let (seq, _) = blocking(volume, |v| v.backup_seq()).await?;
        let current = blocking(volume, |v| v.meta_chunks()).await?;
        mem.chunks = Some(
            current
                .into_iter()
                .filter(|(_, c)| seq > 0 && c.last_seq == seq)
                .map(|(id, _)| id)
                .collect(),
        );
    }
    // The same chunks as the current backup (whose set also has its manifest), none placed
    // anew: nothing to publish.
    let distinct: std::collections::HashSet<BlockId> = ids.iter().copied().collect();
    let same = mem.chunks.as_ref().is_some_and(|cur| {
        cur.len() == distinct.len() + 1 && distinct.iter().all(|id| cur.contains(id))
    });
    if !force && !placed_any && same {
        tracing::debug!(target: "bitcloud::pool", chunks = ids.len(), "the metadata backup is current");
        mem.backed_up = Some(point.commits);
        shared.backup_state.lock().changes_covered = Some(point.commits);
        return Ok(blocking(volume, |v| v.backup_seq()).await?.0);
    }
    let keys = volume.backup_keys();
    let manifest = Manifest {
        volume_id: keys.volume_id,
        generation: point.generation,
        created: crate::volume::backup::unix_now(),
        instance: point.instance,
        rows: stats.rows,
        bytes: stats.bytes,
        chunks,
    };
    let plain = manifest.encode();
    let manifest_ref = place_chunk(
        shared,
        volume,
        crate::volume::backup::chunk_id(keys, &plain),
        plain,
    )
    .await?;
    let (seq, record) = sign_root(shared, volume, mem, &point, manifest_ref.clone()).await?;
    let (held, stale) = give_record(shared, &record).await;
    if stale > 0 {
        // Some peer holds a newer (or another) record: another copy may have published.
        check_fence(shared, volume, mem).await?;
    }
    if held == 0 {
        return Err("no peer took the root record".into());
    }
    let manifest_id = manifest_ref.id;
    let mut used = ids.clone();
    used.push(manifest_id);
    let generation = point.generation;
    let dropped = blocking(volume, move |v| v.record_backup(seq, generation, &used)).await?;
    tracing::info!(target: "bitcloud::pool", seq, chunks = ids.len(), rows = stats.rows, bytes = stats.bytes, root_holders = held, chunks_released = dropped, "metadata backup published");
    {
        let mut st = shared.backup_state.lock();
        st.root_holders = held;
        st.changes_covered = Some(point.commits);
    }
    mem.backed_up = Some(point.commits);
    mem.must_publish = false;
    mem.chunks = Some(distinct.into_iter().chain([manifest_id]).collect());
    mem.record = Some(record);
    mem.refreshed = Some(Instant::now());
    Ok(seq)
}

/// What a dump placed: the chunks in order, the dump's figures, whether any chunk was
/// placed now.
type Placed = (Vec<ChunkRef>, crate::volume::backup::DumpStats, bool);

/// Dumps the point and places every chunk that is not already in the pool whole. `None`:
/// the point is stale (see [`DumpError::Stale`](crate::volume::backup::DumpError)).
async fn place_chunks(
    shared: &Arc<Shared>,
    volume: &Arc<Volume>,
    point: Arc<BackupPoint>,
) -> Result<Option<Placed>, String> {
    let known: HashMap<BlockId, MetaChunk> = blocking(volume, |v| v.meta_chunks())
        .await?
        .into_iter()
        .collect();
    let domains = free_domains(shared);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(BlockId, Vec<u8>)>(2);
    let v = volume.clone();
    let max = crate::node::protocol::MAX_SHARD as usize;
    let max = max.min(1 << 20);
    // On a thread of its own at a lower priority: a dump of a large volume takes seconds of
    // CPU, which must not delay FUSE requests on a small machine.
    let (done_tx, dumper) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bitcloud-backup".into())
        .spawn(move || {
            crate::volume::lower_thread_priority();
            let r = v.backup_dump(&point, max, |id, plain| {
                tx.blocking_send((id, plain))
                    .map_err(|_| "the backup's upload stopped".to_string())
            });
            let _ = done_tx.send(r);
        })
        .map_err(|e| format!("starting the backup's dump: {e}"))?;
    let mut out: Vec<Option<ChunkRef>> = Vec::new();
    let mut running: JoinSet<(usize, Result<ChunkRef, String>)> = JoinSet::new();
    let mut failure = None;
    let mut placed_any = false;
    while let Some((id, plain)) = rx.recv().await {
        let i = out.len();
        out.push(None);
        if let Some(c) = known.get(&id).filter(|c| whole(shared, domains, c)) {
            out[i] = Some(ChunkRef {
                id,
                plain_len: c.plain_len,
                sealed_len: c.sealed_len,
                placement: c.placement.clone(),
            });
            continue;
        }
        while running.len() >= IN_FLIGHT {
            if let Some(Ok((j, r))) = running.join_next().await {
                match r {
                    Ok(c) => out[j] = Some(c),
                    Err(e) => failure = Some(e),
                }
            }
        }
        if failure.is_some() {
            break;
        }
        placed_any = true;
        let (s, v) = (shared.clone(), volume.clone());
        running.spawn(async move { (i, place_chunk(&s, &v, id, plain).await) });
    }
    drop(rx);
    while let Some(r) = running.join_next().await {
        if let Ok((j, r)) = r {
            match r {
                Ok(c) => out[j] = Some(c),
                Err(e) => failure = Some(e),
            }
        }
    }
    let stats = dumper
        .await
        .map_err(|_| "the backup's dump stopped".to_string())?;
    let stats = match stats {
        Err(crate::volume::backup::DumpError::Stale) => return Ok(None),
        Err(e) => return Err(failure.unwrap_or_else(|| e.to_string())),
        Ok(s) => s,
    };
    if let Some(e) = failure {
        return Err(e);
    }
    let chunks = out
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or("a chunk of the backup was not placed")?;
    Ok(Some((chunks, stats, placed_any)))
}

/// Seals one chunk and places it, recording it: at least `k` shards must be placed.
async fn place_chunk(
    shared: &Arc<Shared>,
    volume: &Arc<Volume>,
    id: BlockId,
    plain: Vec<u8>,
) -> Result<ChunkRef, String> {
    let plain_len = plain.len() as u32;
    let sealed = {
        let v = volume.clone();
        tokio::task::spawn_blocking(move || v.seal_chunk(&plain))
            .await
            .map_err(|e| e.to_string())??
    };
    let sealed_len = sealed.len() as u32;
    let scheme = volume.scheme();
    let placement = super::upload::place_new(shared, &id, sealed, scheme).await?;
    if placement.placed() < placement.data as usize {
        return Err(format!(
            "only {} of the {} shards needed of a metadata chunk could be placed",
            placement.placed(),
            placement.data
        ));
    }
    let chunk = MetaChunk {
        last_seq: 0,
        plain_len,
        sealed_len,
        placement: placement.clone(),
    };
    blocking(volume, move |v| v.record_meta_chunk(&id, chunk)).await?;
    shared.backup_state.lock().chunks_placed += 1;
    Ok(ChunkRef {
        id,
        plain_len,
        sealed_len,
        placement,
    })
}

/// Whether a chunk is in the pool as well as it can be: every placed shard still counts,
/// at least `k` are placed, and all are if the pool has as many failure domains.
/// `domains`: the failure domains that may take shards now ([`free_domains`]).
fn whole(shared: &Shared, domains: usize, c: &MetaChunk) -> bool {
    let p = &c.placement;
    let live = p
        .shards
        .iter()
        .filter_map(|s| s.holder.as_deref().map(|h| (h, &s.id)))
        .all(|(h, id)| shared.holder_live(h, id));
    live && p.placed() >= p.data as usize && (p.is_full() || domains < p.shards.len())
}

/// How many failure domains may take shards now.
fn free_domains(shared: &Shared) -> usize {
    super::upload::candidates(shared)
        .into_iter()
        .map(|(_, c)| c.domain)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Whether a chunk of the current backup has lost a holder.
async fn current_chunks_degraded(shared: &Arc<Shared>, volume: &Arc<Volume>) -> bool {
    let Ok((seq, _)) = blocking(volume, |v| v.backup_seq()).await else {
        return false;
    };
    let Ok(chunks) = blocking(volume, |v| v.meta_chunks()).await else {
        return false;
    };
    let domains = free_domains(shared);
    seq > 0
        && chunks
            .iter()
            .any(|(_, c)| c.last_seq == seq && !whole(shared, domains, c))
}

/// Reads the pool's root records (see [`roots::check`]) and keeps what they say.
async fn check_fence(
    shared: &Arc<Shared>,
    volume: &Arc<Volume>,
    mem: &mut Memory,
) -> Result<u64, String> {
    let f = roots::check(shared, volume).await?;
    if mem.record.is_none() {
        mem.record = f.own_record;
    }
    mem.must_publish |= f.must_publish;
    Ok(f.next_seq)
}

/// Checks this copy was not superseded, and signs the next root record.
async fn sign_root(
    shared: &Arc<Shared>,
    volume: &Arc<Volume>,
    mem: &mut Memory,
    point: &BackupPoint,
    manifest: ChunkRef,
) -> Result<(u64, Vec<u8>), String> {
    let keys = volume.backup_keys();
    let key = root::keypair(&keys.signing_seed);
    let seq = check_fence(shared, volume, mem).await?;
    let node_key = shared
        .config
        .node_key
        .as_ref()
        .map(|k| k.0.to_vec())
        .ok_or("the node key is not known to the pool")?;
    let payload = RootPayload {
        instance: point.instance,
        created: crate::volume::backup::unix_now(),
        generation: point.generation,
        manifest,
        node_key,
    };
    let sealed = age::encrypt(&keys.recipient, &payload.encode()).map_err(|e| e.to_string())?;
    let record = RootRecord::sign(&key, seq, sealed).map_err(|e| e.to_string())?;
    Ok((seq, record.encode()))
}

/// Runs `f` on the volume on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    volume: &Arc<Volume>,
    f: impl FnOnce(&Volume) -> crate::volume::Result<T> + Send + 'static,
) -> Result<T, String> {
    let v = volume.clone();
    tokio::task::spawn_blocking(move || f(&v))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}
