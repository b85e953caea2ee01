//! `bitcloud init`: identity, keys, empty volume, default config.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::config::{DEFAULT_CONFIG, Paths};
use crate::keys;
use crate::volume::{Caller, Volume};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Protect the identity with the passphrase in this file (first line). BITCLOUD_PASSPHRASE
    /// also works. Without either, the identity is stored unprotected (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Block size in bytes: a power of two from 64 KiB to 16 MiB. Fixed for the volume's life.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub block_size: u32,
}

pub fn run(paths: &Paths, args: InitArgs) -> Result<()> {
    let bs = args.block_size;
    if !bs.is_power_of_two() || !(64 << 10..=16 << 20).contains(&bs) {
        bail!("--block-size {bs} is not a power of two between 65536 and 16777216");
    }
    let identity_path = paths.identity_file();
    if identity_path.exists() {
        bail!(
            "already initialised: {} exists (remove it and {} to start over)",
            identity_path.display(),
            paths.data_dir.display()
        );
    }
    if paths.volume_dir().join("meta.redb").exists() {
        bail!(
            "a volume already exists in {} but its identity file is missing",
            paths.volume_dir().display()
        );
    }
    for dir in [&paths.config_dir, &paths.data_dir] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let pass = super::passphrase::given(args.passphrase_file.as_deref())?;
    let identity = keys::create_identity_file(&identity_path, pass.as_ref())?;
    // SAFETY: getuid/getgid cannot fail.
    let owner = Caller {
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
    };
    Volume::create(&paths.volume_dir(), bs, owner).context("creating the volume")?;
    let config = paths.config_file();
    if !config.exists() {
        std::fs::write(&config, DEFAULT_CONFIG)
            .with_context(|| format!("writing {}", config.display()))?;
    }
    println!("bitcloud: initialised a new volume");
    println!("  identity     {}", identity_path.display());
    println!("  public key   {}", identity.to_public());
    println!("  volume       {}", paths.volume_dir().display());
    println!("  config       {}", config.display());
    if pass.is_some() {
        println!("  protection   passphrase (age scrypt)");
    } else {
        println!(
            "  protection   NONE: the identity file is unencrypted (mode 0600). Anyone who can"
        );
        println!("               read it can read the volume. Set BITCLOUD_PASSPHRASE or use");
        println!("               --passphrase-file at init to protect it.");
    }
    println!("Keep a copy of the identity file somewhere safe: it alone recovers the volume.");
    println!("Next: mkdir -p ~/cloud && bitcloud mount ~/cloud");
    Ok(())
}
