//! The uploader: drains the volume's upload queue into the pool.
//!
//! For each queued block: Reed-Solomon encode its sealed bytes into `k + m` shards, rank the
//! connected peers that have room by weighted rendezvous hashing (one shard per host), put
//! the shards not yet placed on them in parallel, and record who holds what. A block with
//! every shard placed leaves the queue; one with some missing (too few peers, refusals,
//! timeouts) keeps what was placed, counts as degraded (or local only), and is tried again
//! with backoff, at once when a new peer shows up. Everything the queue holds survives a
//! restart or kill -9: the queue and the placements are rows of the volume's database.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::task::JoinSet;

use super::Shared;
use crate::ids::BlockId;
use crate::meta::placement::{Placement, ShardPlace};
use crate::node::placement::{Candidate, rank};
use crate::pipeline::erasure::{self, Scheme};
use crate::volume::remote::UploadJob;

/// Queue rows read at a time.
const BATCH: usize = 64;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Longest nap when there is nothing to do (a kick wakes it sooner).
const IDLE: Duration = Duration::from_secs(1);

enum Outcome {
    /// Every shard placed.
    Full,
    /// Some placed (or none): try again later.
    Partial,
    /// The block left the queue (freed, or already done).
    Gone,
}

/// Runs until the pool stops or the volume goes. Uploads stay in flight across reads of the
/// queue: a new block starts as soon as one finishes, never after a whole batch.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut retry: HashMap<BlockId, (Instant, Duration)> = HashMap::new();
    let mut running: JoinSet<(BlockId, Outcome)> = JoinSet::new();
    let mut in_flight: HashSet<BlockId> = HashSet::new();
    let mut cursor: Option<BlockId> = None;
    let mut known_peers = 0usize;
    let most = shared.config.uploads_in_flight.max(1);
    loop {
        while let Some(r) = running.try_join_next() {
            if let Ok((id, outcome)) = r {
                in_flight.remove(&id);
                settle(&mut retry, id, outcome);
            }
        }
        if shared.stopping() {
            return;
        }
        let Some(volume) = shared.volume.upgrade() else {
            return;
        };
        // A peer that joined may take what failed before: retry everything now.
        let peers = candidates(&shared).len();
        if peers > known_peers {
            retry.clear();
        }
        known_peers = peers;
        if peers == 0 {
            drop(volume);
            wait_one(&shared, &mut running, &mut in_flight, &mut retry, IDLE).await;
            continue;
        }
        if running.len() >= most {
            drop(volume);
            wait_one(&shared, &mut running, &mut in_flight, &mut retry, IDLE).await;
            continue;
        }
        let after = cursor;
        let ids =
            tokio::task::spawn_blocking(move || volume.upload_queue(after.as_ref(), BATCH)).await;
        let ids = match ids {
            Ok(Ok(ids)) => ids,
            Ok(Err(e)) => {
                tracing::error!(target: "bitcloud::pool", error = %e, "reading the upload queue failed");
                nap(&shared, IDLE).await;
                continue;
            }
            Err(_) => return,
        };
        let end_of_queue = ids.len() < BATCH;
        let now = Instant::now();
        let mut started = 0usize;
        let mut last_seen = None;
        for id in ids {
            if running.len() >= most {
                break;
            }
            last_seen = Some(id);
            if in_flight.contains(&id) || retry.get(&id).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            in_flight.insert(id);
            started += 1;
            let s = shared.clone();
            running.spawn(async move {
                let outcome = upload_one(&s, id).await;
                (id, outcome)
            });
        }
        // Go on from the last row looked at; from the start once the end was reached.
        cursor = if end_of_queue && running.len() < most {
            None
        } else {
            last_seen.or(cursor)
        };
        if started > 0 {
            tracing::debug!(target: "bitcloud::pool", started, in_flight = running.len(), peers, "uploading");
        }
        if started == 0 && (end_of_queue || running.len() >= most) {
            // Nothing more to start now: wait for an upload to finish, a kick, or the next
            // retry to fall due.
            let next = retry
                .values()
                .map(|(at, _)| *at)
                .filter(|at| *at > now)
                .min();
            let wait = next.map_or(IDLE, |at| at.saturating_duration_since(now).min(IDLE));
            wait_one(
                &shared,
                &mut running,
                &mut in_flight,
                &mut retry,
                wait.max(Duration::from_millis(50)),
            )
            .await;
        }
        // Forget backoffs of blocks long gone from the queue.
        if retry.len() > 100_000 {
            retry.retain(|_, (at, _)| *at > now);
        }
    }
}

/// Waits until an upload finishes (and settles it), a kick comes, or `most` passes.
async fn wait_one(
    shared: &Shared,
    running: &mut JoinSet<(BlockId, Outcome)>,
    in_flight: &mut HashSet<BlockId>,
    retry: &mut HashMap<BlockId, (Instant, Duration)>,
    most: Duration,
) {
    if running.is_empty() {
        nap(shared, most).await;
        return;
    }
    tokio::select! {
        r = running.join_next() => {
            if let Some(Ok((id, outcome))) = r {
                in_flight.remove(&id);
                settle(retry, id, outcome);
            }
        }
        _ = nap(shared, most) => {}
    }
}

fn settle(retry: &mut HashMap<BlockId, (Instant, Duration)>, id: BlockId, outcome: Outcome) {
    match outcome {
        Outcome::Full | Outcome::Gone => {
            retry.remove(&id);
        }
        Outcome::Partial => {
            let backoff = retry
                .get(&id)
                .map_or(FIRST_RETRY, |(_, b)| (*b * 2).min(MAX_RETRY));
            retry.insert(id, (Instant::now() + backoff, backoff));
        }
    }
}

async fn nap(shared: &Shared, d: Duration) {
    let _ = tokio::time::timeout(d, shared.kick.notified()).await;
}

/// Candidates outside the peers `holders` and their failure domains: where the missing
/// shards of a block whose other shards sit on `holders` may go.
pub(super) fn free_candidates(shared: &Shared, holders: &[Vec<u8>]) -> Vec<(PeerId, Candidate)> {
    let all = candidates(shared);
    let cands: Vec<Candidate> = all.iter().map(|(_, c)| c.clone()).collect();
    let free = crate::node::placement::free(&cands, holders);
    free.into_iter().map(|i| all[i].clone()).collect()
}

/// Peers that may receive shards now, as placement candidates.
pub(super) fn candidates(shared: &Shared) -> Vec<(PeerId, Candidate)> {
    shared
        .node
        .pool_peers()
        .into_iter()
        .map(|(peer, s)| {
            let c = Candidate {
                peer: peer.to_bytes(),
                domain: s.domain(&peer),
                weight: s.weight(),
            };
            (peer, c)
        })
        .filter(|(_, c)| c.weight > 0.0)
        .collect()
}

async fn upload_one(shared: &Arc<Shared>, id: BlockId) -> Outcome {
    let Some(volume) = shared.volume.upgrade() else {
        return Outcome::Gone;
    };
    let job = match tokio::task::spawn_blocking(move || volume.upload_job(&id)).await {
        Ok(Ok(Some(job))) => job,
        Ok(Ok(None)) => return Outcome::Gone,
        Ok(Err(e)) => {
            tracing::warn!(target: "bitcloud::pool", block = %id.short(), error = %e, "cannot read a block to upload");
            return Outcome::Partial;
        }
        Err(_) => return Outcome::Gone,
    };
    let UploadJob {
        id,
        sealed,
        placement,
        scheme,
    } = job;
    let (data, parity) = placement.as_ref().map_or(scheme, |p| (p.data, p.parity));
    let sealed_len = sealed.len();
    let mut shards = match tokio::task::spawn_blocking(move || {
        erasure::encode(
            Scheme {
                data: data as usize,
                parity: parity as usize,
            },
            &sealed,
        )
    })
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::error!(target: "bitcloud::pool", block = %id.short(), error = %e, "erasure coding failed");
            return Outcome::Partial;
        }
        Err(_) => return Outcome::Gone,
    };
    let ids: Vec<_> = shards.iter().map(|s| erasure::shard_id(s)).collect();
    let shard_len = Scheme {
        data: data as usize,
        parity: parity as usize,
    }
    .shard_len(sealed_len) as u32;
    // Keep what is placed, if it is this very encoding (it always is: encoding is
    // deterministic; anything else is started afresh).
    let mut p = match placement {
        Some(p)
            if p.shard_len == shard_len
                && p.shards.iter().map(|s| s.id).eq(ids.iter().copied()) =>
        {
            p
        }
        _ => Placement {
            data,
            parity,
            shard_len,
            shards: ids
                .iter()
                .map(|id| ShardPlace {
                    id: *id,
                    holder: None,
                })
                .collect(),
        },
    };
    let placed_now = put_unplaced(shared, &id, &mut shards, &mut p, &mut HashSet::new()).await;
    let full = p.is_full();
    if placed_now == 0 && !full {
        return Outcome::Partial; // nothing new to record
    }
    let Some(volume) = shared.volume.upgrade() else {
        return Outcome::Gone;
    };
    let recorded =
        tokio::task::spawn_blocking(move || volume.record_placement(&id, &p, full)).await;
    match recorded {
        Ok(Ok(true)) if full => Outcome::Full,
        Ok(Ok(true)) => Outcome::Partial,
        Ok(Ok(false)) => Outcome::Gone,
        Ok(Err(e)) => {
            tracing::error!(target: "bitcloud::pool", block = %id.short(), error = %e, "recording a placement failed");
            Outcome::Partial
        }
        Err(_) => Outcome::Gone,
    }
}

/// Puts the shards of `p` that have no holder yet (`shards[i]` is shard `i`'s bytes; those
/// put are taken) on free peers, one per failure domain the block does not use yet and
/// none in `avoid`, and records who took them; a peer whose put fails joins `avoid`.
/// Returns how many were placed now.
pub(super) async fn put_unplaced(
    shared: &Arc<Shared>,
    id: &BlockId,
    shards: &mut [Vec<u8>],
    p: &mut Placement,
    avoid: &mut HashSet<PeerId>,
) -> usize {
    let id = *id;
    let mut placed_now = 0;
    let unplaced: Vec<usize> = (0..p.shards.len())
        .filter(|&i| p.shards[i].holder.is_none())
        .collect();
    if unplaced.is_empty() {
        return 0;
    }
    // Peers (and hosts) that already hold a shard of this block take no other.
    let holders: Vec<Vec<u8>> = p.shards.iter().filter_map(|s| s.holder.clone()).collect();
    let mut free = free_candidates(shared, &holders);
    free.retain(|(peer, _)| !avoid.contains(peer));
    let cands: Vec<Candidate> = free.iter().map(|(_, c)| c.clone()).collect();
    let chosen = rank(&shared.rendezvous_key(&id), &cands, unplaced.len());
    tracing::debug!(target: "bitcloud::pool", block = %id.short(), unplaced = unplaced.len(), candidates = cands.len(), chosen = chosen.len(), "placing shards");
    let mut puts = JoinSet::new();
    for (slot, ci) in unplaced.iter().zip(chosen) {
        let peer = free[ci].0;
        let client = shared.node.client.clone();
        let bytes = std::mem::take(&mut shards[*slot]);
        let sid = p.shards[*slot].id;
        let i = *slot;
        puts.spawn(async move {
            let r = client.put(peer, sid, &bytes).await;
            (i, peer, r, bytes)
        });
    }
    while let Some(r) = puts.join_next().await {
        let Ok((i, peer, result, bytes)) = r else {
            continue;
        };
        match result {
            Ok(()) => {
                p.shards[i].holder = Some(peer.to_bytes());
                placed_now += 1;
            }
            Err(e) => {
                // Kept for another try, elsewhere.
                shards[i] = bytes;
                avoid.insert(peer);
                tracing::debug!(target: "bitcloud::pool", block = %id.short(), %peer, error = %e, "shard put failed");
                if let crate::node::ClientError::Refused(r) = e
                    && matches!(
                        r,
                        crate::node::protocol::Refusal::OfferFull
                            | crate::node::protocol::Refusal::DiskFull
                    )
                {
                    // No room there: no more shards until its next Info says otherwise.
                    shared.node.peers.with(peer, |s| s.used = s.offered);
                }
            }
        }
    }
    placed_now
}

/// Erasure-codes `sealed` and places all its shards anew (a few rounds for those that
/// fail). Returns the placement, as far as it got.
pub(super) async fn place_new(
    shared: &Arc<Shared>,
    id: &BlockId,
    sealed: Vec<u8>,
    (data, parity): (u8, u8),
) -> Result<Placement, String> {
    let scheme = Scheme {
        data: data as usize,
        parity: parity as usize,
    };
    let sealed_len = sealed.len();
    let mut shards = tokio::task::spawn_blocking(move || erasure::encode(scheme, &sealed))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut p = Placement {
        data,
        parity,
        shard_len: scheme.shard_len(sealed_len) as u32,
        shards: shards
            .iter()
            .map(|s| ShardPlace {
                id: erasure::shard_id(s),
                holder: None,
            })
            .collect(),
    };
    let mut avoid = HashSet::new();
    for round in 0..3u32 {
        put_unplaced(shared, id, &mut shards, &mut p, &mut avoid).await;
        if p.is_full() || shared.stopping() {
            break;
        }
        tokio::time::sleep(FIRST_RETRY * (round + 1)).await;
    }
    Ok(p)
}
