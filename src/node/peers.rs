//! What this node knows about other peers: addresses, whether they are connected, when they
//! were last seen, round-trip time, the host they run on (their failure domain), the space
//! they offer, and how their requests went. Shared between the swarm task (which learns
//! from connections, identify and ping) and the clients (which learn from answers).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use parking_lot::Mutex;

/// One peer.
#[derive(Clone, Debug)]
pub struct PeerState {
    pub addresses: Vec<Multiaddr>,
    pub connected: bool,
    /// When a connection was last open (or an answer came).
    pub last_seen: Option<SystemTime>,
    pub rtt: Option<Duration>,
    /// The IP of its connections: peers on one host count as one failure domain.
    pub ip: Option<IpAddr>,
    /// It speaks the shard protocol (identify said so).
    pub shard_protocol: bool,
    /// Space it offers and uses, from its last `Info` answer.
    pub offered: u64,
    pub used: u64,
    /// Of that, what we store there.
    pub used_by_us: u64,
    /// When `offered`/`used` were learnt.
    pub info_at: Option<Instant>,
    /// Requests answered well, and requests that failed (timeouts, errors, bad bytes).
    pub ok: u64,
    pub failed: u64,
    /// Requests in a row that failed (reset by an answer): a peer that is away or frozen.
    pub failing: u32,
    /// Shards that came back with wrong bytes.
    pub bad_shards: u64,
    /// Shards it stored for us and no longer has (damaged and quarantined, or deleted).
    pub lost_shards: u64,
    /// Malformed or unexpected messages it sent.
    pub bad_messages: u64,
    /// Shards it served with the right bytes.
    pub good_shards: u64,
    /// Audits it passed, and failed (no shard, or a proof that does not verify; a timeout
    /// counts only when the retry times out too).
    pub audits_passed: u64,
    pub audits_failed: u64,
    /// Its requests answered `Busy` because it had more than its share of this node's
    /// capacity in flight at once (an honest bitcloud never does: its client stays below).
    pub floods: u64,
}

impl PeerState {
    fn new() -> PeerState {
        PeerState {
            addresses: Vec::new(),
            connected: false,
            last_seen: None,
            rtt: None,
            ip: None,
            shard_protocol: false,
            offered: 0,
            used: 0,
            used_by_us: 0,
            info_at: None,
            ok: 0,
            failed: 0,
            failing: 0,
            bad_shards: 0,
            lost_shards: 0,
            bad_messages: 0,
            good_shards: 0,
            audits_passed: 0,
            audits_failed: 0,
            floods: 0,
        }
    }

    /// Space it can still take.
    pub fn free(&self) -> u64 {
        self.offered.saturating_sub(self.used)
    }

    /// The failure domain: its host (IP), or the peer itself if unknown.
    pub fn domain(&self, peer: &PeerId) -> Vec<u8> {
        match self.ip {
            Some(IpAddr::V4(v4)) => v4.octets().to_vec(),
            Some(IpAddr::V6(v6)) => v6.octets().to_vec(),
            None => peer.to_bytes(),
        }
    }

    /// How much to prefer this peer when reading (lower first): peers that answer, that
    /// never served bad bytes, and that are close.
    pub fn read_order(&self) -> (bool, u32, u64, u128) {
        (
            !self.connected,
            self.failing.min(3),
            self.bad_shards + self.lost_shards,
            self.rtt.map_or(u128::MAX, |r| r.as_micros()),
        )
    }

    /// Reputation in (0, 1]: 1 for a new peer; every failure (an audit failed, a shard
    /// served wrong or lost) weighs as much as ten successes (audits passed, shards served
    /// right), so a disk that lost a few of many shards keeps its place and a peer that
    /// lies or lost most of what it held falls below [`BANNED_BELOW`]. Every hundred
    /// requests refused for flooding count as one failure.
    pub fn score(&self) -> f64 {
        let good = 1.0 + (self.audits_passed + self.good_shards) as f64;
        let bad =
            (self.audits_failed + self.bad_shards + self.lost_shards + self.floods / 100) as f64;
        good / (good + 10.0 * bad)
    }

    /// Below [`BANNED_BELOW`]: given no shards, and the shards it holds count as lost.
    pub fn banned(&self) -> bool {
        self.score() < BANNED_BELOW
    }

    /// A weight for placement: free space scaled by the score, zero if it offers nothing,
    /// does not answer, or is banned.
    pub fn weight(&self) -> f64 {
        if !self.shard_protocol
            || !self.connected
            || self.failing >= 3
            || self.free() == 0
            || self.banned()
        {
            return 0.0;
        }
        (self.free() as f64 / (1u64 << 30) as f64).max(1e-6) * self.score()
    }
}

/// Peers scoring below this get no shards and their shards are rebuilt elsewhere.
pub const BANNED_BELOW: f64 = 0.5;

/// The table of peers.
#[derive(Default)]
pub struct Peers {
    map: Mutex<HashMap<PeerId, PeerState>>,
    /// Connections established so far: changes whenever the reachable pool may have grown.
    connects: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peers({})", self.map.lock().len())
    }
}

/// The IP of a multiaddr, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl Peers {
    pub fn with<T>(&self, peer: PeerId, f: impl FnOnce(&mut PeerState) -> T) -> T {
        f(self.map.lock().entry(peer).or_insert_with(PeerState::new))
    }

    pub fn get(&self, peer: &PeerId) -> Option<PeerState> {
        self.map.lock().get(peer).cloned()
    }

    pub fn snapshot(&self) -> Vec<(PeerId, PeerState)> {
        let mut v: Vec<_> = self
            .map
            .lock()
            .iter()
            .map(|(p, s)| (*p, s.clone()))
            .collect();
        v.sort_by_key(|(p, _)| *p);
        v
    }

    pub fn add_address(&self, peer: PeerId, addr: Multiaddr) {
        self.with(peer, |s| {
            if !s.addresses.contains(&addr) {
                if s.addresses.len() >= 8 {
                    s.addresses.remove(0);
                }
                s.addresses.push(addr);
            }
        });
    }

    /// Connections established so far (see [`Peers::connected`]).
    pub fn connects(&self) -> u64 {
        self.connects.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A connection to `peer` is up. `remote` is the address we dialled (`dialed`), or the
    /// one its connection came from. Only a dialled address says for sure which host the
    /// peer is on: a connection it opened may come from another of its host's addresses
    /// (on one machine, every 127.0.0.x peer dials out from 127.0.0.1), so it sets the
    /// failure domain only while none is known.
    pub fn connected(&self, peer: PeerId, remote: &Multiaddr, dialed: bool) {
        self.connects
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.with(peer, |s| {
            s.connected = true;
            s.last_seen = Some(SystemTime::now());
            if let Some(ip) = ip_of(remote)
                && (dialed || s.ip.is_none())
            {
                s.ip = Some(ip);
            }
        });
    }

    pub fn disconnected(&self, peer: PeerId) {
        self.with(peer, |s| {
            s.connected = false;
            s.last_seen = Some(SystemTime::now());
        });
    }

    /// A request to `peer` was answered (`true`) or failed.
    pub fn answered(&self, peer: PeerId, ok: bool) {
        self.with(peer, |s| {
            if ok {
                s.ok += 1;
                s.failing = 0;
                s.last_seen = Some(SystemTime::now());
            } else {
                s.failed += 1;
                s.failing = s.failing.saturating_add(1);
            }
        });
    }
}
