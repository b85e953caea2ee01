//! The task that owns the swarm: it answers [`Command`]s, keeps the [`Peers`] table current
//! from swarm and behaviour events, keeps bootstrap and known pool peers connected (redial
//! with backoff), and asks new pool peers for their space.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::futures::StreamExt;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns, ping};
use tokio::sync::{mpsc, oneshot};

use super::behaviour::{Behaviour, BehaviourEvent, IDENTIFY_VERSION, SHARD_PROTOCOL};
use super::{Command, NodeHandle, peer_of, peers};

/// How often disconnected peers are considered for a redial, and pool peers asked for space.
const TICK: Duration = Duration::from_secs(2);
/// How often a connected pool peer is asked for its space.
const INFO_EVERY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Backoff state of one address we keep dialling.
pub(super) struct Redial {
    next: Instant,
    backoff: Duration,
}

impl Redial {
    pub(super) fn new() -> Redial {
        Redial {
            next: Instant::now(),
            backoff: Duration::from_millis(500),
        }
    }

    fn failed(&mut self) {
        self.next = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn succeeded(&mut self) {
        self.backoff = Duration::from_millis(500);
    }
}

/// A dial in progress: the address, and who waits for its outcome.
type PendingDial = (Multiaddr, Option<oneshot::Sender<Result<PeerId, String>>>);

pub(super) struct Loop {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) handle: NodeHandle,
    pub(super) pending_dials: HashMap<ConnectionId, PendingDial>,
    /// Addresses we keep connected (bootstrap, `peers add`, pool peers seen before).
    pub(super) known: HashMap<Multiaddr, Redial>,
    /// A private pool's members; `None`: an open pool.
    pub(super) allow: Option<std::sync::Arc<std::collections::HashSet<PeerId>>>,
}

impl Loop {
    pub(super) async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                cmd = commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.event(ev),
                _ = tick.tick() => self.tick(),
            }
        }
        tracing::debug!(target: "bitcloud::node", "node stopped");
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Dial(addr, reply) => {
                self.known.entry(addr.clone()).or_insert_with(Redial::new);
                self.dial(addr, Some(reply));
            }
            Command::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    fn dial(&mut self, addr: Multiaddr, reply: Option<oneshot::Sender<Result<PeerId, String>>>) {
        let opts = match peer_of(&addr) {
            Some(peer) if peer == self.handle.id => {
                if let Some(r) = reply {
                    let _ = r.send(Err("that is this node's own address".into()));
                }
                return;
            }
            Some(peer) => {
                self.handle.peers.add_address(peer, addr.clone());
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
                DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .build()
            }
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.pending_dials.insert(id, (addr, reply));
            }
            Err(e) => {
                // Already connected (or dialling) to that peer: that is success.
                if let (Some(peer), Some(r)) = (peer_of(&addr), reply) {
                    if self.swarm.is_connected(&peer) {
                        let _ = r.send(Ok(peer));
                    } else {
                        let _ = r.send(Err(e.to_string()));
                    }
                }
            }
        }
    }

    fn event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                let mut l = self.handle.listen.lock();
                if !l.contains(&address) {
                    tracing::info!(target: "bitcloud::node", %address, "listening");
                    l.push(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.handle.listen.lock().retain(|a| *a != address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if self.allow.as_ref().is_some_and(|a| !a.contains(&peer_id)) {
                    // A private pool: whoever is not a member is disconnected at once (the
                    // server refuses its requests meanwhile).
                    tracing::info!(target: "bitcloud::node", peer = %peer_id, "refused a peer outside the private pool");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    if let Some((_, Some(reply))) = self.pending_dials.remove(&connection_id) {
                        let _ = reply.send(Err(format!(
                            "{peer_id} is not a member of this private pool (node.allow)"
                        )));
                    }
                    return;
                }
                self.handle.peers.connected(
                    peer_id,
                    endpoint.get_remote_address(),
                    endpoint.is_dialer(),
                );
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    if let Some(r) = self.known.get_mut(&addr) {
                        r.succeeded();
                    }
                    if let Some(r) = reply {
                        let _ = r.send(Ok(peer_id));
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.handle.peers.disconnected(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                peer_id,
            } => {
                tracing::debug!(target: "bitcloud::node", ?peer_id, %error, "dial failed");
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    if let Some(r) = self.known.get_mut(&addr) {
                        r.failed();
                    }
                    if let Some(r) = reply {
                        let _ = r.send(Err(error.to_string()));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.identified(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.handle.peers.with(peer, |s| {
                    s.rtt = Some(rtt);
                    s.last_seen = Some(std::time::SystemTime::now());
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    if peer != self.handle.id && !self.swarm.is_connected(&peer) {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer, addr.clone());
                        self.dial(addr, None);
                    }
                }
            }
            _ => {}
        }
    }

    fn identified(&mut self, peer: PeerId, info: identify::Info) {
        if info.protocol_version != IDENTIFY_VERSION {
            tracing::debug!(target: "bitcloud::node", %peer, version = %info.protocol_version, "not a bitcloud node; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        let shards = info.protocols.contains(&SHARD_PROTOCOL);
        let first = !self
            .handle
            .peers
            .get(&peer)
            .is_some_and(|s| s.shard_protocol);
        self.handle.peers.with(peer, |s| s.shard_protocol = shards);
        for addr in info.listen_addrs {
            if peers::ip_of(&addr).is_some_and(|ip| ip.is_unspecified()) {
                continue;
            }
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
            self.handle.peers.add_address(peer, addr);
        }
        if shards && first {
            self.ask_info(peer);
        }
    }

    fn ask_info(&self, peer: PeerId) {
        let client = self.handle.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.info(peer).await {
                tracing::debug!(target: "bitcloud::node", %peer, error = %e, "info request failed");
            }
        });
    }

    fn tick(&mut self) {
        let now = Instant::now();
        // Redial what we keep connected.
        let due: Vec<Multiaddr> = self
            .known
            .iter()
            .filter(|(a, r)| {
                r.next <= now
                    && !peer_of(a).is_some_and(|p| self.swarm.is_connected(&p))
                    && !self.pending_dials.values().any(|(pa, _)| pa == *a)
            })
            .map(|(a, _)| a.clone())
            .collect();
        for a in due {
            if let Some(r) = self.known.get_mut(&a) {
                // Counted as failed until it succeeds, so a dial that hangs is not repeated
                // at once.
                r.failed();
            }
            self.dial(a, None);
        }
        // Pool peers seen before and now disconnected: redial their known addresses.
        for (peer, s) in self.handle.peers.snapshot() {
            if s.shard_protocol && !s.connected {
                for a in s.addresses {
                    let a = if peer_of(&a).is_some() {
                        a
                    } else {
                        a.with(libp2p::multiaddr::Protocol::P2p(peer))
                    };
                    self.known.entry(a).or_insert_with(Redial::new);
                }
            }
            if s.shard_protocol
                && s.connected
                && s.info_at
                    .is_none_or(|t| now.duration_since(t) >= INFO_EVERY)
            {
                self.ask_info(peer);
            }
        }
    }
}
