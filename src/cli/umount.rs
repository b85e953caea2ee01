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

    /// Seconds to wait, without progress, for the mount process to finish writing (and
    /// uploading) after the unmount.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,

    /// Do not wait for blocks still to be uploaded to the pool (the next mount uploads
    /// them); say how much is only on this machine.
    #[arg(long)]
    pub no_wait: bool,
}

/// What the mount still has to write to disk and to the pool, if it answers (`pending`,
/// not `status`: this is polled every 50 ms while the mount flushes).
fn pending(paths: &Paths) -> Option<(u64, u64)> {
    let line = control::request(&paths.control_socket(), "pending").ok()?;
    let v = serde_json::from_str::<serde_json::Value>(&line).ok()?;
    Some((
        v.get("pending_bytes")?.as_u64()?,
        v.get("upload_pending_bytes")
            .and_then(|b| b.as_u64())
            .unwrap_or(0),
    ))
}

/// Blocks and bytes only on this machine, read from the database once the mount is gone.
fn local_only(paths: &Paths) -> Option<(u64, u64)> {
    let meta = crate::meta::MetaStore::open(&paths.volume_dir().join("meta.redb")).ok()?;
    let (blocks, bytes, _) = meta.read().ok()?.upload_totals().ok()?;
    Some((blocks, bytes))
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
    if args.no_wait {
        let _ = control::request(&paths.control_socket(), "no-wait");
    }
    if let Err(e) = mountpoint::unmount(&canonical) {
        bail!(
            "cannot unmount {}: {e} (close the files open there, then try again)",
            canonical.display()
        );
    }
    let lock = paths.lock_file();
    let stall = Duration::from_secs(args.timeout);
    let mut deadline = Instant::now() + stall;
    let mut progress = Progress::new("umount");
    let mut first_disk = None;
    let mut first_upload = None;
    let mut last = None;
    while VolumeLock::is_held(&lock) {
        if Instant::now() > deadline {
            bail!(
                "unmounted, but the mount process made no progress for {} s (still running; see its log)",
                args.timeout
            );
        }
        // The mount answers on its control socket while it flushes and uploads: show how
        // much is left; the deadline counts from the last progress.
        if let Some((disk, upload)) = pending(paths) {
            if last != Some((disk, upload)) {
                deadline = Instant::now() + stall;
                last = Some((disk, upload));
            }
            let total = *first_disk.get_or_insert(disk);
            if disk > 0 || (total > 0 && upload == 0) {
                progress.update(
                    "writing buffered data",
                    total.saturating_sub(disk),
                    total,
                    true,
                );
            } else if upload > 0 && !args.no_wait {
                let total = *first_upload.get_or_insert(upload);
                progress.update(
                    "uploading to the pool",
                    total.saturating_sub(upload),
                    total,
                    true,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(total) = first_disk.filter(|t| *t > 0) {
        progress.update("writing buffered data", total, total, true);
    }
    if let Some(total) = first_upload.filter(|t| *t > 0) {
        progress.update("uploading to the pool", total, total, true);
    }
    progress.finish();
    println!("bitcloud: unmounted {}", canonical.display());
    // Said when it matters: asked not to wait, or a pool is configured (in single-node
    // mode every block is local only, and that is expected).
    let pool_configured = crate::config::Config::load(&paths.config_file())
        .is_ok_and(|c| !c.node.bootstrap.is_empty());
    if let Some((blocks, bytes)) = local_only(paths)
        .filter(|(b, _)| *b > 0)
        .filter(|_| args.no_wait || pool_configured)
    {
        println!(
            "bitcloud: {} in {blocks} blocks is only on this machine; the next mount uploads it",
            crate::units::bytes(bytes)
        );
    }
    Ok(())
}
