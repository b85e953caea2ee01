//! Serving the shard protocol: every inbound stream is one request, answered from the
//! node's [`ShardStore`]. The accept loop only hands streams to tasks (libp2p-stream drops
//! inbound streams while nobody is waiting for them), and the tasks are bounded: at most
//! [`PER_PEER`] at once per peer and [`TOTAL`] in all; past that a request is answered
//! `Busy` at once. A request past the peer's own bound is a flood and counts against it
//! (`PeerState::floods`); a peer whose score falls below the ban line that way, or any
//! other, gets no answer at all. A malformed request ends its stream and counts against the
//! peer.

use std::collections::HashMap;
use std::sync::Arc;

use libp2p::futures::StreamExt;
use libp2p::{PeerId, Stream};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::peers::Peers;
use super::protocol::{Refusal, Request, Response, have_bits};
use super::root_store::{RootPut, RootStore};
use super::shard_store::{PutOutcome, ShardStore};
use super::wire::{self, WireError};

/// Requests served at once for one peer.
pub(super) const PER_PEER: usize = 8;
/// Requests served at once in all.
const TOTAL: usize = 64;

/// What a node keeps for others: both `None` for a node that holds nothing (a mount without
/// an offer), which answers puts with `OfferFull`.
#[derive(Clone)]
pub(super) struct Stores {
    pub shards: Option<Arc<ShardStore>>,
    pub roots: Option<Arc<RootStore>>,
}

/// Serves `incoming` streams until it ends.
pub(super) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    stores: Stores,
    peers: Arc<Peers>,
    allow: Option<Arc<std::collections::HashSet<PeerId>>>,
) {
    let total = Arc::new(Semaphore::new(TOTAL));
    let per_peer: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>> = Arc::default();
    let flip = fault_flip();
    while let Some((peer, stream)) = incoming.next().await {
        if allow.as_ref().is_some_and(|a| !a.contains(&peer))
            || peers.get(&peer).is_some_and(|s| s.banned())
        {
            // Not a member of this private pool, or banned: no answer at all.
            drop(stream);
            continue;
        }
        let mut stream = stream;
        let sem = per_peer
            .lock()
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(PER_PEER)))
            .clone();
        let (permit_peer, permit_total) =
            match (sem.try_acquire_owned(), total.clone().try_acquire_owned()) {
                (Ok(a), Ok(b)) => (a, b),
                (own, _) => {
                    // Over the bounds: answer Busy without reading on (in its own task, so the
                    // accept loop never waits on a peer). Over its own bound, it floods.
                    if own.is_err() {
                        peers.with(peer, |s| s.floods += 1);
                    }
                    tokio::spawn(async move {
                        let _ = wire::write_all(
                            &mut stream,
                            &Response::Refused(Refusal::Busy).encode(),
                        )
                        .await;
                        let _ = wire::close(&mut stream).await;
                    });
                    continue;
                }
            };
        let (stores, peers) = (stores.clone(), peers.clone());
        tokio::spawn(async move {
            let _permits = (permit_peer, permit_total);
            if let Err(e) = handle(peer, &mut stream, stores, flip).await {
                tracing::debug!(target: "bitcloud::node", %peer, error = %e, "shard request failed");
                if matches!(e, WireError::Frame(_)) {
                    peers.with(peer, |s| s.bad_messages += 1);
                }
            }
        });
    }
}

/// Fault injection for tests of a lying node: with `BITCLOUD_FAULT_FLIP_SERVED=1` this node
/// flips one byte of every shard and proof it sends (and says so in its log at start).
/// Owners must catch every such byte; nothing else changes.
fn fault_flip() -> bool {
    let on = std::env::var_os("BITCLOUD_FAULT_FLIP_SERVED").is_some_and(|v| v == "1");
    if on {
        tracing::warn!(target: "bitcloud::node", "fault injection: every shard and proof this node serves has a flipped byte (BITCLOUD_FAULT_FLIP_SERVED=1)");
    }
    on
}

fn flipped(mut bytes: Vec<u8>, flip: bool) -> Vec<u8> {
    if flip && !bytes.is_empty() {
        let i = bytes.len() / 2;
        bytes[i] ^= 0x01;
    }
    bytes
}

async fn handle(
    peer: PeerId,
    stream: &mut Stream,
    stores: Stores,
    flip: bool,
) -> Result<(), WireError> {
    let Stores {
        shards: store,
        roots,
    } = stores;
    let frame = wire::read_frame(stream).await?;
    let Some(request) = Request::decode(&frame)? else {
        wire::write_all(stream, &Response::Unsupported.encode()).await?;
        return wire::close(stream).await;
    };
    let owner = peer.to_bytes();
    let blocking = |f: Box<dyn FnOnce() -> Response + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or(Response::Refused(Refusal::Busy))
    };
    let response = match (request, store) {
        (Request::PutRoot { record }, store) => match roots {
            None => Response::Refused(Refusal::OfferFull),
            Some(roots) => {
                let may_add = store.as_ref().is_some_and(|s| s.used_by(&owner) > 0);
                blocking(Box::new(move || {
                    match roots.put(&owner, &record, super::lease::now_secs(), may_add) {
                        Ok(RootPut::Stored) => Response::Stored,
                        Ok(RootPut::Refused(r)) => Response::Refused(r),
                        Err(e) => {
                            tracing::error!(target: "bitcloud::node", error = %e, "storing a root record failed");
                            Response::Refused(Refusal::DiskFull)
                        }
                    }
                }))
                .await
            }
        },
        (Request::GetRoot { locator }, _) => match roots.and_then(|r| r.get(&locator)) {
            Some(record) => Response::Root { record },
            None => Response::NotFound,
        },
        (Request::Put { len, .. }, _) if len > super::protocol::MAX_SHARD => {
            Response::Refused(Refusal::TooBig)
        }
        (Request::Put { .. }, None) => Response::Refused(Refusal::OfferFull),
        (Request::Put { id, len }, Some(store)) => {
            // Refuse before reading the body when it cannot fit.
            if store.used() + u64::from(len) > store.offered() {
                Response::Refused(Refusal::OfferFull)
            } else {
                let body = wire::read_body(stream, len).await?;
                blocking(Box::new(move || match store.put(&owner, &id, &body) {
                    Ok(PutOutcome::Stored) => Response::Stored,
                    Ok(PutOutcome::Refused(r)) => Response::Refused(r),
                    Err(e) => {
                        tracing::error!(target: "bitcloud::node", error = %e, "storing a shard failed");
                        Response::Refused(Refusal::DiskFull)
                    }
                }))
                .await
            }
        }
        (Request::Get { .. }, None) => Response::NotFound,
        (Request::Get { id }, Some(store)) => {
            let got = tokio::task::spawn_blocking(move || store.get(&id)).await;
            match got {
                Ok(Ok(Some(bytes))) => {
                    let bytes = flipped(bytes, flip);
                    wire::write_all(stream, &Response::Shard { len: bytes.len() as u32 }.encode())
                        .await?;
                    wire::write_all(stream, &bytes).await?;
                    return wire::close(stream).await;
                }
                Ok(Ok(None)) => Response::NotFound,
                Ok(Err(e)) => {
                    tracing::error!(target: "bitcloud::node", error = %e, "reading a shard failed");
                    Response::NotFound
                }
                Err(_) => Response::Refused(Refusal::Busy),
            }
        }
        (Request::Has { ids }, store) => {
            let n = ids.len();
            let held = store.map(|s| s.has(&owner, &ids)).unwrap_or_else(|| vec![false; n]);
            Response::Have {
                bits: have_bits(held.into_iter(), n),
            }
        }
        (Request::Release { .. }, None) => Response::Released { count: 0 },
        (Request::Release { ids }, Some(store)) => {
            blocking(Box::new(move || match store.release(&owner, &ids) {
                Ok(count) => Response::Released { count },
                Err(e) => {
                    tracing::error!(target: "bitcloud::node", error = %e, "releasing shards failed");
                    Response::Released { count: 0 }
                }
            }))
            .await
        }
        (Request::Renew { ids }, None) => Response::Renewed {
            lease_secs: 0,
            bits: have_bits(std::iter::empty(), ids.len()),
        },
        (Request::Renew { ids }, Some(store)) => {
            blocking(Box::new(move || {
                let n = ids.len();
                let lease_secs = store.terms().lease.as_secs().min(u64::from(u32::MAX)) as u32;
                match store.renew(&owner, &ids) {
                    Ok(held) => Response::Renewed {
                        lease_secs,
                        bits: have_bits(held.into_iter(), n),
                    },
                    Err(e) => {
                        tracing::error!(target: "bitcloud::node", error = %e, "renewing leases failed");
                        Response::Refused(Refusal::Busy)
                    }
                }
            }))
            .await
        }
        (Request::Audit { .. }, None) => Response::NotFound,
        (Request::Audit { id, chunks }, Some(store)) => {
            // The asker's own copy, verified whole (a damaged copy is quarantined and
            // reported missing), then the chunks asked for with their Merkle paths.
            let proved = tokio::task::spawn_blocking(move || {
                if !store.has(&owner, &[id]).first().copied().unwrap_or(false) {
                    return Ok(None);
                }
                match store.get(&id)? {
                    Some(bytes) => Ok(Some(super::proof::prove(&bytes, &chunks))),
                    None => Ok(None),
                }
            })
            .await;
            match proved {
                Ok(Ok(Some(Ok(proof)))) => {
                    let proof = flipped(proof, flip);
                    wire::write_all(stream, &Response::Proof { len: proof.len() as u32 }.encode())
                        .await?;
                    wire::write_all(stream, &proof).await?;
                    return wire::close(stream).await;
                }
                Ok(Ok(Some(Err(e)))) => {
                    tracing::warn!(target: "bitcloud::node", error = %e, "cannot prove a shard");
                    Response::NotFound
                }
                Ok(Ok(None)) => Response::NotFound,
                Ok(Err::<_, super::shard_store::ShardStoreError>(e)) => {
                    tracing::error!(target: "bitcloud::node", error = %e, "reading a shard to audit failed");
                    Response::NotFound
                }
                Err(_) => Response::Refused(Refusal::Busy),
            }
        }
        (Request::Info, store) => Response::Info {
            offered: store.as_ref().map_or(0, |s| s.offered()),
            used: store.as_ref().map_or(0, |s| s.used()),
            used_by_asker: store.as_ref().map_or(0, |s| s.used_by(&owner)),
        },
    };
    wire::write_all(stream, &response.encode()).await?;
    wire::close(stream).await
}
