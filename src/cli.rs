//! The command line (clap). One file per subcommand under `cli/`; this file holds the argument
//! definitions and dispatch. Errors here are `anyhow` with context, printed by `main`.
//!
//! Exit codes: 0 success; 1 any failure (the message names it); 2 bad usage (from clap); 4
//! `fsck` found problems it left. A command that must exit with a code other than 1 without
//! printing an error returns [`ExitStatus`].

mod cache;
mod completions;
mod fsck;
mod init;
mod mount;
pub mod mount_helper;
mod node;
mod passphrase;
mod peers;
mod progress;
mod recover;
pub mod service;
mod status;
mod umount;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Paths;

/// bitcloud: a virtual hard disk whose blocks are encrypted, erasure-coded and spread over a
/// pool of machines. With no peers configured it is a single local encrypted volume.
#[derive(Debug, Parser)]
#[command(name = "bitcloud", version, propagate_version = true, after_long_help = AFTER_HELP)]
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
    /// Show the volume: files, bytes, redundancy, uploads, cache, peers (or, where only a
    /// `bitcloud node` runs, the node).
    Status(status::StatusArgs),
    /// Bring the volume back on a new machine from the identity file alone: its metadata
    /// comes from the pool, its contents are read from the pool as they are used.
    Recover(recover::RecoverArgs),
    /// Run a storage node: hold shards for the pool's other machines (foreground).
    Node(node::NodeCmdArgs),
    /// List known peers, or add one (`peers add MULTIADDR`).
    Peers(peers::PeersArgs),
    /// The local cache of blocks: `cache drop` evicts what the pool holds in full.
    Cache(cache::CacheArgs),
    /// Verify every inode, name and block of the volume (mounted or not); --repair fixes what
    /// can be fixed.
    Fsck(fsck::FsckArgs),
    /// Install or remove the systemd user service that keeps the volume mounted.
    Service(service::ServiceArgs),
    /// Show the mount service's log from the journal (journalctl --user).
    Logs(LogsArgs),
    /// Print shell completions (bash, zsh, fish, ...) to stdout.
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff) to stdout.
    #[command(hide = true)]
    Manpage,
}

const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  failure: the message on stderr names the problem (not initialised, mountpoint missing
     or busy, already mounted, wrong passphrase, bad config.toml key or value, ...)
  2  bad usage (unknown command or option)
  4  fsck: problems found and left (not repairable here, or --repair not given)

Files (with --home DIR everything is under DIR; otherwise the XDG directories):
  ~/.config/bitcloud/identity.age   the identity: the one secret, keep a copy
  ~/.config/bitcloud/config.toml    settings (documented defaults written by init)
  ~/.local/share/bitcloud/volume/   metadata database and encrypted blocks

Signals (mount): SIGINT/SIGTERM unmount cleanly; SIGHUP re-reads config.toml.";

/// An exit with this status and no error message (the command printed its own output).
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct ExitStatus(pub i32);

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = Paths::resolve(cli.home.as_deref())?;
    match cli.command {
        Command::Init(a) => init::run(&paths, a),
        Command::Mount(a) => mount::run(&paths, a),
        Command::Umount(a) => umount::run(&paths, a),
        Command::Status(a) => status::run(&paths, a),
        Command::Node(a) => node::run(&paths, a),
        Command::Recover(a) => recover::run(&paths, a),
        Command::Peers(a) => peers::run(&paths, a),
        Command::Cache(a) => cache::run(&paths, a),
        Command::Fsck(a) => fsck::run(&paths, a),
        Command::Service(a) => service::run(&paths, cli.home.as_deref(), a),
        Command::Logs(a) => logs(a),
        Command::Completions(a) => completions::completions(a),
        Command::Manpage => completions::manpage(),
    }
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Keep printing new lines as they arrive.
    #[arg(short, long)]
    pub follow: bool,
}

/// `bitcloud logs`: the journal of every `bitcloud-mount@` unit of this user.
fn logs(args: LogsArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args([
        "--user",
        "--unit",
        "bitcloud-mount@*",
        "--no-pager",
        "--output",
        "short-iso",
    ]);
    if args.follow {
        cmd.arg("--follow");
    }
    let status = cmd
        .status()
        .context("running journalctl (is systemd installed?)")?;
    if !status.success() {
        anyhow::bail!(
            "journalctl failed ({status}); without the service, the log is the mount's stderr"
        );
    }
    Ok(())
}
