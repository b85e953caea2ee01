//! Repair: keeps every block at full redundancy with no user action and no coordinator.
//!
//! Every `pool.repair_interval_secs` the checker walks the volume's placements and counts
//! each block's *live* shards ([`Shared::holder_live`]: the holder answers, or was last seen
//! within `pool.repair_grace_secs`, and has not lost or corrupted that very shard). A block
//! with fewer than `k + margin` live shards is repaired, most endangered first, a few at a
//! time and a bounded number per round. A fetch that finds a lost or wrong shard puts its
//! block on the list at once.
//!
//! Only the missing shard indices are rebuilt: from the local copy of the block when it is
//! here, else from any `k` shards fetched from the pool. Reed-Solomon is deterministic, so
//! a rebuilt shard has its original id (checked). The new shards go to peers in failure
//! domains the block does not use yet; the replaced holders' copies go to the release queue,
//! released if that peer ever answers again (a node that comes back gives up its surplus).
//! A block that cannot be brought up (too few peers for its scheme) stays degraded and is
//! tried again only when the set of candidate peers changes (which starts a walk at once):
//! repair settles instead of fighting forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::{Shared, fetch, upload};
use crate::ids::BlockId;
use crate::meta::placement::{Placement, ShardPlace};
use crate::node::placement::{Candidate, rank};
use crate::pipeline::erasure::{self, Scheme};

/// Blocks repaired at once.
const IN_FLIGHT: usize = 2;
/// Most blocks repaired per round (the rest wait for the next): bounds repair traffic.
const PER_ROUND: usize = 512;
/// The first retry of a block whose repair failed for a passing reason.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// How often the checker looks whether a walk is due.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// What became of one block.
enum Outcome {
    /// Every missing shard is back (or none was missing).
    Repaired,
    /// No peer in a free failure domain can take the missing shards: the pool is too small
    /// for the block's scheme. Tried again when the set of candidates changes.
    Short,
    /// Something failed that may work later (a put refused or timed out, too few shards
    /// reachable to rebuild from): tried again with backoff.
    Retry,
    /// The block is gone (freed) or not the checker's business (still uploading).
    Gone,
    /// Another repair of this block is running (the checker's, or `fsck --repair`'s).
    Busy,
}

/// What the checker remembers between walks.
#[derive(Default)]
struct Memory {
    /// Blocks the pool is too small for, with the set of candidates there was then.
    stuck: HashMap<BlockId, u64>,
    /// Blocks to try again, when, and the backoff so far.
    backoff: HashMap<BlockId, (tokio::time::Instant, Duration)>,
}

impl Memory {
    fn settle(&mut self, id: BlockId, o: Outcome, candidates: u64, most: Duration) {
        match o {
            Outcome::Busy => {}
            Outcome::Repaired | Outcome::Gone => {
                self.stuck.remove(&id);
                self.backoff.remove(&id);
            }
            Outcome::Short => {
                self.backoff.remove(&id);
                self.stuck.insert(id, candidates);
            }
            Outcome::Retry => {
                let wait = self
                    .backoff
                    .get(&id)
                    .map_or(FIRST_RETRY, |(_, b)| (*b * 2).min(most.max(FIRST_RETRY)));
                self.backoff
                    .insert(id, (tokio::time::Instant::now() + wait, wait));
            }
        }
    }

    /// Whether `id` may be tried now.
    fn may_try(&self, id: &BlockId, candidates: u64, now: tokio::time::Instant) -> bool {
        self.stuck.get(id).is_none_or(|&c| candidates != c)
            && self.backoff.get(id).is_none_or(|(at, _)| *at <= now)
    }
}

/// Runs until the pool stops or the volume goes.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut memory = Memory::default();
    let mut last_walk = tokio::time::Instant::now();
    // The last walk found more than one round's worth: the next one starts soon.
    let mut more = false;
    loop {
        // Walk when the interval is up, when a fetch or audit found a lost shard, when the
        // pool grew while some blocks were stuck for want of peers, or when a retry is due.
        let kicked = tokio::time::timeout(LOOK_EVERY, shared.repair_kick.notified())
            .await
            .is_ok();
        if shared.stopping() {
            return;
        }
        let now = tokio::time::Instant::now();
        let grew = !memory.stuck.is_empty() && {
            let peers = candidate_set(&shared);
            memory.stuck.values().any(|&was| peers != was)
        };
        let retry_due = memory.backoff.values().any(|(at, _)| *at <= now);
        if !kicked
            && !grew
            && !more
            && !retry_due
            && last_walk.elapsed() < shared.config.repair_interval
        {
            continue;
        }
        last_walk = now;
        let mut todo = match walk(&shared).await {
            Some(t) => t,
            None => return,
        };
        more = false;
        if todo.is_empty() {
            memory = Memory::default();
            continue;
        }
        // Forget blocks that no longer need anything.
        let due: std::collections::HashSet<BlockId> = todo.iter().map(|(_, id)| *id).collect();
        memory.stuck.retain(|id, _| due.contains(id));
        memory.backoff.retain(|id, _| due.contains(id));
        let candidates_now = candidate_set(&shared);
        let now = tokio::time::Instant::now();
        let before = todo.len();
        todo.retain(|(_, id)| memory.may_try(id, candidates_now, now));
        tracing::debug!(target: "bitcloud::pool", due = before, now = todo.len(), stuck = memory.stuck.len(), backoff = memory.backoff.len(), "repair walk");
        todo.sort();
        more = todo.len() > PER_ROUND;
        todo.truncate(PER_ROUND);
        if !todo.is_empty() {
            tracing::info!(target: "bitcloud::pool", blocks = todo.len(), most_endangered_live = todo[0].0, "repairing blocks short of shards");
        }
        let most = shared.config.repair_interval;
        let mut set = JoinSet::new();
        for (_, id) in todo {
            while set.len() >= IN_FLIGHT {
                if let Some(Ok((id, o))) = set.join_next().await {
                    memory.settle(id, o, candidates_now, most);
                }
            }
            if shared.stopping() {
                return;
            }
            let s = shared.clone();
            set.spawn(async move {
                // Never let one block hold the repairer: every step inside is bounded, and
                // this bounds their sum.
                let most = s.config.read_timeout * 2 + Duration::from_secs(60);
                match tokio::time::timeout(most, repair_one(&s, id)).await {
                    Ok(o) => (id, o),
                    Err(_) => {
                        tracing::warn!(target: "bitcloud::pool", block = %id.short(), "a repair took too long; trying again later");
                        (id, Outcome::Retry)
                    }
                }
            });
        }
        while let Some(r) = set.join_next().await {
            if let Ok((id, o)) = r {
                memory.settle(id, o, candidates_now, most);
            }
        }
    }
}

/// Which peers may take shards now, as one number: a stuck block is tried again when it
/// changes (a peer joined, came back, or got room), not only when the count grows.
fn candidate_set(shared: &Shared) -> u64 {
    let mut ids: Vec<Vec<u8>> = upload::candidates(shared)
        .into_iter()
        .map(|(p, _)| p.to_bytes())
        .collect();
    ids.sort();
    let mut h = blake3::Hasher::new();
    for id in &ids {
        h.update(&(id.len() as u32).to_le_bytes());
        h.update(id);
    }
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Every fully placed block below its repair threshold: (live shards, id).
async fn walk(shared: &Arc<Shared>) -> Option<Vec<(usize, BlockId)>> {
    let mut todo = Vec::new();
    super::walk_placements(shared, "repair", |page| {
        for (id, p) in page {
            // Blocks never fully placed are the uploader's.
            if !p.is_full() {
                continue;
            }
            let live = live_shards(shared, &p);
            if live < threshold(shared, &p) {
                todo.push((live, id));
            }
        }
    })
    .await?;
    Some(todo)
}

/// Live shards below this number make a block due for repair.
fn threshold(shared: &Shared, p: &Placement) -> usize {
    let margin = shared.config.repair_margin.unwrap_or(p.parity) as usize;
    (p.data as usize + margin.max(1)).min(p.shards.len())
}

fn live_shards(shared: &Shared, p: &Placement) -> usize {
    p.shards
        .iter()
        .filter(|s| {
            s.holder
                .as_deref()
                .is_some_and(|h| shared.holder_live(h, &s.id))
        })
        .count()
}

/// Repairs block `id` at once (for `fsck --repair`), bounded in time like every repair.
pub(super) async fn repair_now(shared: &Arc<Shared>, id: BlockId) -> Result<(), String> {
    let most = shared.config.read_timeout * 2 + Duration::from_secs(60);
    let outcome = tokio::time::timeout(most, async {
        loop {
            match repair_one(shared, id).await {
                // The checker is at it: wait for it, then look again.
                Outcome::Busy => tokio::time::sleep(Duration::from_millis(50)).await,
                o => return o,
            }
        }
    })
    .await;
    match outcome {
        Ok(Outcome::Repaired) | Ok(Outcome::Gone) | Ok(Outcome::Busy) => Ok(()),
        Ok(Outcome::Short) => Err(
            "too few peers in failure domains the block does not use yet; \
             the repairer places the rest when the pool grows"
                .into(),
        ),
        Ok(Outcome::Retry) => Err("the missing shards could not be rebuilt and placed now; \
             the repairer keeps trying"
            .into()),
        Err(_) => Err("the repair took too long; the repairer keeps trying".into()),
    }
}

async fn repair_one(shared: &Arc<Shared>, id: BlockId) -> Outcome {
    let Some(_claim) = Claim::take(shared, id) else {
        return Outcome::Busy;
    };
    let Some(volume) = shared.volume.upgrade() else {
        return Outcome::Gone;
    };
    let job = match tokio::task::spawn_blocking(move || volume.repair_job(&id)).await {
        Ok(Ok(Some(job))) => job,
        Ok(Ok(None)) | Err(_) => {
            tracing::debug!(target: "bitcloud::pool", block = %id.short(), "not repairing: freed, or still in the upload queue");
            return Outcome::Gone;
        }
        Ok(Err(e)) => {
            tracing::warn!(target: "bitcloud::pool", block = %id.short(), error = %e, "cannot read a block to repair");
            return Outcome::Retry;
        }
    };
    let mut p = job.placement;
    let missing: Vec<usize> = (0..p.shards.len())
        .filter(|&i| {
            !p.shards[i]
                .holder
                .as_deref()
                .is_some_and(|h| shared.holder_live(h, &p.shards[i].id))
        })
        .collect();
    if missing.is_empty() {
        return Outcome::Repaired;
    }
    // The new holders: peers in domains this block's live holders do not use. A holder
    // that lost a shard but answers may take it again (on a pool with no other free
    // domain it is the only place); its weight already counts what it lost.
    let live_holders: Vec<Vec<u8>> = p
        .shards
        .iter()
        .enumerate()
        .filter(|(i, _)| !missing.contains(i))
        .filter_map(|(_, s)| s.holder.clone())
        .collect();
    let free = upload::free_candidates(shared, &live_holders);
    let cands: Vec<Candidate> = free.iter().map(|(_, c)| c.clone()).collect();
    let chosen = rank(&shared.rendezvous_key(&id), &cands, missing.len());
    let too_few_domains = chosen.len() < missing.len();
    if chosen.is_empty() {
        tracing::debug!(target: "bitcloud::pool", block = %id.short(), missing = missing.len(), "no peer can take a rebuilt shard now");
        return Outcome::Short;
    }
    // The sealed block: here, or from any k shards.
    let sealed = match job.sealed {
        Some(s) => s,
        None => match fetch::fetch(shared, &id, &p, job.sealed_len).await {
            Ok(s) => s,
            Err(why) => {
                tracing::warn!(target: "bitcloud::pool", block = %id.short(), why, "cannot read a block to repair it");
                return Outcome::Retry;
            }
        },
    };
    let scheme = Scheme {
        data: p.data as usize,
        parity: p.parity as usize,
    };
    let mut shards =
        match tokio::task::spawn_blocking(move || erasure::encode(scheme, &sealed)).await {
            Ok(Ok(s)) => s,
            _ => return Outcome::Retry,
        };
    let chosen_count = chosen.len();
    let mut puts = JoinSet::new();
    for (&i, ci) in missing.iter().zip(chosen) {
        let bytes = std::mem::take(&mut shards[i]);
        if erasure::shard_id(&bytes) != p.shards[i].id {
            tracing::error!(target: "bitcloud::pool", block = %id.short(), shard = i, "a rebuilt shard does not match its id; not repairing this block");
            return Outcome::Short;
        }
        let peer = free[ci].0;
        let client = shared.node.client.clone();
        let sid = p.shards[i].id;
        puts.spawn(async move { (i, peer, client.put(peer, sid, &bytes).await) });
    }
    let mut surplus = Vec::new();
    let mut rebuilt = 0usize;
    while let Some(r) = puts.join_next().await {
        let Ok((i, peer, result)) = r else { continue };
        match result {
            Ok(()) => {
                let new = peer.to_bytes();
                let old = p.shards[i].holder.replace(new.clone());
                if let Some(old) = old {
                    shared.forget_lost(&p.shards[i].id, &old);
                    if old != new {
                        surplus.push(ShardPlace {
                            id: p.shards[i].id,
                            holder: Some(old),
                        });
                    }
                }
                rebuilt += 1;
            }
            Err(e) => {
                tracing::debug!(target: "bitcloud::pool", block = %id.short(), %peer, error = %e, "rebuilt shard put failed");
            }
        }
    }
    if rebuilt == 0 {
        return Outcome::Retry;
    }
    let Some(volume) = shared.volume.upgrade() else {
        return Outcome::Gone;
    };
    let full = rebuilt == missing.len();
    let record = tokio::task::spawn_blocking(move || volume.record_repair(&id, &p, surplus)).await;
    match record {
        Ok(Ok(true)) => {
            tracing::info!(target: "bitcloud::pool", block = %id.short(), rebuilt, missing = missing.len(), "repaired");
            shared
                .repaired_shards
                .fetch_add(rebuilt as u64, std::sync::atomic::Ordering::Relaxed);
            if full {
                Outcome::Repaired
            } else if too_few_domains && rebuilt == chosen_count {
                Outcome::Short
            } else {
                Outcome::Retry
            }
        }
        Ok(Ok(false)) => Outcome::Gone,
        Ok(Err(e)) => {
            tracing::error!(target: "bitcloud::pool", block = %id.short(), error = %e, "recording a repair failed");
            Outcome::Retry
        }
        Err(_) => Outcome::Gone,
    }
}

/// One repair of a block at a time: held while it runs.
struct Claim<'a> {
    shared: &'a Shared,
    id: BlockId,
}

impl<'a> Claim<'a> {
    fn take(shared: &'a Shared, id: BlockId) -> Option<Claim<'a>> {
        // Not `then_some`: it would build (and drop, releasing the claim of the repair
        // that holds it) a Claim even when the insert fails.
        let fresh = shared.repairing.lock().insert(id);
        fresh.then(|| Claim { shared, id })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.shared.repairing.lock().remove(&self.id);
    }
}

/// How long a peer may stay silent before its shards count as missing, by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// How often the checker walks the placements, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
