//! The mount's lifecycle: checks, locking, key loading, the FUSE session, signals, periodic
//! checkpoints, the control socket, and an orderly stop.
//!
//! Loop of a running mount (tokio, current thread):
//! 1. wait for SIGTERM / SIGINT (unmount), SIGHUP (config reload: checkpoint interval, write
//!    buffer and writeback age apply at once), an `umount` request on the control socket, the
//!    FUSE session ending (someone ran `fusermount3 -u`), or the checkpoint tick;
//! 2. on the tick, hand blocks dirty for longer than `writeback_secs` to the sealers
//!    (`Volume::write_back`) and make committed changes durable (`Volume::checkpoint`), both
//!    off the loop thread;
//! 3. on a stop request, unmount (lazily if files are still open), wait for the session thread,
//!    then flush every buffer and checkpoint (`Volume::shutdown`) before exiting.
//!
//! What survives a stop that is not clean (kill -9, power loss): everything up to the last
//! checkpoint or fsync; the next mount detaches the dead mountpoint and finishes interrupted
//! deletions (see `Volume::load`).

pub mod control;
pub mod fusemount;
pub mod mountpoint;
pub mod network;
pub mod node;
pub mod notify;
pub mod status;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::config::{Config, Paths};
use crate::fuse::BitcloudFs;
use crate::keys::VolumeKeys;
use crate::volume::Volume;

/// An exclusive lock on the volume, held for as long as it is mounted.
#[derive(Debug)]
pub struct VolumeLock {
    _file: File,
}

impl VolumeLock {
    /// Takes the lock or says who holds it.
    pub fn acquire(path: &Path) -> Result<VolumeLock> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: flock on a valid open descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            bail!(
                "the volume is already mounted by another bitcloud process (pid {})",
                holder.trim()
            );
        }
        file.set_len(0)?;
        std::fs::write(path, std::process::id().to_string())?;
        Ok(VolumeLock { _file: file })
    }

    /// Whether some process holds the lock at `path` right now.
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return false;
        };
        // SAFETY: flock on a valid open descriptor; released when `file` drops.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        rc != 0
    }
}

/// Everything `bitcloud mount` was asked.
#[derive(Debug)]
pub struct MountRequest {
    pub mountpoint: PathBuf,
    /// `-o` options, already split at commas.
    pub options: Vec<String>,
    pub keys: VolumeKeys,
    pub config: Config,
    /// Command-line overrides of `[node]`.
    pub node: network::NodeOverrides,
}

/// Applies the pool settings of `config` to the volume (at mount and on SIGHUP).
fn apply_pool_settings(volume: &Volume, config: &Config) -> Result<()> {
    if let Some(s) = &config.pool.shards {
        let (k, m) = crate::config::parse_shards(s).map_err(anyhow::Error::msg)?;
        volume.set_scheme(k, m);
    }
    let limit = match &config.cache.size {
        Some(s) => Some(crate::units::parse_bytes(s).map_err(anyhow::Error::msg)?),
        None => None,
    };
    volume.set_cache_limit(limit);
    let (k, _) = volume.scheme();
    volume.set_sync_remote((config.mount.sync == "remote").then(|| {
        (
            k as usize + 1,
            Duration::from_secs(config.pool.sync_timeout_secs),
        )
    }));
    Ok(())
}

/// Checks the mountpoint, detaching a dead mount left by a crash. Returns its canonical path.
pub fn prepare_mountpoint(path: &Path) -> Result<PathBuf> {
    if mountpoint::is_stale(path) {
        tracing::warn!(target: "bitcloud::daemon", path = %path.display(), "detaching a dead mount left by an earlier crash");
        mountpoint::detach(path)
            .with_context(|| format!("detaching the dead mount at {}", path.display()))?;
    }
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "mountpoint {} does not exist (create it with mkdir)",
            path.display()
        ),
        _ => anyhow!("mountpoint {}: {e}", path.display()),
    })?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", path.display());
    }
    let canonical = std::fs::canonicalize(path)?;
    if let Some(m) = mountpoint::mount_at(&canonical) {
        if m.is_bitcloud() {
            bail!(
                "{} is already mounted (a bitcloud volume is mounted there)",
                canonical.display()
            );
        }
        bail!(
            "mountpoint {} is busy: {} ({}) is mounted there",
            canonical.display(),
            m.source,
            m.fstype
        );
    }
    Ok(canonical)
}

/// Mounts the volume and serves it until unmounted or signalled. Blocks.
pub fn run_mount(paths: &Paths, req: MountRequest) -> Result<()> {
    // Signal handlers first: a SIGTERM that arrives while mounting, or just after READY=1
    // (systemd stopping a unit that has just started), must unmount cleanly, not kill the
    // process with the default action and leave a dead mount (seen in tests under load).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signals = {
        let _in_runtime = runtime.enter();
        Signals::install()?
    };
    let spec = fusemount::MountSpec::parse(&req.options)?;
    let mountpoint = prepare_mountpoint(&req.mountpoint)?;
    let _lock = VolumeLock::acquire(&paths.lock_file())?;
    let (volume, recovery) =
        Volume::load(&paths.volume_dir(), req.keys, req.config.mount.seal_threads)
            .context("opening the volume")?;
    volume.set_write_buffer(req.config.mount.write_buffer_mib << 20);
    volume.set_atime_rules(spec.atime);
    if recovery.orphans_removed + recovery.stray_blocks_removed > 0 {
        tracing::info!(target: "bitcloud::daemon", ?recovery, "finished work interrupted by an unclean stop");
    }
    apply_pool_settings(&volume, &req.config)?;
    let net = network::start(paths, network::node_config(paths, &req.config, &req.node)?)?;
    let pool = crate::pool::Pool::start(
        &volume,
        net.handle(),
        net.runtime.handle().clone(),
        crate::pool::PoolConfig {
            read_timeout: Duration::from_secs(req.config.pool.read_timeout_secs),
            repair_interval: Duration::from_secs(req.config.pool.repair_interval_secs),
            repair_grace: Duration::from_secs(req.config.pool.repair_grace_secs),
            repair_margin: req.config.pool.repair_margin,
            audit_interval: Duration::from_secs(req.config.pool.audit_interval_secs),
            backup_interval: Duration::from_secs(req.config.pool.backup_secs),
            node_key: std::fs::read(paths.node_key_file())
                .ok()
                .map(|b| crate::pool::NodeKeyBytes(Arc::new(zeroize::Zeroizing::new(b)))),
            ..Default::default()
        },
    );

    let mut fuse_config = fuser::Config::default();
    fuse_config.acl = spec.acl;
    fuse_config.n_threads = Some(req.config.mount.fuse_threads);
    let (fuse_fd, _auto_unmount) = fusemount::mount(&mountpoint, &spec)
        .with_context(|| format!("mounting at {}", mountpoint.display()))?
        .into_parts();
    let session = fuser::Session::from_fd(
        BitcloudFs::new(volume.clone()),
        fuse_fd,
        spec.acl,
        fuse_config,
    )
    .with_context(|| format!("starting the FUSE session at {}", mountpoint.display()))?;
    let background = session.spawn().context("starting the FUSE session")?;

    // Ready only once the mount answers: stat of the root goes through our getattr.
    let root = std::fs::metadata(&mountpoint).context("the new mount does not answer")?;
    if root.ino() != crate::ids::InodeNo::ROOT.0 {
        bail!(
            "the mount at {} did not come up (root inode {})",
            mountpoint.display(),
            root.ino()
        );
    }

    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let control_stop = stop_tx.clone();
    let no_wait = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let control = control::ControlServer {
        path: paths.control_socket(),
        volume: Some(Arc::downgrade(&volume)),
        mountpoint: Some(mountpoint.clone()),
        net: Some(control::NetCtl {
            node: net.handle(),
            rt: net.runtime.handle().clone(),
            config_file: paths.config_file(),
        }),
        on_umount: Box::new(move || {
            let _ = control_stop.try_send("umount request");
        }),
        no_wait: no_wait.clone(),
    };
    if let Err(e) = control.spawn() {
        tracing::warn!(target: "bitcloud::daemon", error = %e, "control socket unavailable; status will read the database");
    }
    tracing::info!(target: "bitcloud::daemon", mountpoint = %mountpoint.display(), "mounted");
    eprintln!(
        "bitcloud: mounted at {} (Ctrl-C or `bitcloud umount {}` to stop)",
        mountpoint.display(),
        mountpoint.display()
    );
    let me = net.handle();
    eprintln!("bitcloud: node {}", me.id);
    for a in me.listen_addrs() {
        eprintln!("bitcloud:   listening on {a}");
    }
    notify::notify("READY=1");

    let mut signals = signals;
    let reason = runtime.block_on(wait_for_stop(
        &mut signals,
        volume.clone(),
        stop_rx,
        background,
        &mountpoint,
        (paths.config_file(), req.config.clone()),
    ))?;
    tracing::info!(target: "bitcloud::daemon", reason, "stopping");
    notify::notify("STOPPING=1");
    let pending = volume.pending_bytes();
    let flushing = std::time::Instant::now();
    if pending > 0 {
        eprintln!(
            "bitcloud: writing {} of buffered data to disk before exiting",
            crate::units::bytes(pending)
        );
    }
    volume
        .shutdown()
        .context("flushing the volume at unmount")?;
    if pending > 0 {
        eprintln!(
            "bitcloud: buffered data on disk after {:.1} s",
            flushing.elapsed().as_secs_f64()
        );
    }
    let uploaded = runtime.block_on(wait_for_uploads(
        &volume,
        &net.handle(),
        &no_wait,
        &mut signals,
    ));
    if uploaded && !no_wait.load(std::sync::atomic::Ordering::SeqCst) {
        publish_metadata(&pool, &net.handle());
    }
    pool.stop();
    net.stop();
    // Placements recorded while waiting become durable.
    volume
        .checkpoint()
        .context("the last checkpoint at unmount")?;
    let _ = std::fs::remove_file(paths.control_socket());
    // Close the database before the volume lock goes (with `_lock`, at return): a mount
    // started the moment `umount` returns must find it free. Control requests in flight
    // may hold the volume a moment longer.
    let closed = Arc::downgrade(&volume);
    drop(volume);
    let closing = std::time::Instant::now();
    while closed.strong_count() > 0 && closing.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("bitcloud: unmounted {}", mountpoint.display());
    Ok(())
}

/// A write-buffer peak above this makes the daemon return freed memory once it drains.
const TRIM_AFTER_BYTES: u64 = 32 << 20;

/// The signals the mount handles, registered before anything can be interrupted.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers (inside a tokio runtime context); signals that arrive from now
    /// on wait in their streams until `wait_for_stop` reads them.
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Stop waiting for uploads when none finished for this long (no peers, all refusing).
const UPLOAD_STALL: Duration = Duration::from_secs(30);

/// How long unmount waits for the metadata backup to be published.
const BACKUP_AT_UNMOUNT: Duration = Duration::from_secs(60);

/// Publishes the metadata backup before the mount stops (when it has storage peers), so
/// that the pool holds the volume as it is now.
fn publish_metadata(pool: &crate::pool::Pool, node: &crate::node::NodeHandle) {
    if !node.pool_peers().iter().any(|(_, s)| s.offered > 0) {
        return;
    }
    eprintln!("bitcloud: publishing the volume's metadata to the pool");
    match pool.backup_now(BACKUP_AT_UNMOUNT) {
        Ok(seq) => eprintln!("bitcloud: the pool holds the volume's metadata (backup #{seq})"),
        Err(e) if e.contains("recovered on another machine") => eprintln!("bitcloud: {e}"),
        Err(e) => eprintln!(
            "bitcloud: the volume's metadata was not published ({e}); the next mount publishes it"
        ),
    }
}

/// Waits until every block is in the pool, unless asked not to (`umount --no-wait`, a
/// second SIGINT/SIGTERM) or no upload has finished for [`UPLOAD_STALL`]. What is left is
/// uploaded by the next mount. Returns whether every block is in the pool.
async fn wait_for_uploads(
    volume: &Volume,
    node: &crate::node::NodeHandle,
    no_wait: &std::sync::atomic::AtomicBool,
    signals: &mut Signals,
) -> bool {
    let pending = || {
        volume
            .remote_status()
            .map(|r| (r.pending_blocks, r.pending_bytes))
            .unwrap_or((0, 0))
    };
    let (mut blocks, bytes) = pending();
    if blocks == 0 {
        return true;
    }
    let peers = node
        .pool_peers()
        .iter()
        .filter(|(_, s)| s.offered > 0)
        .count();
    if peers == 0 || no_wait.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!(
            "bitcloud: {} in {blocks} blocks is only on this machine (uploads resume at the next mount)",
            crate::units::bytes(bytes)
        );
        return false;
    }
    eprintln!(
        "bitcloud: uploading {} in {blocks} blocks to the pool before exiting (`bitcloud umount --no-wait` or Ctrl-C again to leave it for the next mount)",
        crate::units::bytes(bytes)
    );
    let mut last_progress = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if no_wait.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let (now_blocks, _) = pending();
        if now_blocks == 0 {
            eprintln!("bitcloud: every block is in the pool");
            return true;
        }
        if now_blocks < blocks {
            blocks = now_blocks;
            last_progress = tokio::time::Instant::now();
        } else if last_progress.elapsed() > UPLOAD_STALL {
            break;
        }
    }
    let (blocks, bytes) = pending();
    eprintln!(
        "bitcloud: {} in {blocks} blocks is still only on this machine (uploads resume at the next mount)",
        crate::units::bytes(bytes)
    );
    false
}

async fn wait_for_stop(
    signals: &mut Signals,
    volume: Arc<Volume>,
    mut stop_rx: tokio::sync::mpsc::Receiver<&'static str>,
    background: fuser::BackgroundSession,
    mountpoint: &Path,
    (config_path, mut config): (PathBuf, Config),
) -> Result<&'static str> {
    let Signals { term, int, hup } = signals;
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bitcloud-session".into())
        .spawn(move || {
            let _ = done_tx.send(background.join());
        })?;
    let mut tick = tokio::time::interval(Duration::from_secs(config.mount.checkpoint_secs));
    // Set by a write burst that filled much of the write buffer: once it has drained, the
    // freed block buffers go back to the system (glibc keeps them otherwise: the mount sat at
    // ~330 MiB after a 256 MiB random-write run).
    let mut trim_owed = false;
    let reason = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            Some(r) = stop_rx.recv() => break r,
            _ = hup.recv() => {
                // The checkpoint interval, write buffer and writeback age change at once; the
                // thread counts apply at the next mount. A bad file is reported and the old
                // values kept.
                match Config::load(&config_path) {
                    Ok(new) => {
                        if new.mount.checkpoint_secs != config.mount.checkpoint_secs {
                            tick = tokio::time::interval(Duration::from_secs(new.mount.checkpoint_secs));
                        }
                        volume.set_write_buffer(new.mount.write_buffer_mib << 20);
                        if let Err(e) = apply_pool_settings(&volume, &new) {
                            eprintln!("bitcloud: SIGHUP: pool settings not applied: {e:#}");
                        }
                        if new.mount.seal_threads != config.mount.seal_threads
                            || new.mount.fuse_threads != config.mount.fuse_threads
                        {
                            tracing::warn!(target: "bitcloud::daemon", "SIGHUP: thread counts change at the next mount");
                        }
                        eprintln!(
                            "bitcloud: SIGHUP: config reloaded (checkpoint every {} s, write buffer {} MiB, writeback after {} s)",
                            new.mount.checkpoint_secs, new.mount.write_buffer_mib, new.mount.writeback_secs
                        );
                        config = new;
                    }
                    Err(e) => eprintln!("bitcloud: SIGHUP: config not reloaded, keeping the old one: {e}"),
                }
            }
            r = &mut done_rx => {
                if let Ok(Err(e)) = r {
                    tracing::error!(target: "bitcloud::daemon", error = %e, "FUSE session ended with an error");
                }
                return Ok("unmounted externally");
            }
            _ = tick.tick() => {
                // Partly written blocks older than writeback_secs go to the sealers; their
                // commits are made durable by this or the next checkpoint.
                let age = Duration::from_secs(config.mount.writeback_secs);
                let v = volume.clone();
                let _ = tokio::task::spawn_blocking(move || v.write_back(age)).await;
                trim_owed |= volume.take_write_buffer_peak() >= TRIM_AFTER_BYTES;
                if trim_owed && volume.pending_bytes() == 0 {
                    trim_owed = false;
                    // SAFETY: malloc_trim only returns free heap pages to the kernel.
                    let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
                }
                if volume.needs_checkpoint() || volume.orphans_waiting() {
                    let v = volume.clone();
                    let r = tokio::task::spawn_blocking(move || v.checkpoint_tick()).await;
                    if let Ok(Err(e)) = r {
                        tracing::error!(target: "bitcloud::daemon", error = %e, "checkpoint failed");
                    }
                }
            }
        }
    };
    notify::notify("STOPPING=1");
    // fuser's own unmounter is empty once the session is spawned: unmount by path.
    if let Err(e) = mountpoint::unmount(mountpoint) {
        tracing::warn!(target: "bitcloud::daemon", error = %e, "unmount failed (files still open?); detaching lazily");
        mountpoint::detach(mountpoint)
            .with_context(|| format!("unmounting {}", mountpoint.display()))?;
    }
    let _ = done_rx.await;
    Ok(reason)
}
