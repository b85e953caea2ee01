//! `bitcloud node`: run a storage-only node in the foreground (see `daemon::node`).

use anyhow::Result;
use clap::Args;

use super::mount::NodeArgs;
use crate::config::{Config, Paths};

#[derive(Debug, Args)]
pub struct NodeCmdArgs {
    #[command(flatten)]
    pub node: NodeArgs,
}

pub fn run(paths: &Paths, args: NodeCmdArgs) -> Result<()> {
    let mut config = Config::load(&paths.config_file())?;
    if let Some(o) = &args.node.offer {
        config.node.offer = o.clone();
        config.validate(&paths.config_file())?;
    }
    crate::daemon::node::run_node(paths, &config, args.node.overrides())
}
