//! `bitcloud init`: identity, keys, empty volume, default config.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

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

    /// Erasure scheme of the volume's blocks in the pool, K+M: each block becomes K data
    /// and M parity shards on K+M distinct peers, any K of which rebuild it. Default 4+4
    /// (pools of 8 or more); 3+3 suits a pool of 6. Changeable later for new blocks
    /// (pool.shards in config.toml).
    #[arg(long, value_name = "K+M", value_parser = parse_shards_arg)]
    pub shards: Option<(u8, u8)>,
}

fn parse_shards_arg(s: &str) -> Result<(u8, u8), String> {
    crate::config::parse_shards(s)
}

pub fn run(paths: &Paths, args: InitArgs) -> Result<()> {
    let created = create(
        paths,
        args.passphrase_file.as_deref(),
        args.block_size,
        args.shards,
    )?;
    for line in created.summary() {
        println!("{line}");
    }
    println!("Next: bitcloud mount ~/cloud");
    Ok(())
}

/// What [`create`] made.
#[derive(Debug)]
pub struct Created {
    identity_path: PathBuf,
    public_key: String,
    volume_dir: PathBuf,
    config: PathBuf,
    protected: bool,
    shards: (u8, u8),
}

impl Created {
    /// What to tell the user: where everything is, and that the identity must be kept.
    pub fn summary(&self) -> Vec<String> {
        let mut out = vec![
            "bitcloud: initialised a new volume".to_string(),
            format!("  identity     {}", self.identity_path.display()),
            format!("  public key   {}", self.public_key),
            format!("  volume       {}", self.volume_dir.display()),
            format!("  config       {}", self.config.display()),
            format!(
                "  shards       {}+{}: any {} of {} peers rebuild each block",
                self.shards.0,
                self.shards.1,
                self.shards.0,
                self.shards.0 + self.shards.1
            ),
        ];
        if self.protected {
            out.push("  protection   passphrase (age scrypt)".into());
        } else {
            out.push(
                "  protection   NONE: the identity file is unencrypted (mode 0600). Anyone who can"
                    .into(),
            );
            out.push(
                "               read it can read the volume. Set BITCLOUD_PASSPHRASE or use".into(),
            );
            out.push("               --passphrase-file at init to protect it.".into());
        }
        out.push(format!(
            "Keep a copy of {} somewhere safe: it alone recovers the volume.",
            self.identity_path.display()
        ));
        out
    }
}

/// Creates the home's config and data directories (mode 0700).
pub fn make_home_dirs(paths: &Paths) -> Result<()> {
    for dir in [&paths.config_dir, &paths.data_dir] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Creates the identity, the volume and the default config under `paths`.
pub fn create(
    paths: &Paths,
    passphrase_file: Option<&Path>,
    bs: u32,
    shards: Option<(u8, u8)>,
) -> Result<Created> {
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
    make_home_dirs(paths)?;
    let pass = super::passphrase::given(passphrase_file)?;
    let identity = keys::create_identity_file(&identity_path, pass.as_ref())?;
    // SAFETY: getuid/getgid cannot fail.
    let owner = Caller {
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
    };
    Volume::create_with_shards(&paths.volume_dir(), bs, owner, shards)
        .context("creating the volume")?;
    let (k, m) = shards.unwrap_or(crate::volume::remote::DEFAULT_SCHEME);
    let config = paths.config_file();
    if !config.exists() {
        std::fs::write(&config, DEFAULT_CONFIG)
            .with_context(|| format!("writing {}", config.display()))?;
    }
    Ok(Created {
        shards: (k, m),
        identity_path,
        public_key: identity.to_public().to_string(),
        volume_dir: paths.volume_dir(),
        config,
        protected: pass.is_some(),
    })
}
