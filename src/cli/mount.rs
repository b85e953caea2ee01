//! `bitcloud mount MOUNTPOINT`: foreground until unmounted, Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::config::{Config, Paths};
use crate::daemon::{MountRequest, run_mount};

#[derive(Debug, Args)]
pub struct MountArgs {
    /// An existing, empty directory to mount the volume on.
    pub mountpoint: PathBuf,

    /// FUSE mount options, comma-separated, repeatable: allow_other, allow_root, ro, noexec,
    /// nosuid, nodev, noatime, sync, dirsync, auto_unmount (with allow_other/allow_root).
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',')]
    pub options: Vec<String>,

    /// Read the identity's passphrase from this file (first line). BITCLOUD_PASSPHRASE also
    /// works; otherwise you are asked on the terminal.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

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
}

pub fn run(paths: &Paths, args: MountArgs) -> Result<()> {
    let identity = paths.identity_file();
    if !identity.exists() || !paths.volume_dir().join("meta.redb").exists() {
        bail!(
            "not initialised: no volume under {} (run `bitcloud init` first)",
            paths.config_dir.display()
        );
    }
    let mut config = Config::load(&paths.config_file())?;
    let m = &mut config.mount;
    m.seal_threads = args.seal_threads.unwrap_or(m.seal_threads);
    m.checkpoint_secs = args.checkpoint_secs.unwrap_or(m.checkpoint_secs);
    m.fuse_threads = args.fuse_threads.unwrap_or(m.fuse_threads);
    m.write_buffer_mib = args.write_buffer_mib.unwrap_or(m.write_buffer_mib);
    m.writeback_secs = args.writeback_secs.unwrap_or(m.writeback_secs);
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
        },
    )
}
