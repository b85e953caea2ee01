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
//! tried again only when the pool has more candidates than when it got stuck (which starts
//! a walk at once): repair settles instead of fighting forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::task::JoinSet;

use super::{Shared, fetch, upload};
use crate::ids::BlockId;
use crate::meta::placement::{Placement, ShardPlace};
use crate::node::placement::{Candidate, rank};
use crate::pipeline::erasure::{self, Scheme};

/// Placements read per step of the walk.
const WALK_BATCH: usize = 1024;
/// Blocks repaired at once.
const IN_FLIGHT: usize = 2;
/// Most blocks repaired per round (the rest wait for the next): bounds repair traffic.
const PER_ROUND: usize = 512;
/// How often the checker looks whether a walk is due.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What became of one block.
enum Outcome {
    /// Every missing shard is back (or none was missing).
    Repaired,
    /// Some could not be rebuilt or placed now.
    Short,
    /// The block is gone (freed) or not the checker's business (still uploading).
    Gone,
}

/// Runs until the pool stops or the volume goes.
pub(super) async fn run(shared: Arc<Shared>) {
    // Blocks that could not be brought up, with the candidates there were then.
    let mut stuck: HashMap<BlockId, usize> = HashMap::new();
    let mut last_walk = tokio::time::Instant::now();
    // The last walk found more than one round's worth: the next one starts soon.
    let mut more = false;
    loop {
        // Walk when the interval is up, when a fetch or audit found a lost shard, or when
        // the pool grew while some blocks were stuck for want of peers.
        let kicked = tokio::time::timeout(LOOK_EVERY, shared.repair_kick.notified())
            .await
            .is_ok();
        if shared.stopping() {
            return;
        }
        let grew = !stuck.is_empty() && {
            let peers = upload::candidates(&shared).len();
            stuck.values().any(|&was| peers > was)
        };
        if !kicked && !grew && !more && last_walk.elapsed() < shared.config.repair_interval {
            continue;
        }
        last_walk = tokio::time::Instant::now();
        let Some(volume) = shared.volume.upgrade() else {
            return;
        };
        drop(volume);
        let mut todo = match walk(&shared).await {
            Some(t) => t,
            None => return,
        };
        more = false;
        if todo.is_empty() {
            stuck.clear();
            continue;
        }
        let peers_now = upload::candidates(&shared).len();
        todo.retain(|(_, id)| stuck.get(id).is_none_or(|&c| peers_now > c));
        todo.sort();
        more = todo.len() > PER_ROUND;
        todo.truncate(PER_ROUND);
        if !todo.is_empty() {
            tracing::info!(target: "bitcloud::pool", blocks = todo.len(), most_endangered_live = todo[0].0, "repairing blocks short of shards");
        }
        let mut set = JoinSet::new();
        for (_, id) in todo {
            while set.len() >= IN_FLIGHT {
                if let Some(Ok((id, o))) = set.join_next().await {
                    settle(&mut stuck, id, o, peers_now);
                }
            }
            if shared.stopping() {
                return;
            }
            let s = shared.clone();
            set.spawn(async move { (id, repair_one(&s, id).await) });
        }
        while let Some(r) = set.join_next().await {
            if let Ok((id, o)) = r {
                settle(&mut stuck, id, o, peers_now);
            }
        }
    }
}

fn settle(stuck: &mut HashMap<BlockId, usize>, id: BlockId, o: Outcome, peers: usize) {
    match o {
        Outcome::Repaired | Outcome::Gone => {
            stuck.remove(&id);
        }
        Outcome::Short => {
            stuck.insert(id, peers);
        }
    }
}

/// Every fully placed block below its repair threshold: (live shards, id).
async fn walk(shared: &Arc<Shared>) -> Option<Vec<(usize, BlockId)>> {
    let mut todo = Vec::new();
    let mut cursor: Option<BlockId> = None;
    loop {
        let volume = shared.volume.upgrade()?;
        let after = cursor;
        let batch =
            tokio::task::spawn_blocking(move || volume.placements(after.as_ref(), WALK_BATCH))
                .await
                .ok()?;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(target: "bitcloud::pool", error = %e, "reading placements for repair failed");
                return Some(todo);
            }
        };
        let end = batch.len() < WALK_BATCH;
        cursor = batch.last().map(|(id, _)| *id);
        for (id, p) in batch {
            // Blocks never fully placed are the uploader's.
            if !p.is_full() {
                continue;
            }
            let live = live_shards(shared, &p);
            if live < threshold(shared, &p) {
                todo.push((live, id));
            }
        }
        if end || shared.stopping() {
            return Some(todo);
        }
    }
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

async fn repair_one(shared: &Arc<Shared>, id: BlockId) -> Outcome {
    let Some(volume) = shared.volume.upgrade() else {
        return Outcome::Gone;
    };
    let job = match tokio::task::spawn_blocking(move || volume.repair_job(&id)).await {
        Ok(Ok(Some(job))) => job,
        Ok(Ok(None)) | Err(_) => return Outcome::Gone,
        Ok(Err(e)) => {
            tracing::warn!(target: "bitcloud::pool", block = %id.short(), error = %e, "cannot read a block to repair");
            return Outcome::Short;
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
    let all = upload::candidates(shared);
    let used_domains: Vec<Vec<u8>> = all
        .iter()
        .filter(|(_, c)| live_holders.contains(&c.peer))
        .map(|(_, c)| c.domain.clone())
        .collect();
    let free: Vec<(PeerId, Candidate)> = all
        .into_iter()
        .filter(|(_, c)| !live_holders.contains(&c.peer) && !used_domains.contains(&c.domain))
        .collect();
    let cands: Vec<Candidate> = free.iter().map(|(_, c)| c.clone()).collect();
    let chosen = rank(&shared.rendezvous_key(&id), &cands, missing.len());
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
                return Outcome::Short;
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
            _ => return Outcome::Short,
        };
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
        return Outcome::Short;
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
            } else {
                Outcome::Short
            }
        }
        Ok(Ok(false)) => Outcome::Gone,
        Ok(Err(e)) => {
            tracing::error!(target: "bitcloud::pool", block = %id.short(), error = %e, "recording a repair failed");
            Outcome::Short
        }
        Err(_) => Outcome::Gone,
    }
}

/// How long a peer may stay silent before its shards count as missing, by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// How often the checker walks the placements, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
