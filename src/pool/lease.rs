//! Renewing leases: the owner keeps its shards alive on their holders.
//!
//! A holder keeps a copy for its lease (60 days by default, on its own clock; see
//! [`node::lease`](crate::node::lease)) unless the owner renews it. The renewer walks the
//! placements, groups the shard ids by holder and sends each holder whose renewal is due
//! one `Renew` per [`MAX_IDS`] ids: at the start of every mount (so a volume back from a
//! long absence takes its copies out of the trash first), then every third of the lease the
//! holder granted. Only copies the current placements name are renewed: surplus copies and
//! copies of freed blocks whose release never reached their holder run out by themselves.
//!
//! A renewal doubles as a cheap check: a copy the holder says it does not have is marked
//! lost, and the repairer rebuilds it elsewhere. A holder that does not answer is asked
//! again after a short backoff (its copies have most of a lease left: renewals start at a
//! third of it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::Shared;
use crate::ids::ShardId;
use crate::node::lease::renew_every;
use crate::node::protocol::MAX_IDS;

/// Renewals in flight at once (one holder each).
const IN_FLIGHT: usize = 4;
/// Most time between two looks at what is due.
const LOOK_EVERY: Duration = Duration::from_secs(60);
/// A renewal of a holder that failed is tried again after this long, at first.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// ... and at most this long.
const MAX_RETRY: Duration = Duration::from_secs(600);

/// When each holder is due, and how long after a failure to ask again.
#[derive(Clone, Copy)]
struct Due {
    at: Instant,
    retry: Duration,
}

/// Runs until the pool stops or the volume goes.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut due: HashMap<PeerId, Due> = HashMap::new();
    let mut shortest = Duration::MAX;
    loop {
        if shared.stopping() {
            return;
        }
        let now = Instant::now();
        let Some(by_holder) = shards_by_holder(&shared, &due, now).await else {
            return;
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (peer, ids) in by_holder {
            while tasks.len() >= IN_FLIGHT {
                if let Some(Ok((peer, r))) = tasks.join_next().await {
                    if let Ok(l) = &r {
                        shortest = shortest.min(*l);
                    }
                    settle(&mut due, peer, r);
                }
            }
            let s = shared.clone();
            tasks.spawn(async move { (peer, renew(&s, peer, ids).await) });
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok((peer, r)) = r {
                if let Ok(l) = &r {
                    shortest = shortest.min(*l);
                }
                settle(&mut due, peer, r);
            }
        }
        // Holders that get their first shards later are looked for again within a third
        // of the shortest lease seen (every second while nothing is placed yet).
        let look = if due.is_empty() {
            Duration::from_secs(1)
        } else {
            LOOK_EVERY.min(renew_every(shortest))
        };
        let next = due
            .values()
            .map(|d| d.at)
            .min()
            .unwrap_or(now + look)
            .min(Instant::now() + look);
        tokio::time::sleep_until(next.max(Instant::now() + Duration::from_secs(1)).into()).await;
    }
}

/// The placed shards of every holder that is due (a holder not seen before is due now).
/// `None`: the volume is gone.
async fn shards_by_holder(
    shared: &Arc<Shared>,
    due: &HashMap<PeerId, Due>,
    now: Instant,
) -> Option<HashMap<PeerId, Vec<ShardId>>> {
    let mut out: HashMap<PeerId, Vec<ShardId>> = HashMap::new();
    let mut add = |s: &crate::meta::placement::ShardPlace| {
        let Some(peer) = s.holder.as_deref().and_then(|h| PeerId::from_bytes(h).ok()) else {
            return;
        };
        if due.get(&peer).is_none_or(|d| d.at <= now) {
            out.entry(peer).or_default().push(s.id);
        }
    };
    super::walk_placements(shared, "lease renewal", |page| {
        page.iter().flat_map(|(_, p)| &p.shards).for_each(&mut add);
    })
    .await?;
    // The chunks of the metadata backup too, and the copies of freed blocks a kept backup
    // may still name.
    let volume = shared.volume.upgrade()?;
    let (chunks, held) = tokio::task::spawn_blocking(move || {
        (
            volume.meta_chunks().unwrap_or_default(),
            volume.held_release_shards().unwrap_or_default(),
        )
    })
    .await
    .ok()?;
    chunks
        .iter()
        .flat_map(|(_, c)| &c.placement.shards)
        .chain(&held)
        .for_each(&mut add);
    Some(out)
}

/// Renews `ids` on `peer`: the lease it grants, or why not.
async fn renew(shared: &Shared, peer: PeerId, ids: Vec<ShardId>) -> Result<Duration, String> {
    let mut lease = Duration::MAX;
    let (mut renewed, mut missing) = (0u64, 0u64);
    for chunk in ids.chunks(MAX_IDS) {
        let (granted, held) = shared
            .node
            .client
            .renew(peer, chunk)
            .await
            .map_err(|e| e.to_string())?;
        lease = lease.min(granted);
        for (id, held) in chunk.iter().zip(held) {
            if held {
                renewed += 1;
            } else {
                missing += 1;
                shared.mark_lost(*id, peer);
            }
        }
    }
    if missing > 0 {
        tracing::warn!(target: "bitcloud::pool", %peer, missing, "a holder no longer has shards it stored; they will be rebuilt elsewhere");
    }
    tracing::debug!(target: "bitcloud::pool", %peer, renewed, lease_secs = lease.as_secs(), "leases renewed");
    shared
        .renewed_leases
        .fetch_add(renewed, std::sync::atomic::Ordering::Relaxed);
    Ok(lease)
}

fn settle(due: &mut HashMap<PeerId, Due>, peer: PeerId, r: Result<Duration, String>) {
    let now = Instant::now();
    match r {
        Ok(lease) => {
            due.insert(
                peer,
                Due {
                    at: now + renew_every(lease.min(Duration::from_secs(u32::MAX.into()))),
                    retry: FIRST_RETRY,
                },
            );
        }
        Err(why) => {
            let retry = due.get(&peer).map_or(FIRST_RETRY, |d| d.retry);
            tracing::debug!(target: "bitcloud::pool", %peer, why, retry_secs = retry.as_secs(), "renewing leases failed; asking again later");
            due.insert(
                peer,
                Due {
                    at: now + retry,
                    retry: (retry * 2).min(MAX_RETRY),
                },
            );
        }
    }
}
