//! `bitcloud fsck [--repair] [--quick] [--json]`: checks every inode, entry, name and block of
//! the volume (see `volume::fsck`). Through the running mount's control socket when mounted,
//! else by opening the volume itself (holding the volume lock, so no mount starts meanwhile).
//!
//! Exit status: 0 no problems (or all repaired), 4 problems left, 1 the check could not run.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::progress::Progress;
use crate::config::Paths;
use crate::daemon::VolumeLock;
use crate::daemon::control;
use crate::volume::Volume;
use crate::volume::fsck::{FsckOptions, FsckProgress, FsckReport};

/// Exit status when problems remain (as fsck(8): "errors left uncorrected").
pub const EXIT_PROBLEMS_LEFT: i32 = 4;

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Fix what can be fixed here: delete stray block files; when not mounted, also correct
    /// reference and link counts and drop entries that point nowhere.
    #[arg(long)]
    pub repair: bool,

    /// Check that every block is present with the right size, without decrypting it.
    #[arg(long)]
    pub quick: bool,

    /// Print the report as JSON (a stable interface: fields are only added).
    #[arg(long)]
    pub json: bool,

    /// Read the identity's passphrase from this file (when not mounted).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl FsckArgs {
    fn options(&self, online: bool) -> FsckOptions {
        FsckOptions {
            verify_data: !self.quick,
            repair: self.repair,
            online,
        }
    }
}

pub fn run(paths: &Paths, args: FsckArgs) -> Result<()> {
    let db = paths.volume_dir().join("meta.redb");
    if !db.exists() || !paths.identity_file().exists() {
        bail!(
            "not initialised: no volume under {} (run `bitcloud init` first)",
            paths.config_dir.display()
        );
    }
    let mut progress = Progress::new("fsck");
    let mut show = |p: &FsckProgress| progress.update(&p.phase, p.done, p.total, p.bytes);
    let report = if VolumeLock::is_held(&paths.lock_file()) {
        online(paths, &args, &mut show)?
    } else {
        offline(paths, &args, &mut show)?
    };
    progress.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if report.unrepaired() > 0 {
        return Err(super::ExitStatus(EXIT_PROBLEMS_LEFT).into());
    }
    Ok(())
}

fn online(
    paths: &Paths,
    args: &FsckArgs,
    show: &mut dyn FnMut(&FsckProgress),
) -> Result<FsckReport> {
    let line = control::request_stream(
        &paths.control_socket(),
        &format!("fsck {}", serde_json::to_string(&args.options(true))?),
        |line| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                return false;
            };
            match v.get("progress").cloned().map(serde_json::from_value) {
                Some(Ok(p)) => {
                    show(&p);
                    true
                }
                _ => false,
            }
        },
    )
    .context("the volume is mounted but its control socket does not answer")?;
    let mut v: serde_json::Value =
        serde_json::from_str(&line).context("reading the mount's fsck reply")?;
    if let Some(e) = v.get("error") {
        bail!("the mount could not check the volume: {e}");
    }
    serde_json::from_value(v["report"].take()).context("reading the mount's fsck report")
}

fn offline(
    paths: &Paths,
    args: &FsckArgs,
    show: &mut dyn FnMut(&FsckProgress),
) -> Result<FsckReport> {
    let _lock = VolumeLock::acquire(&paths.lock_file())?;
    let keys =
        super::passphrase::load_keys(&paths.identity_file(), args.passphrase_file.as_deref())?;
    let (volume, recovery) =
        Volume::load(&paths.volume_dir(), keys, 1).context("opening the volume")?;
    if recovery.orphans_removed + recovery.stray_blocks_removed > 0 {
        eprintln!(
            "bitcloud: finished an interrupted stop first: {} unlinked files deleted, {} unreferenced block files removed",
            recovery.orphans_removed, recovery.stray_blocks_removed
        );
    }
    let report = volume
        .fsck(args.options(false), show)
        .context("checking the volume")?;
    volume.shutdown().context("closing the volume")?;
    Ok(report)
}
