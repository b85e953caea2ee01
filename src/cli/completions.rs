//! `bitcloud completions SHELL` and the hidden `bitcloud manpage`: generated from the clap
//! definitions, so they can never drift from the real command line.

use anyhow::Result;
use clap::{Args, CommandFactory};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "bitcloud", &mut std::io::stdout());
    Ok(())
}

/// Writes the roff man page, bitcloud(1): synopsis, options, subcommands, exit status, files.
pub fn manpage() -> Result<()> {
    clap_mangen::Man::new(super::Cli::command()).render(&mut std::io::stdout())?;
    Ok(())
}
