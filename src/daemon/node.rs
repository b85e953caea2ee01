//! `bitcloud node`: a storage-only node. It holds shards for other peers of the pool in its
//! shard store, serves them back, and helps peers find each other (Kademlia server). No
//! volume, no identity file: only its own libp2p key. Foreground; READY=1 to systemd once
//! listening; SIGTERM or SIGINT stop it cleanly; `bitcloud status` and `bitcloud peers`
//! talk to it over its control socket.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::network::{self, NodeOverrides};
use super::{control, notify};
use crate::config::{Config, Paths};

/// Space offered when neither `--offer` nor `node.offer` says: half the free space of the
/// disk that holds the shard store.
fn default_offer(paths: &Paths) -> u64 {
    let dir = &paths.data_dir;
    let _ = std::fs::create_dir_all(dir);
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail as u64 * st.f_frsize as u64 / 2
}

/// Runs the node until stopped. Blocks.
pub fn run_node(paths: &Paths, config: &Config, overrides: NodeOverrides) -> Result<()> {
    let mut cfg = network::node_config(paths, config, &overrides)?;
    if cfg.store.is_none() {
        let offer = default_offer(paths);
        if offer == 0 {
            anyhow::bail!(
                "no space to offer: the disk holding {} is full (or give --offer SIZE)",
                paths.data_dir.display()
            );
        }
        eprintln!(
            "bitcloud: offering {} to the pool (half the free space; --offer SIZE or node.offer to choose)",
            crate::units::bytes(offer)
        );
        cfg.store = Some((paths.shard_dir(), offer));
    }
    let net = network::start(paths, cfg)?;
    // Before READY=1: a stop that comes right after it must find the handlers in place.
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _in_runtime = net.runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let handle = net.handle();
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let control = control::ControlServer {
        path: paths.node_socket(),
        volume: None,
        mountpoint: None,
        net: Some(control::NetCtl {
            node: handle.clone(),
            rt: net.runtime.handle().clone(),
            config_file: paths.config_file(),
        }),
        on_umount: Box::new(move || {
            let _ = stop_tx.try_send("stop request");
        }),
        no_wait: Arc::default(),
    };
    control.spawn().with_context(|| {
        format!(
            "serving the control socket {}",
            paths.node_socket().display()
        )
    })?;
    eprintln!("bitcloud: node {}", handle.id);
    for a in handle.listen_addrs() {
        eprintln!("bitcloud:   listening on {a}");
    }
    if let Some(s) = &handle.store {
        eprintln!(
            "bitcloud:   storing {} of {} offered, in {}",
            crate::units::bytes(s.used()),
            crate::units::bytes(s.offered()),
            paths.shard_dir().display()
        );
    }
    notify::notify("READY=1");
    let reason = net.runtime.block_on(async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            Some(r) = stop_rx.recv() => r,
        }
    });
    tracing::info!(target: "bitcloud::node", reason, "stopping");
    notify::notify("STOPPING=1");
    net.stop();
    let _ = std::fs::remove_file(paths.node_socket());
    eprintln!("bitcloud: node stopped ({reason})");
    Ok(())
}
