//! `bitcloud cache drop`: evict from this machine every block the pool holds at full
//! redundancy, and say how much could not be, and why.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::config::Paths;
use crate::daemon::control;
use crate::volume::remote::EvictReport;

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Evict every block the pool holds at full redundancy from the local cache now.
    Drop {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(paths: &Paths, args: CacheArgs) -> Result<()> {
    let CacheCommand::Drop { json } = args.command;
    let socket = paths.control_socket();
    let line = control::request(&socket, "cache drop").map_err(|e| {
        anyhow::anyhow!(
            "the volume is not mounted ({e}): the cache is managed by the running mount"
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("{e}");
    }
    let r: EvictReport = serde_json::from_value(v.get("report").cloned().unwrap_or_default())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "bitcloud: evicted {} in {} blocks (the pool holds them in full)",
        crate::units::bytes(r.evicted_bytes),
        r.evicted_blocks
    );
    if r.kept_not_redundant_blocks > 0 {
        println!(
            "bitcloud: kept {} in {} blocks: not yet at full redundancy in the pool (see `bitcloud status`)",
            crate::units::bytes(r.kept_not_redundant_bytes),
            r.kept_not_redundant_blocks
        );
    }
    Ok(())
}
