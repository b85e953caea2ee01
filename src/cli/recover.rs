//! `bitcloud recover`: a new machine and the identity file bring the whole volume back. The
//! volume's metadata comes from the pool (the newest backup any peer holds a root record
//! for, see `pool::backup`); file contents stay in the pool and come back as they are read,
//! like a volume whose local cache was dropped. The machine takes back the volume's node
//! key, so it owns the volume's shards: it renews their leases and releases what it frees.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use super::progress::Progress;
use crate::config::{Config, DEFAULT_CONFIG, Paths};
use crate::daemon::network;

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Your copy of the identity file (identity.age); it is copied into this home. Without
    /// it, the home's own identity file is used.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,

    /// A machine of the pool to ask, as `bitcloud status` there shows it
    /// (/ip4/.../tcp/4737/p2p/12D3Koo...); repeatable, and remembered in config.toml. Peers
    /// in node.bootstrap and, on a LAN, those mDNS finds are asked too.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub peers: Vec<String>,

    /// Read the identity's passphrase from this file (first line). BITCLOUD_PASSPHRASE also
    /// works; otherwise you are asked on the terminal.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Give up looking for the pool after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,

    /// Listen on this multiaddr while recovering (repeatable; default: every interface, port
    /// 4737 or any free one).
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "BITCLOUD_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,

    /// Do not look for peers on the local network (mDNS).
    #[arg(long, env = "BITCLOUD_NO_MDNS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_mdns: bool,
}

pub fn run(paths: &Paths, args: RecoverArgs) -> Result<()> {
    let volume_dir = paths.volume_dir();
    if volume_dir.join("meta.redb").exists() {
        bail!(
            "a volume already exists in {}: recover brings a volume back into a home that has none (use --home DIR for a new one)",
            volume_dir.display()
        );
    }
    let node_key = paths.node_key_file();
    if node_key.exists() {
        bail!(
            "{} exists: this home already has a node of its own; recover into a fresh home (--home DIR)",
            node_key.display()
        );
    }
    let mut peers = Vec::new();
    for p in &args.peers {
        let addr = crate::node::parse_peer_addr(p)?;
        if crate::node::peer_of(&addr).is_none() {
            bail!(
                "--peer {p} does not end in /p2p/<peer id>: `bitcloud status` on that machine shows its full addresses"
            );
        }
        peers.push(addr);
    }
    super::init::make_home_dirs(paths)?;
    let identity = paths.identity_file();
    let copied = take_identity(&identity, args.identity.as_deref())?;
    let keys = super::passphrase::load_keys(&identity, args.passphrase_file.as_deref())
        .inspect_err(|_| {
            if copied {
                let _ = std::fs::remove_file(&identity);
            }
        })?;
    let keys = Arc::new(keys);
    let config_file = paths.config_file();
    if !config_file.exists() {
        std::fs::write(&config_file, DEFAULT_CONFIG)
            .with_context(|| format!("writing {}", config_file.display()))?;
    }
    for addr in &peers {
        crate::config::add_bootstrap(&config_file, &addr.to_string())?;
    }
    let config = Config::load(&config_file)?;
    // Recovering, the node has a key of its own and offers nothing; the volume's node key
    // comes with the backup.
    let mut cfg = network::node_config(
        paths,
        &config,
        &network::NodeOverrides {
            listen: args.listen.clone(),
            offer: Some("0".into()),
            no_mdns: args.no_mdns,
        },
    )?;
    let temp_key = paths.data_dir.join("node.key.recovering");
    let _ = std::fs::remove_file(&temp_key);
    cfg.key_file = temp_key.clone();
    let net = network::start(paths, cfg)?;
    let result = recover_with(paths, &net, &keys, &args);
    net.stop();
    let _ = std::fs::remove_file(&temp_key);
    if result.is_err() && copied {
        let _ = std::fs::remove_file(&identity);
    }
    result
}

/// Puts the identity in the home: copies `given` there (refusing a different one already
/// there). Returns whether it copied.
fn take_identity(home_identity: &std::path::Path, given: Option<&std::path::Path>) -> Result<bool> {
    let Some(given) = given else {
        if !home_identity.exists() {
            bail!(
                "no identity: give your copy of identity.age with --identity FILE (or put it at {})",
                home_identity.display()
            );
        }
        return Ok(false);
    };
    let bytes = std::fs::read(given)
        .with_context(|| format!("reading the identity file {}", given.display()))?;
    if home_identity.exists() {
        if std::fs::read(home_identity)? == bytes {
            return Ok(false);
        }
        bail!(
            "{} already holds another identity: recover into a fresh home (--home DIR)",
            home_identity.display()
        );
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(home_identity)
        .with_context(|| format!("creating {}", home_identity.display()))?;
    std::io::Write::write_all(&mut f, &bytes)?;
    f.sync_all()?;
    Ok(true)
}

fn recover_with(
    paths: &Paths,
    net: &network::Network,
    keys: &Arc<crate::keys::VolumeKeys>,
    args: &RecoverArgs,
) -> Result<()> {
    let node = net.handle();
    eprintln!(
        "bitcloud: looking for the volume in the pool (node {})",
        node.id
    );
    let say = |s: String| eprintln!("bitcloud: {s}");
    let mut found = net
        .runtime
        .block_on(crate::pool::restore::find_root(
            &node,
            keys,
            Duration::from_secs(args.timeout),
            &say,
        ))
        .map_err(|e| anyhow!(e))?;
    let shared = crate::pool::restore::detached(node.clone(), Duration::from_secs(30));
    let quiet = |_: String| {};
    let manifest = loop {
        let p = &found.payload;
        eprintln!(
            "bitcloud: found backup #{} of {} ({}), held by {} of {} peers asked",
            found.record.seq,
            crate::units::ago(p.created),
            time_of(p.created),
            found.holding,
            found.asked
        );
        let manifest = net
            .runtime
            .block_on(crate::pool::restore::fetch_manifest(&shared, keys, p))
            .map_err(|e| anyhow!(e))?;
        // Fetching reached the manifest's holders: peers the first search may not have
        // known. Any of them with a newer record wins.
        let again = net
            .runtime
            .block_on(crate::pool::restore::find_root(
                &node,
                keys,
                Duration::from_secs(5),
                &quiet,
            ))
            .ok()
            .filter(|a| a.record.seq > found.record.seq);
        match again {
            Some(newer) => {
                eprintln!(
                    "bitcloud: a peer reached since holds a newer backup (#{})",
                    newer.record.seq
                );
                found = newer;
            }
            None => break manifest,
        }
    };
    let p = &found.payload;
    let total = manifest.chunks.len() as u64;
    // The node key first: a database without it would be a volume whose shards this
    // machine does not own. Both go if anything after fails.
    crate::node::key::store(&paths.node_key_file(), &p.node_key)
        .context("writing the volume's node key")?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let fetching = {
        let (shared, keys, manifest) = (shared.clone(), keys.clone(), manifest.clone());
        net.runtime.spawn(async move {
            crate::pool::restore::fetch_chunks(&shared, &keys, &manifest, tx).await
        })
    };
    let mut progress = Progress::new("recover");
    let mut got = 0u64;
    let restored = crate::volume::backup::restore(
        &paths.volume_dir(),
        || {
            let piece = rx.blocking_recv();
            if piece.is_some() {
                got += 1;
                progress.update("metadata chunks", got, total, false);
            }
            Ok(piece)
        },
        (found.record.seq, p.generation, p.created),
        crate::pool::restore::chunk_rows(&manifest, p),
    );
    // A restore that stopped early leaves the fetch waiting to hand over the next chunk.
    drop(rx);
    let fetched = net
        .runtime
        .block_on(fetching)
        .map_err(|e| anyhow!(e.to_string()))
        .and_then(|r| r.map_err(|e| anyhow!(e)));
    progress.finish();
    let restored = match (restored, fetched) {
        (Ok(r), Ok(())) if got == total => r,
        (r, f) => {
            // Nothing half-made stays behind.
            let volume = paths.volume_dir();
            for f in ["meta.redb", "meta.restoring"] {
                let _ = std::fs::remove_file(volume.join(f));
            }
            let _ = std::fs::remove_file(paths.node_key_file());
            let why = match (r, f) {
                (Err(e), _) => anyhow!(e),
                (_, Err(e)) => e,
                _ => anyhow!("the backup ended early ({got} of {total} chunks)"),
            };
            return Err(why).context("recovering the volume's metadata");
        }
    };
    let c = &restored.counts;
    println!(
        "bitcloud: recovered the volume from backup #{} ({} rows in {} chunks)",
        found.record.seq, manifest.rows, total
    );
    println!(
        "  files        {} files, {} directories, {}",
        c.files,
        c.dirs,
        crate::units::bytes(c.logical_bytes)
    );
    println!("  volume       {}", paths.volume_dir().display());
    println!("  node         the volume's own node key is back (its shards are owned by it)");
    println!(
        "  contents     in the pool: read back on demand; nothing is copied to this disk until used"
    );
    println!("Next: bitcloud mount ~/cloud");
    Ok(())
}

/// A time (seconds since the epoch) in UTC, e.g. "2026-12-05 14:03 UTC".
fn time_of(secs: u64) -> String {
    let days = secs / 86_400;
    let (h, m) = (secs % 86_400 / 3600, secs % 3600 / 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(super::time_of(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::time_of(1_795_000_000), "2026-11-18 11:06 UTC");
        assert_eq!(super::time_of(951_782_400), "2000-02-29 00:00 UTC");
    }
}
