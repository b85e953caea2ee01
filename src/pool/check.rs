//! `fsck` with peers: every holder of every shard of a block proves it now, and with
//! `--repair` whatever did not is rebuilt elsewhere at once.
//!
//! The background auditor samples; fsck is the exhaustive pass a user asks for. Each
//! placed shard gets an audit ([`AUDIT_CHUNKS`] random chunks, checked against the shard
//! id), so a copy that rotted on a disk, a holder that deleted it, or one that lies is
//! found. A holder that does not answer within [`TIMEOUT`] counts as missing for this
//! check, whatever `pool.repair_grace_secs` says: the user asked whether the pool holds the
//! block *now*. Failed shards are marked lost (the repairer would get to them too); the
//! re-spread runs the repairer's own code for that one block, at once.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::task::JoinSet;

use super::{Shared, repair};
use crate::ids::BlockId;
use crate::meta::placement::Placement;
use crate::node::ClientError;
use crate::node::proof::{AUDIT_CHUNKS, pick_chunks};
use crate::volume::remote::ShardCheck;

/// An audit of fsck gives up after this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Audits every placed shard of `placement` on its holder, all at once.
pub(super) async fn check_shards(shared: &Arc<Shared>, placement: &Placement) -> Vec<ShardCheck> {
    let mut set = JoinSet::new();
    for (i, s) in placement.shards.iter().enumerate() {
        let Some(peer) = s.holder.as_deref().and_then(|h| PeerId::from_bytes(h).ok()) else {
            continue;
        };
        let (shared, id, len) = (shared.clone(), s.id, placement.shard_len);
        set.spawn(async move {
            let chunks = pick_chunks(len, AUDIT_CHUNKS);
            let r = tokio::time::timeout(
                TIMEOUT,
                shared.node.client.audit(peer, id, len, chunks),
            )
            .await;
            let check = match r {
                Ok(Ok(true)) => {
                    shared.node.peers.with(peer, |p| p.audits_passed += 1);
                    ShardCheck::Good
                }
                Ok(Ok(false)) => ShardCheck::Bad(format!("{peer} sent a proof that does not verify")),
                Ok(Err(ClientError::NotFound)) => {
                    ShardCheck::Bad(format!("{peer} no longer has it"))
                }
                Ok(Err(e)) => ShardCheck::NoAnswer(format!("{peer}: {e}")),
                Err(_) => ShardCheck::NoAnswer(format!("{peer} did not answer in time")),
            };
            if let ShardCheck::Bad(why) = &check {
                tracing::warn!(target: "bitcloud::pool", shard = %id.to_hex(), why, "fsck: a holder failed the audit of a shard");
                shared.node.peers.with(peer, |p| p.audits_failed += 1);
                shared.mark_lost(id, peer);
            }
            (i, check)
        });
    }
    let mut out = vec![ShardCheck::Unplaced; placement.shards.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, c)) = r {
            out[i] = c;
        }
    }
    out
}

/// Rebuilds the shards of `id` at `failed` (indexes into its placement) on other peers now.
pub(super) async fn respread(
    shared: &Arc<Shared>,
    id: BlockId,
    placement: &Placement,
    failed: &[usize],
) -> Result<(), String> {
    // Missing for the repairer from now on, grace or not (a repair forgets the mark of each
    // copy it replaces).
    for &i in failed {
        let s = &placement.shards[i];
        if let Some(peer) = s.holder.as_deref().and_then(|h| PeerId::from_bytes(h).ok()) {
            shared.mark_lost(s.id, peer);
        }
    }
    repair::repair_now(shared, id).await
}
