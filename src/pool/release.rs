//! Releasing the shards of collected blocks on the peers that hold them. A block leaves
//! the release queue once every holder has answered a release (releasing what a node no
//! longer has is harmless, so retries are safe). Holders that cannot be reached are tried
//! again later: a node that comes back gives up its surplus. The queue is read in turns
//! (each batch after the last), so rows waiting for a holder that is away do not hold up
//! the rest. A holder that never comes back keeps a row here (tens of bytes per shard);
//! its copy is no longer renewed, so the node deletes it by itself when the lease runs out
//! (see [`lease`](super::lease)).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;

use super::Shared;
use crate::ids::{BlockId, ShardId};
use crate::node::protocol::MAX_IDS;

const BATCH: usize = 512;
const EVERY: Duration = Duration::from_secs(5);

pub(super) async fn run(shared: Arc<Shared>) {
    let mut after: Option<BlockId> = None;
    loop {
        if shared.stopping() {
            return;
        }
        let fence = {
            let st = shared.backup_state.lock();
            st.fenced && st.superseded.is_none()
        };
        if !fence {
            // Not yet known that no other copy of the volume (recovered elsewhere with this
            // node key) uses these shards, or known that one does.
            tokio::time::sleep(EVERY).await;
            continue;
        }
        let Some(volume) = shared.volume.upgrade() else {
            return;
        };
        let from = after;
        let batch =
            tokio::task::spawn_blocking(move || volume.release_batch(from.as_ref(), BATCH)).await;
        let page = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!(target: "bitcloud::pool", error = %e, "reading the release queue failed");
                Default::default()
            }
            Err(_) => return,
        };
        // The next turn starts after this batch, or from the start once the end is reached.
        after = page.next;
        let batch = page.rows;
        if !batch.is_empty() {
            release(&shared, batch).await;
        }
        tokio::time::sleep(EVERY).await;
    }
}

async fn release(shared: &Shared, batch: Vec<(BlockId, Vec<crate::meta::placement::ShardPlace>)>) {
    // Per holder: the shards to release, and the blocks they belong to.
    let mut by_peer: HashMap<PeerId, Vec<(ShardId, BlockId)>> = HashMap::new();
    let mut unreadable_holders: Vec<BlockId> = Vec::new();
    for (block, shards) in &batch {
        for s in shards {
            let Some(h) = &s.holder else { continue };
            match PeerId::from_bytes(h) {
                Ok(peer) => by_peer.entry(peer).or_default().push((s.id, *block)),
                Err(_) => unreadable_holders.push(*block),
            }
        }
    }
    let mut failed: std::collections::HashSet<BlockId> = std::collections::HashSet::new();
    for (peer, shards) in by_peer {
        for chunk in shards.chunks(MAX_IDS) {
            let ids: Vec<ShardId> = chunk.iter().map(|(s, _)| *s).collect();
            if let Err(e) = shared.node.client.release(peer, &ids).await {
                tracing::debug!(target: "bitcloud::pool", %peer, error = %e, "release failed; will retry");
                failed.extend(chunk.iter().map(|(_, b)| *b));
            }
        }
    }
    let done: Vec<BlockId> = batch
        .iter()
        .map(|(b, _)| *b)
        .filter(|b| !failed.contains(b))
        .collect();
    if unreadable_holders.is_empty() && done.is_empty() {
        return;
    }
    let Some(volume) = shared.volume.upgrade() else {
        return;
    };
    let _ = tokio::task::spawn_blocking(move || volume.forget_released(&done)).await;
}
