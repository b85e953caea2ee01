//! Audits: holders prove, now and then, that they still have the shards they stored.
//!
//! Every `pool.audit_interval_secs` the auditor samples [`PER_ROUND`] placed shards at
//! random (a random place in the placement table, then one random shard of each block
//! there) and asks each holder for a proof of [`AUDIT_CHUNKS`](crate::node::proof::AUDIT_CHUNKS)
//! random 1 KiB chunks of it, checked against the shard id alone (`node::proof`). The owner
//! stores nothing per challenge. A failed audit (no such shard, or a proof that does not
//! verify) counts against the holder's score and marks the shard lost, which sends its
//! block to the repairer at once. An audit that times out or cannot reach the holder is
//! retried in the next round first (containment: a reboot or a slow link is not a lie);
//! only a second miss in a row counts as a failure, and never marks the shard lost (the
//! repair grace period decides about peers that are away).
//!
//! Cost: with the defaults (16 shards per 10 minutes, 32 chunks each) about 1 MiB of
//! proofs per 10 minutes for the whole volume; a volume of 100,000 blocks on 8 peers sees
//! each shard audited about once a year, while a peer that lost a tenth of its disk is
//! caught within a few rounds (each audit of a damaged shard catches it with 96.6 %).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::task::JoinSet;

use super::Shared;
use crate::ids::{BlockId, ShardId};
use crate::node::ClientError;
use crate::node::proof::{AUDIT_CHUNKS, pick_chunks};

/// Shards audited per round.
pub const PER_ROUND: usize = 16;
/// Audits in flight at once.
const IN_FLIGHT: usize = 4;
/// An audit gives up after this long (and is retried once, next round).
const TIMEOUT: Duration = Duration::from_secs(20);
/// How often a round runs, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);

/// One audit to run.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Target {
    shard: ShardId,
    len: u32,
    peer: PeerId,
}

enum Verdict {
    Passed,
    Failed(&'static str),
    Missed(String),
}

/// Runs until the pool stops or the volume goes.
pub(super) async fn run(shared: Arc<Shared>) {
    // Audits that timed out once: asked again first, counted only if they miss again.
    let mut contained: HashSet<Target> = HashSet::new();
    loop {
        tokio::time::sleep(shared.config.audit_interval).await;
        if shared.stopping() {
            return;
        }
        let Some(volume) = shared.volume.upgrade() else {
            return;
        };
        let sample = tokio::task::spawn_blocking(move || sample(&volume, PER_ROUND)).await;
        let mut targets: Vec<(Target, bool)> = contained.drain().map(|t| (t, true)).collect();
        if let Ok(Ok(found)) = sample {
            targets.extend(found.into_iter().map(|t| (t, false)));
        }
        let mut set = JoinSet::new();
        for (t, retry) in targets {
            while set.len() >= IN_FLIGHT {
                if let Some(Ok((t, retry, v))) = set.join_next().await {
                    settle(&shared, &mut contained, t, retry, v);
                }
            }
            if shared.stopping() {
                return;
            }
            let s = shared.clone();
            set.spawn(async move { (t, retry, audit(&s, t).await) });
        }
        while let Some(r) = set.join_next().await {
            if let Ok((t, retry, v)) = r {
                settle(&shared, &mut contained, t, retry, v);
            }
        }
    }
}

async fn audit(shared: &Shared, t: Target) -> Verdict {
    let chunks = pick_chunks(t.len, AUDIT_CHUNKS);
    let r = tokio::time::timeout(
        TIMEOUT,
        shared.node.client.audit(t.peer, t.shard, t.len, chunks),
    )
    .await;
    match r {
        Ok(Ok(true)) => Verdict::Passed,
        Ok(Ok(false)) => Verdict::Failed("its proof does not verify"),
        Ok(Err(ClientError::NotFound)) => Verdict::Failed("it no longer has the shard"),
        Ok(Err(ClientError::Protocol(why))) => Verdict::Missed(format!("protocol: {why}")),
        Ok(Err(e)) => Verdict::Missed(e.to_string()),
        Err(_) => Verdict::Missed("no answer in time".into()),
    }
}

fn settle(shared: &Shared, contained: &mut HashSet<Target>, t: Target, retry: bool, v: Verdict) {
    let peers = &shared.node.peers;
    match v {
        Verdict::Passed => peers.with(t.peer, |s| s.audits_passed += 1),
        Verdict::Failed(why) => {
            tracing::warn!(target: "bitcloud::pool", peer = %t.peer, shard = %t.shard.to_hex(), why, "a peer failed an audit");
            peers.with(t.peer, |s| s.audits_failed += 1);
            shared.mark_lost(t.shard, t.peer);
        }
        Verdict::Missed(why) if retry => {
            tracing::info!(target: "bitcloud::pool", peer = %t.peer, why, "a peer missed an audit twice in a row");
            peers.with(t.peer, |s| s.audits_failed += 1);
        }
        Verdict::Missed(why) => {
            tracing::debug!(target: "bitcloud::pool", peer = %t.peer, why, "audit missed; asking again next round");
            contained.insert(t);
        }
    }
}

/// Up to `n` placed shards picked at random.
fn sample(volume: &crate::volume::Volume, n: usize) -> crate::volume::Result<Vec<Target>> {
    let mut start = [0u8; 32];
    getrandom::getrandom(&mut start).expect("the OS random source");
    let mut blocks = volume.placements(Some(&BlockId(start)), n)?;
    if blocks.len() < n {
        let more = volume.placements(None, n - blocks.len())?;
        for b in more {
            if !blocks.iter().any(|(id, _)| *id == b.0) {
                blocks.push(b);
            }
        }
    }
    let mut out = Vec::new();
    for (_, p) in blocks {
        let placed: Vec<_> = p
            .shards
            .iter()
            .filter_map(|s| Some((s.id, PeerId::from_bytes(s.holder.as_deref()?).ok()?)))
            .collect();
        if placed.is_empty() {
            continue;
        }
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).expect("the OS random source");
        let (shard, peer) = placed[(u64::from_le_bytes(r) % placed.len() as u64) as usize];
        out.push(Target {
            shard,
            len: p.shard_len,
            peer,
        });
    }
    Ok(out)
}
