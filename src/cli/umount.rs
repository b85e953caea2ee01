//! `bitcloud umount MOUNTPOINT`: unmount, then wait for the mount process to finish flushing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;

use super::progress::Progress;
use crate::config::Paths;
use crate::daemon::{VolumeLock, control, mountpoint};

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Where the volume is mounted.
    pub mountpoint: PathBuf,

    /// Seconds to wait for the mount process to finish writing after the unmount.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// What the mount still has to write, if it answers (`pending`, not `status`: this is polled
/// every 50 ms while the mount flushes, and `status` scans the whole metadata database).
fn pending_bytes(paths: &Paths) -> Option<u64> {
    let line = control::request(&paths.control_socket(), "pending").ok()?;
    serde_json::from_str::<serde_json::Value>(&line)
        .ok()?
        .get("pending_bytes")?
        .as_u64()
}

/// Whether this home's running mount serves `mountpoint` (a mount with its own `fsname=` or
/// `subtype=` does not look like bitcloud in /proc/mounts).
fn served_by(paths: &Paths, mountpoint: &std::path::Path) -> bool {
    control::request(&paths.control_socket(), "status")
        .ok()
        .and_then(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .and_then(|v| v.get("mountpoint")?.as_str().map(std::path::PathBuf::from))
        .is_some_and(|p| p == mountpoint)
}

pub fn run(paths: &Paths, args: UmountArgs) -> Result<()> {
    let path = &args.mountpoint;
    if mountpoint::is_stale(path) {
        mountpoint::detach(path)?;
        println!(
            "bitcloud: detached the dead mount at {} (its process had died)",
            path.display()
        );
        return Ok(());
    }
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| anyhow::anyhow!("mountpoint {}: {e}", path.display()))?;
    match mountpoint::mount_at(&canonical) {
        Some(m) if m.is_bitcloud() || served_by(paths, &canonical) => {}
        Some(m) => bail!(
            "{} is not a bitcloud mount (it is {})",
            canonical.display(),
            m.fstype
        ),
        None => bail!("{} is not mounted", canonical.display()),
    }
    if let Err(e) = mountpoint::unmount(&canonical) {
        bail!(
            "cannot unmount {}: {e} (close the files open there, then try again)",
            canonical.display()
        );
    }
    let lock = paths.lock_file();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut progress = Progress::new("umount");
    let mut first_pending = None;
    while VolumeLock::is_held(&lock) {
        if Instant::now() > deadline {
            bail!(
                "unmounted, but the mount process is still flushing after {} s",
                args.timeout
            );
        }
        // The mount answers on its control socket while it flushes: show how much is left.
        if let Some(left) = pending_bytes(paths) {
            let total = *first_pending.get_or_insert(left);
            if total > 0 {
                progress.update(
                    "writing buffered data",
                    total.saturating_sub(left),
                    total,
                    true,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(total) = first_pending.filter(|t| *t > 0) {
        progress.update("writing buffered data", total, total, true);
    }
    progress.finish();
    println!("bitcloud: unmounted {}", canonical.display());
    Ok(())
}
