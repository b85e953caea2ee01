//! Bringing a volume's metadata back from the pool (`bitcloud recover` on a new machine,
//! with the identity file alone): find the newest root record any peer holds for the
//! volume's root key, decrypt it, and fetch the manifest and every chunk it lists, each
//! verified against its id. See [`backup`](super::backup) for how they got there.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::Shared;
use crate::ids::BlockId;
use crate::keys::VolumeKeys;
use crate::meta::placement::Placement;
use crate::node::NodeHandle;
use crate::node::root::{self, RootRecord};
use crate::volume::backup::manifest::{ChunkRef, Manifest, RootPayload};
use crate::volume::backup::open_chunk;

/// Chunks fetched at once.
const IN_FLIGHT: usize = 4;
/// How long the set of peers must stay the same before the search for the root ends.
const SETTLED: Duration = Duration::from_secs(3);

/// The newest root record found, and how the search went.
pub struct Found {
    pub record: RootRecord,
    pub payload: RootPayload,
    /// Peers asked, and how many of them hold the newest record.
    pub asked: usize,
    pub holding: usize,
}

/// A pool side with no volume, for fetching before there is one.
pub(crate) fn detached(node: NodeHandle, read_timeout: Duration) -> Arc<Shared> {
    Shared::new(
        std::sync::Weak::new(),
        node,
        super::PoolConfig {
            read_timeout,
            ..Default::default()
        },
        [0; 32],
    )
}

/// Asks every storage peer for the volume's root record until `within` has passed or the
/// peers connected have stayed the same for a while after the first answered, and decrypts
/// the newest valid one. `progress` hears what is going on.
pub async fn find_root(
    node: &NodeHandle,
    keys: &VolumeKeys,
    within: Duration,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Found, String> {
    let locator = root::locator(&root::keypair(&keys.signing_seed));
    let deadline = tokio::time::Instant::now() + within;
    let mut asked: std::collections::HashMap<libp2p::PeerId, Option<RootRecord>> =
        Default::default();
    let mut last_change = tokio::time::Instant::now();
    loop {
        let peers: Vec<_> = node.pool_peers().into_iter().map(|(p, _)| p).collect();
        let fresh: Vec<_> = peers
            .iter()
            .filter(|p| !asked.contains_key(p))
            .copied()
            .collect();
        if !fresh.is_empty() {
            last_change = tokio::time::Instant::now();
            let mut asks = JoinSet::new();
            for peer in fresh {
                let client = node.client.clone();
                asks.spawn(async move {
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        client.get_root(peer, locator),
                    )
                    .await;
                    (peer, r.ok().and_then(|r| r.ok()).flatten())
                });
            }
            while let Some(r) = asks.join_next().await {
                if let Ok((peer, r)) = r {
                    asked.insert(peer, r);
                }
            }
            let holding = asked.values().filter(|r| r.is_some()).count();
            progress(format!(
                "asked {} peers for the volume's root record; {holding} have one",
                asked.len()
            ));
        }
        let any = asked.values().any(|r| r.is_some());
        let now = tokio::time::Instant::now();
        if now >= deadline || (any && now.duration_since(last_change) >= SETTLED) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let newest = asked
        .values()
        .flatten()
        .max_by_key(|r| r.seq)
        .cloned()
        .ok_or_else(|| {
            if asked.is_empty() {
                format!(
                    "no storage peer could be reached within {} s: give a peer's address with --peer (`bitcloud status` on any node of the pool shows it)",
                    within.as_secs()
                )
            } else {
                format!(
                    "none of the {} peers reached holds a root record of this volume: is this the identity of a volume that used this pool (and published its metadata, see `status` there)?",
                    asked.len()
                )
            }
        })?;
    let holding = asked
        .values()
        .flatten()
        .filter(|r| r.seq == newest.seq)
        .count();
    let plain = age::decrypt(&keys.identity, &newest.payload).map_err(|e| {
        format!("the volume's root record does not decrypt with this identity ({e})")
    })?;
    let payload = RootPayload::decode(&plain).map_err(|e| e.to_string())?;
    Ok(Found {
        record: newest,
        payload,
        asked: asked.len(),
        holding,
    })
}

/// Fetches one chunk (or the manifest) and checks it.
async fn fetch_chunk(shared: &Shared, keys: &VolumeKeys, c: &ChunkRef) -> Result<Vec<u8>, String> {
    let sealed = super::fetch::fetch(shared, &c.id, &c.placement, c.sealed_len).await?;
    let plain = open_chunk(keys, c.id, &sealed)?;
    if plain.len() != c.plain_len as usize {
        return Err("a chunk has the wrong length".into());
    }
    Ok(plain)
}

/// Fetches the manifest the payload names and checks it belongs to this volume.
pub(crate) async fn fetch_manifest(
    shared: &Shared,
    keys: &VolumeKeys,
    payload: &RootPayload,
) -> Result<Manifest, String> {
    let plain = fetch_chunk(shared, keys, &payload.manifest)
        .await
        .map_err(|e| format!("fetching the backup's manifest: {e}"))?;
    let m = Manifest::decode(&plain).map_err(|e| e.to_string())?;
    if m.volume_id != keys.volume_id || m.instance != payload.instance {
        return Err("the manifest belongs to another volume".into());
    }
    Ok(m)
}

/// Fetches every chunk of `manifest`, a few at once, and hands them to `each` in order.
pub(crate) async fn fetch_chunks(
    shared: &Arc<Shared>,
    keys: &Arc<VolumeKeys>,
    manifest: &Manifest,
    each: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), String> {
    let mut running: JoinSet<(usize, Result<Vec<u8>, String>)> = JoinSet::new();
    let mut ready: std::collections::BTreeMap<usize, Vec<u8>> = Default::default();
    let mut next_out = 0usize;
    let mut next_in = 0usize;
    let n = manifest.chunks.len();
    while next_out < n {
        while next_in < n && running.len() < IN_FLIGHT && ready.len() < 2 * IN_FLIGHT {
            let (s, k, c) = (
                shared.clone(),
                keys.clone(),
                manifest.chunks[next_in].clone(),
            );
            let i = next_in;
            running.spawn(async move { (i, fetch_chunk(&s, &k, &c).await) });
            next_in += 1;
        }
        if let Some(piece) = ready.remove(&next_out) {
            each.send(piece)
                .await
                .map_err(|_| "the restore stopped".to_string())?;
            next_out += 1;
            continue;
        }
        match running.join_next().await {
            Some(Ok((i, Ok(p)))) => {
                ready.insert(i, p);
            }
            Some(Ok((i, Err(e)))) => {
                return Err(format!(
                    "fetching chunk {} of {n} of the backup: {e}",
                    i + 1
                ));
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("a chunk of the backup went missing".into()),
        }
    }
    Ok(())
}

/// The chunks a restored volume must keep track of (so it renews them, and releases
/// them once newer backups replace them): every chunk and the manifest.
pub fn chunk_rows(
    manifest: &Manifest,
    payload: &RootPayload,
) -> Vec<(BlockId, u32, u32, Placement)> {
    manifest
        .chunks
        .iter()
        .chain(std::iter::once(&payload.manifest))
        .map(|c| (c.id, c.plain_len, c.sealed_len, c.placement.clone()))
        .collect()
}
