//! `bitcloud peers` lists the peers the running mount or node knows; `bitcloud peers add
//! MULTIADDR` connects to one at once (when something runs) and remembers it in
//! config.toml (`node.bootstrap`) either way.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::config::{Config, Paths};
use crate::daemon::control;
use crate::daemon::status::PeerReport;

#[derive(Debug, Args)]
pub struct PeersArgs {
    #[command(subcommand)]
    pub command: Option<PeersCommand>,

    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Connect to a peer (now, if a mount or node runs) and remember it in config.toml.
    Add {
        /// The peer's address, ending in /p2p/<peer id>, as its `bitcloud status` shows it.
        multiaddr: String,
    },
}

/// The control socket of whatever runs in this home: the mount's, else the node's.
pub(super) fn running_socket(paths: &Paths) -> Option<std::path::PathBuf> {
    [paths.control_socket(), paths.node_socket()]
        .into_iter()
        .find(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
}

pub fn run(paths: &Paths, args: PeersArgs) -> Result<()> {
    match args.command {
        Some(PeersCommand::Add { multiaddr }) => add(paths, &multiaddr),
        None => list(paths, args.json),
    }
}

fn add(paths: &Paths, multiaddr: &str) -> Result<()> {
    let addr = crate::node::parse_peer_addr(multiaddr)?;
    if crate::node::peer_of(&addr).is_none() {
        bail!(
            "{multiaddr} does not end in /p2p/<peer id>: `bitcloud status` on that machine shows its full addresses"
        );
    }
    let Some(socket) = running_socket(paths) else {
        let added = crate::config::add_bootstrap(&paths.config_file(), &addr.to_string())?;
        println!(
            "bitcloud: {} {addr} in {} (nothing runs now: it is dialled at the next mount or node start)",
            if added { "added" } else { "already had" },
            paths.config_file().display()
        );
        return Ok(());
    };
    let line = control::request(&socket, &format!("peers add {addr}"))?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("{e}");
    }
    println!(
        "bitcloud: connected to {} and remembered it in {}",
        v.get("peer").and_then(|p| p.as_str()).unwrap_or("?"),
        paths.config_file().display()
    );
    Ok(())
}

fn list(paths: &Paths, json: bool) -> Result<()> {
    let socket = running_socket(paths);
    // Scores and audits exist only in a running node.
    let running = socket.is_some();
    let peers: Vec<PeerReport> = match socket {
        Some(socket) => {
            let line = control::request(&socket, "peers")?;
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                bail!("{e}");
            }
            serde_json::from_value(v.get("peers").cloned().unwrap_or_default())?
        }
        None => {
            // Not running: what config.toml says to dial.
            let config = Config::load(&paths.config_file())?;
            config
                .node
                .bootstrap
                .iter()
                .map(|a| PeerReport {
                    id: a.rsplit('/').next().unwrap_or_default().to_string(),
                    addresses: vec![a.clone()],
                    ..PeerReport::default()
                })
                .collect()
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    if peers.is_empty() {
        println!("no peers known (add one with `bitcloud peers add MULTIADDR`)");
    }
    for p in &peers {
        println!(
            "{} {} {}{}{} {}",
            p.id,
            if p.connected {
                "connected"
            } else {
                "not connected"
            },
            p.addresses.first().map(String::as_str).unwrap_or("-"),
            p.latency_ms
                .map(|l| format!(" {l:.1} ms"))
                .unwrap_or_default(),
            if (p.our_shards + p.our_backup_shards) > 0 {
                format!(
                    " holds {} of our shards",
                    (p.our_shards + p.our_backup_shards)
                )
            } else {
                String::new()
            },
            if running {
                crate::daemon::status::peer_health(p)
            } else {
                "(not running: from config.toml)".into()
            }
        );
    }
    Ok(())
}
