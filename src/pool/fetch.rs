//! Reading a block back from the pool.
//!
//! The `k` data shards are asked for first (when all arrive, decoding is a copy), from
//! their holders in the order the peer table prefers (answering, never caught with bad
//! bytes, close). Every shard is checked against its id as it arrives; a wrong one marks
//! its holder (`bad_shards`: it is asked last from now on and gets fewer shards) and
//! another holder is asked. A request outstanding longer than the hedge delay gets one
//! more holder asked alongside it. With `k` good shards the block is decoded; if the
//! deadline (`pool.read_timeout`) passes first, the read fails: never a hang.

use std::time::Duration;

use libp2p::PeerId;
use tokio::task::JoinSet;

use super::Shared;
use crate::ids::BlockId;
use crate::meta::placement::Placement;
use crate::pipeline::erasure::{self, Scheme};

/// A request slower than this gets a hedge (one more holder asked).
const HEDGE_AFTER: Duration = Duration::from_millis(400);

/// The sealed bytes of block `id`.
pub(super) async fn fetch(
    shared: &Shared,
    id: &BlockId,
    placement: &Placement,
    sealed_len: u32,
) -> Result<Vec<u8>, String> {
    let k = placement.data as usize;
    let n = placement.shards.len();
    let scheme = Scheme {
        data: k,
        parity: placement.parity as usize,
    };
    if scheme.total() != n {
        return Err("damaged placement record".into());
    }
    let deadline = tokio::time::Instant::now() + shared.config.read_timeout;
    // Who to ask, in order: data shards first, each group by how well its holder answers.
    let peers = &shared.node.peers;
    let mut order: Vec<(usize, PeerId)> = placement
        .shards
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let peer = PeerId::from_bytes(s.holder.as_deref()?).ok()?;
            Some((i, peer))
        })
        .collect();
    order.sort_by_key(|(i, peer)| {
        let pref = peers.get(peer).map(|s| s.read_order());
        (pref.is_some_and(|p| p.0 || p.1 > 0), *i >= k, pref)
    });
    if order.len() < k {
        return Err(format!(
            "only {} of the {k} shards needed were ever placed",
            order.len()
        ));
    }
    // A holder that could not be reached is asked once more, after the others: a connection
    // that was closing when the stream opened fails the request, the next one redials.
    let mut next: std::collections::VecDeque<(usize, PeerId)> = order.into_iter().collect();
    let mut retried = vec![false; n];
    let mut got: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut good = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut running = JoinSet::new();
    let ask = |running: &mut JoinSet<_>, (i, peer): (usize, PeerId)| {
        let client = shared.node.client.clone();
        let sid = placement.shards[i].id;
        running.spawn(async move { (i, peer, client.get(peer, sid).await) });
    };
    for _ in 0..k {
        if let Some(x) = next.pop_front() {
            ask(&mut running, x);
        }
    }
    loop {
        if good >= k {
            break;
        }
        if running.is_empty() {
            let why = if failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", failures.join("; "))
            };
            return Err(format!(
                "only {good} of the {k} shards needed could be read{why}"
            ));
        }
        let hedge = tokio::time::sleep(HEDGE_AFTER);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                running.abort_all();
                return Err(format!(
                    "only {good} of the {k} shards needed arrived within {} s",
                    shared.config.read_timeout.as_secs_f32()
                ));
            }
            _ = hedge => {
                // Something is slow: ask one more holder alongside.
                if let Some(x) = next.pop_front() {
                    ask(&mut running, x);
                }
            }
            r = running.join_next() => {
                let Some(Ok((i, peer, result))) = r else { continue };
                match result {
                    Ok(bytes) if bytes.len() == placement.shard_len as usize
                        && erasure::shard_id(&bytes) == placement.shards[i].id =>
                    {
                        peers.with(peer, |s| s.good_shards += 1);
                        if got[i].is_none() {
                            got[i] = Some(bytes);
                            good += 1;
                        }
                    }
                    Ok(_) => {
                        tracing::warn!(target: "bitcloud::pool", %peer, block = %id.short(), shard = i, "a peer served a shard with wrong bytes");
                        peers.with(peer, |s| s.bad_shards += 1);
                        shared.mark_lost(placement.shards[i].id, peer);
                        failures.push(format!("{peer}: wrong bytes"));
                        if let Some(x) = next.pop_front() {
                            ask(&mut running, x);
                        }
                    }
                    Err(crate::node::ClientError::Unreachable(why)) if !retried[i] => {
                        retried[i] = true;
                        failures.push(format!("{}: {}", short_peer(&peer), brief(&why)));
                        next.push_back((i, peer));
                        if let Some(x) = next.pop_front() {
                            ask(&mut running, x);
                        }
                    }
                    Err(e) => {
                        if matches!(e, crate::node::ClientError::NotFound) {
                            // It was given this shard and no longer has it.
                            tracing::warn!(target: "bitcloud::pool", %peer, block = %id.short(), shard = i, "a peer lost a shard it stored for us");
                            peers.with(peer, |s| s.lost_shards += 1);
                            shared.mark_lost(placement.shards[i].id, peer);
                        }
                        failures.push(format!("{}: {}", short_peer(&peer), brief(&e.to_string())));
                        if let Some(x) = next.pop_front() {
                            ask(&mut running, x);
                        }
                    }
                }
            }
        }
    }
    running.abort_all();
    let ids: Vec<_> = placement.shards.iter().map(|s| s.id).collect();
    let data_only = got[..k].iter().all(|s| s.is_some());
    if data_only {
        // No decode: the data shards are the sealed block, cut in pieces.
        let mut out = Vec::with_capacity(k * placement.shard_len as usize);
        for s in got.into_iter().take(k) {
            out.extend_from_slice(&s.expect("checked"));
        }
        out.truncate(sealed_len as usize);
        return Ok(out);
    }
    tokio::task::spawn_blocking(move || {
        erasure::decode(scheme, &ids, got, sealed_len as usize).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The first line of an error, cut short: dial errors list every address tried.
fn brief(why: &str) -> String {
    let line = why.lines().next().unwrap_or_default();
    match line.char_indices().nth(100) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

fn short_peer(p: &PeerId) -> String {
    let s = p.to_string();
    s[s.len().saturating_sub(8)..].to_string()
}
