//! `bitcloud mount MOUNTPOINT`: foreground until unmounted, Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::config::{Config, Paths};
use crate::daemon::{MountRequest, run_mount};

#[derive(Debug, Args)]
pub struct MountArgs {
    /// An empty directory to mount the volume on (created if missing and inside your home).
    pub mountpoint: PathBuf,

    /// Mount options, comma-separated, repeatable: allow_other, allow_root, ro, rw, noexec,
    /// nosuid/suid, nodev/dev, sync, dirsync, auto_unmount (with allow_other/allow_root),
    /// fsname=NAME and subtype=NAME (shown in /proc/mounts as NAME ... fuse.NAME; default
    /// bitcloud), and the access-time policies relatime (default), strictatime, noatime,
    /// nodiratime, lazytime. fstab's own options (noauto, nofail, _netdev, x-*) are ignored.
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',')]
    pub options: Vec<String>,

    /// Read the identity's passphrase from this file (first line). BITCLOUD_PASSPHRASE also
    /// works; otherwise you are asked on the terminal.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Refuse to create a new volume when this home has none (by default the first mount
    /// creates one, like `bitcloud init`).
    #[arg(long)]
    pub no_init: bool,

    /// Overrides mount.seal_threads from config.toml.
    #[arg(long, value_name = "N")]
    pub seal_threads: Option<usize>,

    /// Overrides mount.checkpoint_secs from config.toml.
    #[arg(long, value_name = "SECONDS")]
    pub checkpoint_secs: Option<u64>,

    /// Overrides mount.fuse_threads from config.toml.
    #[arg(long, value_name = "N")]
    pub fuse_threads: Option<usize>,

    /// Overrides mount.write_buffer_mib from config.toml.
    #[arg(long, value_name = "MIB")]
    pub write_buffer_mib: Option<u64>,

    /// Overrides mount.writeback_secs from config.toml.
    #[arg(long, value_name = "SECONDS")]
    pub writeback_secs: Option<u64>,

    #[command(flatten)]
    pub node: NodeArgs,

    /// Most space for block files on this machine (e.g. 20G; overrides cache.size). Only
    /// blocks the pool holds at full redundancy are evicted.
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,

    /// fsync also waits until every block of the file has K+1 shards in the pool (as
    /// mount.sync = "remote").
    #[arg(long)]
    pub sync_remote: bool,
}

/// The node's flags, shared by `mount` and `node`.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Listen on this multiaddr (repeatable; default every interface on port 4737, TCP and
    /// QUIC; port 0 picks a free one). Overrides node.listen.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "BITCLOUD_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,

    /// Space to store for other peers (e.g. 50G; overrides node.offer).
    #[arg(long, value_name = "SIZE")]
    pub offer: Option<String>,

    /// Do not look for peers on the local network (mDNS).
    #[arg(long, env = "BITCLOUD_NO_MDNS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_mdns: bool,
}

impl NodeArgs {
    pub fn overrides(&self) -> crate::daemon::network::NodeOverrides {
        crate::daemon::network::NodeOverrides {
            listen: self.listen.clone(),
            offer: self.offer.clone(),
            no_mdns: self.no_mdns,
        }
    }
}

/// Creates a missing mountpoint if it lies inside the user's home directory (elsewhere a
/// typo should not silently make directories).
fn create_mountpoint_in_home(mountpoint: &std::path::Path) -> Result<()> {
    if std::fs::symlink_metadata(mountpoint).is_ok() {
        return Ok(());
    }
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return Ok(());
    };
    let absolute = std::path::absolute(mountpoint)?;
    let climbs = absolute
        .components()
        .any(|c| c == std::path::Component::ParentDir);
    if home.as_os_str().is_empty()
        || home == std::path::Path::new("/")
        || climbs
        || !absolute.starts_with(&home)
    {
        return Ok(());
    }
    std::fs::create_dir_all(&absolute)
        .with_context(|| format!("creating the mountpoint {}", absolute.display()))?;
    eprintln!("bitcloud: created the mountpoint {}", absolute.display());
    Ok(())
}

pub fn run(paths: &Paths, args: MountArgs) -> Result<()> {
    let identity = paths.identity_file();
    let has_identity = identity.exists();
    let has_volume = paths.volume_dir().join("meta.redb").exists();
    if !has_identity && !has_volume {
        if args.no_init {
            bail!(
                "not initialised: no volume under {} (run `bitcloud init`, or mount without --no-init to create one)",
                paths.config_dir.display()
            );
        }
        // First run: make the volume, and say so plainly (the identity must be backed up).
        let created = super::init::create(paths, args.passphrase_file.as_deref(), 1 << 20, None)
            .context("creating a new volume for this first mount")?;
        for line in created.summary() {
            eprintln!("{line}");
        }
    } else if !has_identity {
        bail!(
            "the volume in {} has no identity file ({} is missing): restore it from your backup",
            paths.volume_dir().display(),
            identity.display()
        );
    } else if !has_volume {
        bail!(
            "{} exists but there is no volume in {} (`bitcloud recover` brings it back from the pool; or remove the identity and mount again to start a new volume)",
            identity.display(),
            paths.volume_dir().display()
        );
    }
    create_mountpoint_in_home(&args.mountpoint)?;
    let mut config = Config::load(&paths.config_file())?;
    let m = &mut config.mount;
    m.seal_threads = args.seal_threads.unwrap_or(m.seal_threads);
    m.checkpoint_secs = args.checkpoint_secs.unwrap_or(m.checkpoint_secs);
    m.fuse_threads = args.fuse_threads.unwrap_or(m.fuse_threads);
    m.write_buffer_mib = args.write_buffer_mib.unwrap_or(m.write_buffer_mib);
    m.writeback_secs = args.writeback_secs.unwrap_or(m.writeback_secs);
    if args.sync_remote {
        m.sync = "remote".into();
    }
    if let Some(s) = &args.cache_size {
        config.cache.size = Some(s.clone());
    }
    if let Some(o) = &args.node.offer {
        config.node.offer = o.clone();
    }
    config
        .validate(&paths.config_file())
        .context("checking the command-line overrides")?;
    let keys = super::passphrase::load_keys(&identity, args.passphrase_file.as_deref())?;
    run_mount(
        paths,
        MountRequest {
            mountpoint: args.mountpoint,
            options: args.options,
            keys,
            config,
            node: args.node.overrides(),
        },
    )
}
