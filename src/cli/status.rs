//! `bitcloud status [--json]`: asks the running mount over its control socket, or the
//! running `bitcloud node` over its own, or reads the metadata database directly when
//! nothing runs.

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::config::Paths;
use crate::daemon::status::{NodeReport, PeerReport, StatusReport, StoreReport, node_lines};
use crate::daemon::{VolumeLock, control};
use crate::meta::{MetaStore, Reader};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the report as JSON (a stable interface: fields are only added).
    #[arg(long)]
    pub json: bool,
}

/// What a running `bitcloud node` reports.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct NodeStatus {
    node: NodeReport,
    peers: Vec<PeerReport>,
    store: StoreReport,
    pid: u32,
}

fn volume_report(paths: &Paths) -> Result<StatusReport> {
    let db = paths.volume_dir().join("meta.redb");
    if VolumeLock::is_held(&paths.lock_file()) {
        let line = control::request(&paths.control_socket(), "status")
            .context("the volume is mounted but its control socket does not answer")?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(e) = v.get("error")
        {
            bail!("the mount reported an error: {e}");
        }
        return serde_json::from_str(&line).context("reading the mount's status reply");
    }
    let meta = MetaStore::open(&db).context("opening the metadata database")?;
    let tx = meta.read()?;
    let counts = tx.counts()?;
    let sb = meta.superblock()?;
    let mut r = StatusReport::from_counts(&counts, sb.block_size as u64);
    let blocks_dir = paths.volume_dir().join("blocks");
    let path_of = |id: &crate::ids::BlockId| {
        let hex = id.to_hex();
        blocks_dir.join(&hex[..2]).join(hex)
    };
    // Offline nothing says a holder went away: every placed shard counts.
    let redundancy = tx.redundancy(|id| path_of(id).exists(), |_| true)?;
    let (pending_blocks, pending_bytes, oldest) = tx.upload_totals()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut used = 0;
    tx.each_block(|id, _| {
        used += std::fs::metadata(path_of(&id)).map_or(0, |m| m.len());
    })?;
    r.set_pool(&crate::volume::remote::RemoteStatus {
        redundancy,
        pending_blocks,
        pending_bytes,
        oldest_pending_secs: oldest.map(|t| now.saturating_sub(t)),
        cache_used_bytes: used,
        cache_limit_bytes: None,
        releases_pending: tx.release_queue(usize::MAX)?.len() as u64,
        counters: Default::default(),
        backup: crate::volume::backup::backup_status_of(&tx)?,
        backup_live: None,
    });
    let (k, m) = sb.shards.unwrap_or(crate::volume::remote::DEFAULT_SCHEME);
    r.shards = format!("{k}+{m}");
    Ok(r)
}

fn node_status(paths: &Paths) -> Option<Result<NodeStatus>> {
    let line = control::request(&paths.node_socket(), "status").ok()?;
    Some((|| {
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if let Some(e) = v.get("error") {
            bail!("the node reported an error: {e}");
        }
        Ok(serde_json::from_value(v)?)
    })())
}

pub fn run(paths: &Paths, args: StatusArgs) -> Result<()> {
    // SAFETY: isatty only inspects the descriptor.
    let color = unsafe { libc::isatty(1) } == 1 && std::env::var_os("NO_COLOR").is_none();
    let has_volume = paths.volume_dir().join("meta.redb").exists();
    if (!has_volume || !VolumeLock::is_held(&paths.lock_file()))
        && let Some(node) = node_status(paths)
    {
        let n = node?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&n)?);
        } else {
            println!("bitcloud node: running (pid {})", n.pid);
            print!("{}", node_lines(&n.node, &n.peers, Some(&n.store)));
        }
        return Ok(());
    }
    if !has_volume {
        bail!(
            "not initialised: no volume under {} (run `bitcloud init` first), and no `bitcloud node` runs here",
            paths.config_dir.display()
        );
    }
    let r = volume_report(paths)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.render(color));
    }
    Ok(())
}
