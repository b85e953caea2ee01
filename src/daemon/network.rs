//! Starting this machine's libp2p node (for a mount or for `bitcloud node`): its settings
//! from `config.toml` and the command line, its own tokio runtime (two worker threads, so
//! the network never waits behind the mount's loop), and its lock (one node per home: the
//! mount's node and `bitcloud node` share the key and the shard store).

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::VolumeLock;
use crate::config::{Config, Paths};
use crate::node::{self, Node, NodeConfig, NodeHandle};

/// What the command line overrides of `[node]`.
#[derive(Clone, Debug, Default)]
pub struct NodeOverrides {
    pub listen: Vec<String>,
    pub offer: Option<String>,
    pub no_mdns: bool,
}

/// A running node with its runtime.
pub struct Network {
    pub runtime: tokio::runtime::Runtime,
    pub node: Option<Node>,
    _lock: VolumeLock,
}

impl Network {
    pub fn handle(&self) -> NodeHandle {
        self.node.as_ref().expect("running").handle()
    }

    /// Stops the node (connections close) and its runtime.
    pub fn stop(mut self) {
        if let Some(node) = self.node.take() {
            self.runtime.block_on(node.stop());
        }
        self.runtime
            .shutdown_timeout(std::time::Duration::from_secs(2));
    }
}

/// The node's settings: config, then overrides; every address checked with a message that
/// names where it came from.
pub fn node_config(paths: &Paths, config: &Config, o: &NodeOverrides) -> Result<NodeConfig> {
    let parse_all = |list: &[String], what: &str| -> Result<Vec<libp2p::Multiaddr>> {
        list.iter()
            .map(|s| node::parse_peer_addr(s).with_context(|| what.to_string()))
            .collect()
    };
    let listen = if o.listen.is_empty() {
        parse_all(&config.node.listen, "node.listen in config.toml")?
    } else {
        parse_all(&o.listen, "--listen")?
    };
    let bootstrap = parse_all(&config.node.bootstrap, "node.bootstrap in config.toml")?;
    for b in &bootstrap {
        if node::peer_of(b).is_none() {
            bail!("node.bootstrap in config.toml: {b} does not end in /p2p/<peer id>");
        }
    }
    let offer_text = o.offer.as_deref().unwrap_or(&config.node.offer);
    let offer = crate::units::parse_bytes(offer_text)
        .map_err(anyhow::Error::msg)
        .context("the space offered (--offer / node.offer)")?;
    Ok(NodeConfig {
        key_file: paths.node_key_file(),
        listen,
        bootstrap,
        mdns: config.node.mdns && !o.no_mdns,
        store: (offer > 0).then(|| (paths.shard_dir(), offer)),
        owner_share: f64::from(config.node.offer_per_owner_percent) / 100.0,
        leases: node::lease::LeaseTerms {
            lease: std::time::Duration::from_secs(config.node.lease_secs),
            trash: std::time::Duration::from_secs(config.node.trash_secs),
        },
        allow: config
            .node
            .allow
            .iter()
            .filter_map(|a| a.parse().ok()) // checked when the config was read
            .collect(),
    })
}

/// Takes the home's node lock and starts the node on a runtime of its own.
pub fn start(paths: &Paths, cfg: NodeConfig) -> Result<Network> {
    let lock = lock(&paths.node_lock_file())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bitcloud-net")
        .enable_all()
        .build()
        .context("starting the network runtime")?;
    let node = runtime
        .block_on(Node::start(cfg))
        .context("starting the libp2p node")?;
    Ok(Network {
        runtime,
        node: Some(node),
        _lock: lock,
    })
}

fn lock(path: &Path) -> Result<VolumeLock> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if !VolumeLock::is_held(path) {
        return VolumeLock::acquire(path);
    }
    VolumeLock::acquire(path).map_err(|_| {
        anyhow::anyhow!(
            "another bitcloud process of this home already runs its node (a mount, or `bitcloud node`); \
             one home has one node: to store for others while mounted, use `mount --offer SIZE`"
        )
    })
}

/// The node's own line of a status report.
pub fn node_report(h: &NodeHandle) -> super::status::NodeReport {
    super::status::NodeReport {
        id: h.id.to_string(),
        listen: h.listen_addrs().iter().map(|a| a.to_string()).collect(),
    }
}

/// Every known peer, with how many of our shards it holds (`ours`: blocks' shards, and
/// `backup`: the metadata backup's; peer id bytes → count).
pub fn peer_reports(
    h: &NodeHandle,
    ours: &std::collections::HashMap<Vec<u8>, u64>,
    backup: &std::collections::HashMap<Vec<u8>, u64>,
) -> Vec<super::status::PeerReport> {
    h.peers
        .snapshot()
        .into_iter()
        .map(|(id, s)| super::status::PeerReport {
            id: id.to_string(),
            addresses: s.addresses.iter().map(|a| a.to_string()).collect(),
            connected: s.connected,
            latency_ms: s.rtt.map(|r| r.as_secs_f64() * 1000.0),
            last_seen: s.last_seen.and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs())
            }),
            storage: s.shard_protocol && s.offered > 0,
            offered_bytes: s.offered,
            used_bytes: s.used,
            used_by_us_bytes: s.used_by_us,
            our_shards: ours.get(&id.to_bytes()).copied().unwrap_or(0),
            our_backup_shards: backup.get(&id.to_bytes()).copied().unwrap_or(0),
            failed_requests: s.failed,
            bad_shards: s.bad_shards,
            lost_shards: s.lost_shards,
            bad_messages: s.bad_messages,
            score: s.score(),
            audits_passed: s.audits_passed,
            audits_failed: s.audits_failed,
            floods: s.floods,
        })
        .collect()
}

/// What this machine stores for others, if it offers space.
pub fn store_report(h: &NodeHandle) -> Option<super::status::StoreReport> {
    h.store.as_ref().map(|s| super::status::StoreReport {
        offered_bytes: s.offered(),
        used_bytes: s.used(),
        shards: s.count() as u64,
        trash_bytes: s.trash_bytes(),
        lease_secs: s.terms().lease.as_secs(),
    })
}
