//! `bitcloud status [--json]`: asks the running mount over its control socket, or reads the
//! metadata database directly when nothing is mounted.

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::config::Paths;
use crate::daemon::status::StatusReport;
use crate::daemon::{VolumeLock, control};
use crate::meta::{MetaStore, Reader};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the report as JSON (a stable interface: fields are only added).
    #[arg(long)]
    pub json: bool,
}

fn report(paths: &Paths) -> Result<StatusReport> {
    let db = paths.volume_dir().join("meta.redb");
    if !db.exists() {
        bail!(
            "not initialised: no volume under {} (run `bitcloud init` first)",
            paths.config_dir.display()
        );
    }
    if VolumeLock::is_held(&paths.lock_file()) {
        let line = control::request(&paths.control_socket(), "status")
            .context("the volume is mounted but its control socket does not answer")?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(e) = v.get("error")
        {
            bail!("the mount reported an error: {e}");
        }
        return serde_json::from_str(&line).context("reading the mount's status reply");
    }
    let meta = MetaStore::open(&db).context("opening the metadata database")?;
    let counts = meta.read()?.counts()?;
    Ok(StatusReport::from_counts(
        &counts,
        meta.superblock()?.block_size as u64,
    ))
}

pub fn run(paths: &Paths, args: StatusArgs) -> Result<()> {
    let r = report(paths)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(1) } == 1;
        print!(
            "{}",
            r.render(tty && std::env::var_os("NO_COLOR").is_none())
        );
    }
    Ok(())
}
