//! The embedded libp2p node: every `bitcloud mount` runs one (to place and fetch its
//! shards), and `bitcloud node` runs one that only stores shards for others.
//!
//! One tokio task owns the [`Swarm`](libp2p::Swarm) and answers [`Command`]s; everything
//! else talks to it through a [`NodeHandle`]: requests to peers go over
//! `libp2p_stream` streams opened from any task ([`client::Client`]), inbound shard
//! requests are served by [`server`] from the node's [`ShardStore`], and what is known of
//! each peer lives in [`Peers`]. The FUSE side never sees any of this: the owner-side
//! `pool` module is the only user of the handle in a mount.
//!
//! Finding peers: `bootstrap` addresses (config and `peers add`) are dialled at start and
//! redialled with backoff whenever they are not connected; identify tells each peer's
//! listen addresses, which go into Kademlia (bitcloud's own protocol name, server mode) and
//! the peer table; mDNS (when on) adds LAN peers; Kademlia's periodic bootstrap finds the
//! rest. Peers that are not bitcloud nodes (identify says otherwise) are disconnected.

pub mod behaviour;
pub mod client;
pub mod key;
pub mod lease;
pub mod peers;
pub mod placement;
pub mod proof;
pub mod protocol;
pub mod root;
pub mod root_store;
pub mod server;
pub mod shard_store;
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use behaviour::{Behaviour, SHARD_PROTOCOL};
pub use client::{Client, ClientError};
pub use peers::{PeerState, Peers};
pub use root_store::RootStore;
pub use shard_store::ShardStore;

/// The port bitcloud listens on by default (TCP and QUIC).
pub const DEFAULT_PORT: u16 = 4737;

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's own key file (made on first start).
    pub key_file: PathBuf,
    /// Addresses to listen on; empty: all interfaces on [`DEFAULT_PORT`] (or any free port
    /// if that one is taken).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and keep connected.
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Where to keep shards for others, and how many bytes to offer; `None` stores nothing.
    pub store: Option<(PathBuf, u64)>,
    /// Most one owner may store here: a share of the offer (0 < share <= 1).
    pub owner_share: f64,
    /// Lease and trash periods of the copies stored here.
    pub leases: lease::LeaseTerms,
    /// A private pool: only these peers may connect (empty: an open pool).
    pub allow: Vec<PeerId>,
}

/// The default listen addresses.
pub fn default_listen(port: u16) -> Vec<Multiaddr> {
    vec![
        format!("/ip4/0.0.0.0/tcp/{port}").parse().expect("valid"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1")
            .parse()
            .expect("valid"),
    ]
}

/// The peer id at the end of `addr` (`.../p2p/<id>`), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().last().and_then(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// Parses a multiaddr as `peers add` and `bootstrap` take it, with a message that says
/// what is wrong.
pub fn parse_peer_addr(s: &str) -> Result<Multiaddr> {
    let addr: Multiaddr = s
        .trim()
        .parse()
        .map_err(|e| anyhow!("{s:?} is not a multiaddr ({e}); expected e.g. /ip4/192.168.1.5/tcp/4737/p2p/12D3KooW..."))?;
    if !addr
        .iter()
        .any(|p| matches!(p, Protocol::Tcp(_) | Protocol::QuicV1 | Protocol::Udp(_)))
    {
        bail!("{s:?} names no transport: add /tcp/PORT or /udp/PORT/quic-v1");
    }
    Ok(addr)
}

/// What the swarm task is asked to do.
enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<PeerId, String>>),
    Disconnect(PeerId),
}

/// A cheap handle on the running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub id: PeerId,
    pub client: Client,
    pub peers: Arc<Peers>,
    listen: Arc<Mutex<Vec<Multiaddr>>>,
    commands: mpsc::Sender<Command>,
    pub store: Option<Arc<ShardStore>>,
    /// Volume root records kept for the pool (with `store`).
    pub roots: Option<Arc<RootStore>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeHandle({})", self.id)
    }
}

/// The running node: its task stops when this drops or [`Node::stop`] is called.
pub struct Node {
    handle: NodeHandle,
    task: tokio::task::JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Node {
    /// Starts the node on the current tokio runtime: loads the key, binds every listen
    /// address (waiting until each is bound, so `listen_addrs` is complete on return),
    /// starts serving and dials the bootstrap peers.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let key = key::load_or_create(&config.key_file)?;
        let id = key.public().to_peer_id();
        let mut swarm = behaviour::swarm(key, config.mdns)
            .map_err(|e| anyhow!("building the libp2p node: {e}"))?;
        let store = match &config.store {
            Some((dir, offer)) => {
                let store = ShardStore::open_with(dir, *offer, config.leases)
                    .context("opening the shard store")?;
                if config.owner_share < 1.0 {
                    store.set_per_owner((*offer as f64 * config.owner_share) as u64);
                }
                Some(Arc::new(store))
            }
            None => None,
        };
        let roots = match &config.store {
            Some((dir, _)) => Some(Arc::new(
                RootStore::open(
                    &dir.join("roots"),
                    config.leases.lease + config.leases.trash,
                )
                .context("opening the root record store")?,
            )),
            None => None,
        };
        let peers = Arc::new(Peers::default());
        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control
            .accept(SHARD_PROTOCOL)
            .map_err(|e| anyhow!("registering the shard protocol: {e}"))?;
        let listen = bind(&mut swarm, &config.listen).await?;
        for a in &listen {
            tracing::info!(target: "bitcloud::node", address = %a, "listening");
        }
        let allow: Option<Arc<std::collections::HashSet<PeerId>>> =
            (!config.allow.is_empty()).then(|| Arc::new(config.allow.iter().copied().collect()));
        if let (Some(store), Some(roots)) = (&store, &roots) {
            tokio::spawn(sweep_leases(store.clone(), roots.clone()));
        }
        tokio::spawn(server::serve(
            incoming,
            server::Stores {
                shards: store.clone(),
                roots: roots.clone(),
            },
            peers.clone(),
            allow.clone(),
        ));
        let (commands, rx) = mpsc::channel(64);
        let handle = NodeHandle {
            id,
            client: Client {
                control,
                peers: peers.clone(),
                slots: Default::default(),
            },
            peers,
            listen: Arc::new(Mutex::new(listen)),
            commands,
            store,
            roots,
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let mut state = Loop {
            swarm,
            handle: handle.clone(),
            pending_dials: HashMap::new(),
            known: config
                .bootstrap
                .iter()
                .map(|a| (a.clone(), Redial::new()))
                .collect(),
            allow,
        };
        let task = tokio::spawn(async move { state.run(rx, stop_rx).await });
        Ok(Node {
            handle,
            task,
            stop: Some(stop_tx),
        })
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the swarm task (connections close) and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Moves copies whose lease ran out to the trash and empties it, and drops root records not
/// renewed in time, now and then, for as long as the store is in use.
async fn sweep_leases(store: Arc<ShardStore>, roots: Arc<RootStore>) {
    let every = store.terms().sweep_every();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if Arc::strong_count(&store) == 1 {
            return; // the node is gone
        }
        let gone = roots.sweep(lease::now_secs());
        if gone > 0 {
            tracing::info!(target: "bitcloud::node", records = gone, "root records not renewed in time were dropped");
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.sweep(lease::now_secs())).await {
            Ok(Ok(swept)) if swept != Default::default() => {
                tracing::info!(target: "bitcloud::node", trashed = swept.trashed, deleted = swept.deleted, deleted_bytes = swept.deleted_bytes, "leases ran out: copies moved to the trash or deleted");
            }
            Ok(Err(e)) => {
                tracing::warn!(target: "bitcloud::node", error = %e, "sweeping expired leases failed");
            }
            _ => {}
        }
    }
}

/// Listens on `wanted` (or the defaults) and returns the addresses bound so far (a listener
/// on all interfaces reports more as they come, see [`Loop`]).
async fn bind(swarm: &mut Swarm<Behaviour>, wanted: &[Multiaddr]) -> Result<Vec<Multiaddr>> {
    let mut ids = Vec::new();
    if wanted.is_empty() {
        for a in default_listen(DEFAULT_PORT) {
            match swarm.listen_on(a.clone()) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    // The default port is taken (another bitcloud on this host): any port.
                    tracing::warn!(target: "bitcloud::node", address = %a, error = %e, "default port unavailable; listening on a free port");
                    for id in ids.drain(..) {
                        swarm.remove_listener(id);
                    }
                    for a in default_listen(0) {
                        ids.push(
                            swarm
                                .listen_on(a.clone())
                                .map_err(|e| anyhow!("cannot listen on {a}: {e}"))?,
                        );
                    }
                    break;
                }
            }
        }
    } else {
        for a in wanted {
            ids.push(
                swarm
                    .listen_on(a.clone())
                    .map_err(|e| anyhow!("cannot listen on {a}: {e}"))?,
            );
        }
    }
    let mut bound = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ids.is_empty() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| anyhow!("the listen addresses were not bound within 10 s"))?;
        match ev {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                ids.retain(|l| *l != listener_id);
                bound.push(address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if ids.contains(&listener_id) => {
                bail!("a listener closed at start: {reason:?}");
            }
            _ => {}
        }
    }
    Ok(bound)
}

impl NodeHandle {
    /// The addresses this node listens on, each ending in `/p2p/<id>` (as `peers add`
    /// takes them). Unspecified addresses (0.0.0.0) are left out: their interfaces are.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen
            .lock()
            .iter()
            .filter(|a| !peers::ip_of(a).is_some_and(|ip| ip.is_unspecified()))
            .map(|a| a.clone().with(Protocol::P2p(self.id)))
            .collect()
    }

    /// Dials `addr` and waits (at most 10 s) until connected; returns the peer's id.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial(addr.clone(), tx))
            .await
            .map_err(|_| anyhow!("the node has stopped"))?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(Ok(peer))) => Ok(peer),
            Ok(Ok(Err(e))) => bail!("cannot connect to {addr}: {e}"),
            Ok(Err(_)) => bail!("the node has stopped"),
            Err(_) => bail!("cannot connect to {addr}: no answer within 10 s"),
        }
    }

    /// Closes every connection to `peer` (it may reconnect).
    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.commands.send(Command::Disconnect(peer)).await;
    }

    /// Connected peers that store shards, with their state.
    pub fn pool_peers(&self) -> Vec<(PeerId, PeerState)> {
        self.peers
            .snapshot()
            .into_iter()
            .filter(|(_, s)| s.shard_protocol && s.connected)
            .collect()
    }
}

mod event_loop;
use event_loop::{Loop, Redial};

#[cfg(test)]
mod tests;
