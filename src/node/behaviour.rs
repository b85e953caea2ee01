//! The libp2p behaviours a bitcloud node runs, and how its swarm is built: TCP (noise,
//! yamux) and QUIC; identify; ping; Kademlia under bitcloud's own protocol name (never the
//! IPFS DHT), in server mode so that nodes answer on a LAN or loopback where no external
//! address is ever confirmed; mDNS when asked; the shard streams; connection limits.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, connection_limits, identify, identity::Keypair, kad, mdns,
    noise, ping, tcp, yamux,
};

/// The Kademlia protocol of the bitcloud pool.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/bitcloud/kad/1.0.0");
/// The shard protocol (`protocol`): version in the name.
pub const SHARD_PROTOCOL: StreamProtocol = StreamProtocol::new("/bitcloud/shard/1");
/// What identify says we speak; peers that say something else are not pool members.
pub const IDENTIFY_VERSION: &str = "/bitcloud/1.0.0";

/// Connections kept open without traffic (libp2p's 10 s default closes them between
/// batches of shards).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub stream: libp2p_stream::Behaviour,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn behaviour(key: &Keypair, mdns_on: bool) -> Result<Behaviour, BoxError> {
    let me = key.public().to_peer_id();
    let mut kcfg = kad::Config::new(KAD_PROTOCOL);
    kcfg.set_query_timeout(Duration::from_secs(30));
    let mut kad = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), kcfg);
    kad.set_mode(Some(kad::Mode::Server));
    let mdns = if mdns_on {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), me)?)
    } else {
        None
    };
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established_per_peer(Some(2))
                .with_max_established(Some(512))
                .with_max_pending_incoming(Some(64)),
        ),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                .with_agent_version(format!("bitcloud/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: ping::Behaviour::new(ping::Config::new()),
        kad,
        mdns: Toggle::from(mdns),
        stream: libp2p_stream::Behaviour::new(),
    })
}

/// Builds the swarm.
pub(super) fn swarm(key: Keypair, mdns_on: bool) -> Result<Swarm<Behaviour>, BoxError> {
    Ok(SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_dns()?
        .with_behaviour(|key| behaviour(key, mdns_on))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build())
}
