//! Asking another node: one shard-protocol request per stream, each bounded in time (opening
//! the stream, every frame, and every piece of a body) and in size. Every outcome is
//! recorded in the [`Peers`] table, so placement and reads learn which peers answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{PeerId, Stream};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::behaviour::SHARD_PROTOCOL;
use super::peers::Peers;
use super::protocol::{Refusal, Request, Response, has_bit};
use super::wire::{self, WireError};
use crate::ids::ShardId;

/// Time to get a stream to a peer (dialing if needed).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight to one peer from this node: below what a node serves at once per
/// peer (`server::PER_PEER`), so a node with one owner never answers `Busy`.
const PER_PEER: usize = 6;
/// Times a request is sent again after its stream was dropped unanswered.
const DROPPED_RETRIES: u32 = 4;

/// Why a request to a peer did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the peer: {0}")]
    Unreachable(String),
    #[error("the peer did not answer in time")]
    Timeout,
    #[error("the peer refused: {0}")]
    Refused(Refusal),
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("the peer does not have the shard")]
    NotFound,
    /// An older node that does not know the request (not its fault).
    #[error("the peer does not support this request (an older bitcloud)")]
    Unsupported,
}

impl ClientError {
    /// Whether the peer itself misbehaved (as opposed to being away or busy).
    pub fn is_misbehaviour(&self) -> bool {
        matches!(self, ClientError::Protocol(_))
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Timeout => ClientError::Timeout,
            WireError::Io(e) => ClientError::Unreachable(e.to_string()),
            WireError::Frame(f) => ClientError::Protocol(f.to_string()),
        }
    }
}

/// A handle for making requests; cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub(super) control: libp2p_stream::Control,
    pub(super) peers: Arc<Peers>,
    pub(super) slots: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>>,
}

impl Client {
    /// A request slot for `peer` (waits while [`PER_PEER`] are in flight).
    async fn slot(&self, peer: PeerId) -> tokio::sync::OwnedSemaphorePermit {
        let sem = self
            .slots
            .lock()
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(PER_PEER)))
            .clone();
        sem.acquire_owned().await.expect("never closed")
    }

    async fn open(&self, peer: PeerId) -> Result<Stream, ClientError> {
        let mut control = self.control.clone();
        match tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, SHARD_PROTOCOL)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ClientError::Unreachable(e.to_string())),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Sends `req` (and `body` after it), returns the response and the stream (for a body
    /// that follows it).
    ///
    /// A node drops an inbound stream it cannot take at once (libp2p-stream hands streams
    /// over one at a time and drops the rest), which the asker sees as a stream that closes
    /// before any answer. Every request is idempotent (a put of a shard held is `Stored`), so
    /// such a request is sent again on a new stream, a few times, at once.
    async fn ask(
        &self,
        peer: PeerId,
        req: &Request,
        body: Option<&[u8]>,
    ) -> Result<(Response, Stream), ClientError> {
        let mut attempt = 0u32;
        loop {
            let mut s = self.open(peer).await?;
            match Self::exchange(&mut s, req, body).await {
                Ok(resp) => return Ok((resp, s)),
                Err(WireError::Io(e)) if attempt < DROPPED_RETRIES => {
                    attempt += 1;
                    tracing::trace!(target: "bitcloud::node", %peer, attempt, error = %e, "stream dropped before an answer; asking again");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn exchange(
        s: &mut Stream,
        req: &Request,
        body: Option<&[u8]>,
    ) -> Result<Response, WireError> {
        wire::write_all(s, &req.encode()).await?;
        if let Some(b) = body {
            wire::write_all(s, b).await?;
        }
        wire::close(s).await?;
        let frame = wire::read_frame(s).await?;
        Ok(Response::decode(&frame)?)
    }

    /// Records the outcome against the peer.
    fn note<T>(&self, peer: PeerId, r: Result<T, ClientError>) -> Result<T, ClientError> {
        match &r {
            Ok(_)
            | Err(ClientError::NotFound)
            | Err(ClientError::Refused(_))
            | Err(ClientError::Unsupported) => self.peers.answered(peer, true),
            Err(e) => {
                self.peers.answered(peer, false);
                if e.is_misbehaviour() {
                    self.peers.with(peer, |s| s.bad_messages += 1);
                }
            }
        }
        r
    }

    /// Stores `bytes` (whose BLAKE3 is `id`) on `peer`.
    pub async fn put(&self, peer: PeerId, id: ShardId, bytes: &[u8]) -> Result<(), ClientError> {
        let _slot = self.slot(peer).await;
        let r = async {
            let req = Request::Put {
                id,
                len: bytes.len() as u32,
            };
            match self.ask(peer, &req, Some(bytes)).await?.0 {
                Response::Stored => Ok(()),
                Response::Refused(r) => Err(ClientError::Refused(r)),
                other => Err(ClientError::Protocol(format!("{other:?} to a put"))),
            }
        }
        .await;
        self.note(peer, r)
    }

    /// Fetches shard `id` from `peer`: its bytes exactly as sent (the caller verifies them).
    pub async fn get(&self, peer: PeerId, id: ShardId) -> Result<Vec<u8>, ClientError> {
        let _slot = self.slot(peer).await;
        let r = async {
            let (resp, mut s) = self.ask(peer, &Request::Get { id }, None).await?;
            match resp {
                Response::Shard { len } => Ok(wire::read_body(&mut s, len).await?),
                Response::NotFound => Err(ClientError::NotFound),
                Response::Refused(r) => Err(ClientError::Refused(r)),
                other => Err(ClientError::Protocol(format!("{other:?} to a get"))),
            }
        }
        .await;
        self.note(peer, r)
    }

    /// Which of `ids` `peer` holds for us.
    pub async fn has(&self, peer: PeerId, ids: &[ShardId]) -> Result<Vec<bool>, ClientError> {
        let _slot = self.slot(peer).await;
        let r = async {
            let req = Request::Has { ids: ids.to_vec() };
            match self.ask(peer, &req, None).await?.0 {
                Response::Have { bits } if bits.len() == ids.len().div_ceil(8) => {
                    Ok((0..ids.len()).map(|i| has_bit(&bits, i)).collect())
                }
                other => Err(ClientError::Protocol(format!("{other:?} to has"))),
            }
        }
        .await;
        self.note(peer, r)
    }

    /// Tells `peer` we no longer need `ids`; returns how many it dropped.
    pub async fn release(&self, peer: PeerId, ids: &[ShardId]) -> Result<u32, ClientError> {
        let _slot = self.slot(peer).await;
        let r = async {
            let req = Request::Release { ids: ids.to_vec() };
            match self.ask(peer, &req, None).await?.0 {
                Response::Released { count } => Ok(count),
                other => Err(ClientError::Protocol(format!("{other:?} to a release"))),
            }
        }
        .await;
        self.note(peer, r)
    }

    /// Renews our leases on `ids` at `peer`: the lease it granted, and which it holds.
    pub async fn renew(
        &self,
        peer: PeerId,
        ids: &[ShardId],
    ) -> Result<(Duration, Vec<bool>), ClientError> {
        let _slot = self.slot(peer).await;
        let r = async {
            let req = Request::Renew { ids: ids.to_vec() };
            match self.ask(peer, &req, None).await?.0 {
                Response::Renewed { lease_secs, bits } if bits.len() == ids.len().div_ceil(8) => {
                    Ok((
                        Duration::from_secs(u64::from(lease_secs)),
                        (0..ids.len()).map(|i| has_bit(&bits, i)).collect(),
                    ))
                }
                Response::Refused(r) => Err(ClientError::Refused(r)),
                Response::Unsupported => Err(ClientError::Protocol("leases unsupported".into())),
                other => Err(ClientError::Protocol(format!("{other:?} to a renewal"))),
            }
        }
        .await;
        self.note(peer, r)
    }

    /// Asks `peer` to prove it holds `chunks` of shard `id` (of `len` bytes) and checks the
    /// proof against the id: `Ok(true)` passed, `Ok(false)` a proof that does not verify,
    /// `Err(NotFound)` it says it has no such shard.
    pub async fn audit(
        &self,
        peer: PeerId,
        id: ShardId,
        len: u32,
        chunks: Vec<u32>,
    ) -> Result<bool, ClientError> {
        let _slot = self.slot(peer).await;
        let r = async {
            let req = Request::Audit {
                id,
                chunks: chunks.clone(),
            };
            let (resp, mut s) = self.ask(peer, &req, None).await?;
            match resp {
                Response::Proof { len: n } => {
                    let proof = wire::read_body(&mut s, n).await?;
                    let ok = tokio::task::spawn_blocking(move || {
                        super::proof::verify(&id, len, &chunks, &proof)
                    })
                    .await
                    .unwrap_or(false);
                    Ok(ok)
                }
                Response::NotFound => Err(ClientError::NotFound),
                Response::Refused(r) => Err(ClientError::Refused(r)),
                Response::Unsupported => Err(ClientError::Protocol("audits unsupported".into())),
                other => Err(ClientError::Protocol(format!("{other:?} to an audit"))),
            }
        }
        .await;
        self.note(peer, r)
    }

    /// Gives `peer` a volume root record to keep (see [`root`](super::root)).
    pub async fn put_root(&self, peer: PeerId, record: &[u8]) -> Result<(), ClientError> {
        let _slot = self.slot(peer).await;
        let r = async {
            let req = Request::PutRoot {
                record: record.to_vec(),
            };
            match self.ask(peer, &req, None).await?.0 {
                Response::Stored => Ok(()),
                Response::Refused(r) => Err(ClientError::Refused(r)),
                Response::Unsupported => Err(ClientError::Unsupported),
                other => Err(ClientError::Protocol(format!("{other:?} to a root put"))),
            }
        }
        .await;
        self.note(peer, r)
    }

    /// The newest root record `peer` holds for `locator`, its signature checked: `None`
    /// if it holds none. A record that does not verify, or is filed under another
    /// locator, is the peer breaking the protocol.
    pub async fn get_root(
        &self,
        peer: PeerId,
        locator: [u8; 32],
    ) -> Result<Option<super::root::RootRecord>, ClientError> {
        let _slot = self.slot(peer).await;
        let r = async {
            match self.ask(peer, &Request::GetRoot { locator }, None).await?.0 {
                Response::Root { record } => {
                    match super::root::RootRecord::decode_verified(&record) {
                        Ok(r) if r.locator == locator => Ok(Some(r)),
                        Ok(_) => Err(ClientError::Protocol(
                            "a root record of another locator".into(),
                        )),
                        Err(e) => Err(ClientError::Protocol(e.to_string())),
                    }
                }
                Response::NotFound => Ok(None),
                Response::Refused(r) => Err(ClientError::Refused(r)),
                Response::Unsupported => Err(ClientError::Unsupported),
                other => Err(ClientError::Protocol(format!("{other:?} to a root get"))),
            }
        }
        .await;
        self.note(peer, r)
    }

    /// Asks `peer` for its space and records it.
    pub async fn info(&self, peer: PeerId) -> Result<(u64, u64, u64), ClientError> {
        let _slot = self.slot(peer).await;
        let r = async {
            match self.ask(peer, &Request::Info, None).await?.0 {
                Response::Info {
                    offered,
                    used,
                    used_by_asker,
                } => Ok((offered, used, used_by_asker)),
                other => Err(ClientError::Protocol(format!("{other:?} to info"))),
            }
        }
        .await;
        if let Ok((offered, used, ours)) = &r {
            self.peers.with(peer, |s| {
                s.offered = *offered;
                s.used = *used;
                s.used_by_us = *ours;
                s.info_at = Some(std::time::Instant::now());
            });
        }
        self.note(peer, r)
    }
}
