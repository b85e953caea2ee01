//! The command line (clap). One file per subcommand under `cli/`; this file holds the argument
//! definitions and dispatch. Errors here are `anyhow` with context, printed by `main`.
//!
//! Exit codes: 0 success; 1 any failure (the message names it); 2 bad usage (from clap).

mod init;
mod mount;
mod passphrase;
mod status;
mod umount;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Paths;

/// bitcloud: a virtual hard disk whose blocks are encrypted, erasure-coded and spread over a
/// pool of machines. With no peers configured it is a single local encrypted volume.
#[derive(Debug, Parser)]
#[command(name = "bitcloud", version, propagate_version = true)]
pub struct Cli {
    /// Keep config, keys and data under DIR instead of the XDG directories.
    #[arg(long, global = true, env = "BITCLOUD_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the identity, the volume keys and an empty volume.
    Init(init::InitArgs),
    /// Mount the volume at MOUNTPOINT; stays in the foreground until unmounted.
    Mount(mount::MountArgs),
    /// Unmount a bitcloud mount, waiting until its data is safely on disk.
    Umount(umount::UmountArgs),
    /// Show the volume: files, bytes, dedup savings, blocks by state.
    Status(status::StatusArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = Paths::resolve(cli.home.as_deref())?;
    match cli.command {
        Command::Init(a) => init::run(&paths, a),
        Command::Mount(a) => mount::run(&paths, a),
        Command::Umount(a) => umount::run(&paths, a),
        Command::Status(a) => status::run(&paths, a),
    }
}
