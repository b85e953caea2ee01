//! The volume's root records in the pool, owner side: reading the records storage peers
//! hold (and with them whether another copy of the volume superseded this one) and giving
//! them ours. See [`backup`](super::backup) for when, and `node::root` for the format.
//!
//! A copy of the volume that finds a newer record of another *instance* (the volume was
//! recovered on another machine with the same identity and node key) stops publishing and
//! releasing for good: its releases would free shards the newer copy names.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::task::JoinSet;

use super::Shared;
use crate::node::root::{self, RootRecord};
use crate::volume::Volume;
use crate::volume::backup::manifest::RootPayload;

/// Time given to each peer asked for (or given) a root record.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the pool's records say to this copy.
pub(super) struct Fence {
    /// Peers that keep root records (older nodes answer that they do not).
    pub keeping: usize,
    /// The sequence to publish next: above every record seen.
    pub next_seq: u64,
    /// This copy's own current record, as the pool holds it (given again at refreshes).
    pub own_record: Option<Vec<u8>>,
    /// This copy was recovered from the newest record and has not published one of its
    /// own: it must, so that a copy left on the lost machine finds itself superseded.
    pub must_publish: bool,
}

/// Reads the root records the pool holds: `Err` if another copy of the volume (another
/// instance) published a newer one than this copy's (which then stops publishing and
/// releasing for good); otherwise what they say.
///
/// At this copy's own sequence, a record of another instance is either the one this copy
/// was recovered from (no record of its own there: it must publish, to claim the volume) or
/// one published at the same time as this copy's own (the later record wins, then the
/// larger instance number; the loser stops).
pub(super) async fn check(shared: &Arc<Shared>, volume: &Arc<Volume>) -> Result<Fence, String> {
    let keys = volume.backup_keys();
    let key = root::keypair(&keys.signing_seed);
    let (mine, instance) = super::backup::blocking(volume, |v| v.backup_seq()).await?;
    let (records, answered, keeping) = records_held(shared, root::locator(&key)).await;
    if answered == 0 {
        // Nothing read is no proof that no other copy published: ask again later.
        return Err("no storage peer answered a request for the volume's root record".into());
    }
    let open = |r: &RootRecord| {
        age::decrypt(&keys.identity, &r.payload)
            .ok()
            .and_then(|p| RootPayload::decode(&p).ok())
    };
    let mut own_at_mine: Option<(RootRecord, RootPayload)> = None;
    let mut others_at_mine: Vec<RootPayload> = Vec::new();
    let mut newest = mine;
    for r in &records {
        newest = newest.max(r.seq);
        let Some(p) = open(r) else { continue };
        let theirs = Some(p.instance) != instance;
        if r.seq > mine && theirs {
            return Err(superseded(shared, r.seq, &p, mine));
        }
        if r.seq == mine && mine > 0 {
            if theirs {
                others_at_mine.push(p);
            } else {
                own_at_mine = Some((r.clone(), p));
            }
        }
    }
    let mut fence = Fence {
        keeping,
        next_seq: newest + 1,
        own_record: None,
        must_publish: false,
    };
    match own_at_mine {
        Some((r, p)) => {
            if let Some(winner) = others_at_mine
                .iter()
                .find(|o| (o.created, o.instance) > (p.created, p.instance))
            {
                return Err(superseded(shared, mine, winner, mine));
            }
            fence.own_record = Some(r.encode());
        }
        // Recovered from that record: publish one of this copy's own.
        None => fence.must_publish = !others_at_mine.is_empty(),
    }
    shared.backup_state.lock().fenced = true;
    Ok(fence)
}

/// Records that another copy of the volume published `seq` (this copy is at `mine`): this
/// copy stops publishing and releasing. Returns the message.
fn superseded(shared: &Shared, seq: u64, theirs: &RootPayload, mine: u64) -> String {
    let why = format!(
        "this volume was recovered on another machine (its backup #{seq} of {} supersedes this copy's #{mine}); this copy no longer publishes its metadata or releases shards: stop using it, or recover it again",
        crate::units::ago(theirs.created),
    );
    tracing::error!(target: "bitcloud::pool", "{why}");
    shared.backup_state.lock().superseded = Some(why.clone());
    why
}

/// Storage peers connected now.
pub(super) fn storage_peers(shared: &Shared) -> Vec<PeerId> {
    shared
        .node
        .pool_peers()
        .into_iter()
        .filter(|(_, s)| s.offered > 0)
        .map(|(p, _)| p)
        .collect()
}

/// The valid records connected storage peers hold for `locator` (one per peer that has
/// one), how many peers answered at all, and how many of those keep root records.
async fn records_held(shared: &Shared, locator: [u8; 32]) -> (Vec<RootRecord>, usize, usize) {
    let mut asks = JoinSet::new();
    for peer in storage_peers(shared) {
        let client = shared.node.client.clone();
        asks.spawn(async move {
            tokio::time::timeout(ASK_TIMEOUT, client.get_root(peer, locator))
                .await
                .ok()
        });
    }
    let (mut out, mut answered, mut keeping) = (Vec::new(), 0, 0);
    while let Some(r) = asks.join_next().await {
        match r {
            Ok(Some(Ok(r))) => {
                answered += 1;
                keeping += 1;
                out.extend(r);
            }
            // An older node: it holds no record, of this copy or another.
            Ok(Some(Err(crate::node::ClientError::Unsupported))) => answered += 1,
            _ => {}
        }
    }
    (out, answered, keeping)
}

/// Gives `record` to every connected storage peer; returns how many keep it, and how many
/// refused it as stale (they hold a newer or conflicting one).
pub(super) async fn give_record(shared: &Shared, record: &[u8]) -> (u64, u64) {
    let mut puts = JoinSet::new();
    for peer in storage_peers(shared) {
        let client = shared.node.client.clone();
        let record = record.to_vec();
        puts.spawn(async move {
            let r = tokio::time::timeout(ASK_TIMEOUT, client.put_root(peer, &record)).await;
            if let Ok(Err(e)) = &r {
                tracing::debug!(target: "bitcloud::pool", %peer, error = %e, "a peer did not take the root record");
            }
            match r {
                Ok(Ok(())) => (1, 0),
                Ok(Err(crate::node::ClientError::Refused(
                    crate::node::protocol::Refusal::Stale,
                ))) => (0, 1),
                _ => (0, 0),
            }
        });
    }
    let (mut held, mut stale) = (0, 0);
    while let Some(r) = puts.join_next().await {
        if let Ok((h, s)) = r {
            held += h;
            stale += s;
        }
    }
    (held, stale)
}
