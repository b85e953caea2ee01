//! The control socket: a Unix socket in the runtime directory through which `bitcloud status`,
//! `fsck` and `umount` talk to a running mount. One request line; replies are JSON lines.
//! Requests: `status`, `pending` (bytes not yet on disk, cheap to poll) and `umount` (one reply
//! line), `fsck {options}` (`{"progress":..}` lines,
//! then `{"report":..}` or `{"error":..}`). Each connection is served on its own thread, so a
//! long fsck does not hold up `status`. The socket file is mode 0600: only the owner may talk
//! to it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::status::StatusReport;
use crate::node::NodeHandle;
use crate::volume::Volume;
use crate::volume::fsck::{FsckOptions, FsckProgress};

/// What the server needs to answer.
pub struct ControlServer {
    pub path: PathBuf,
    /// The mounted volume (`None` for `bitcloud node`). Weak: the volume (and its
    /// database) closes when the mount drops it, even while this thread waits in accept;
    /// the next mount must find the database free.
    pub volume: Option<Weak<Volume>>,
    pub mountpoint: Option<PathBuf>,
    /// The node, when this process runs one.
    pub net: Option<NetCtl>,
    /// Called on an `umount` (or `stop`) request.
    pub on_umount: Box<dyn Fn() + Send + Sync>,
    /// Set by a `no-wait` request: stop without waiting for uploads.
    pub no_wait: Arc<AtomicBool>,
}

/// The node side of the control socket.
pub struct NetCtl {
    pub node: NodeHandle,
    pub rt: tokio::runtime::Handle,
    /// Where `peers add` remembers addresses.
    pub config_file: PathBuf,
}

/// Set while an fsck runs in this process: one at a time.
static FSCK_RUNNING: AtomicBool = AtomicBool::new(false);

/// Longest request accepted (bytes).
const MAX_REQUEST: usize = 256;

impl ControlServer {
    /// Binds the socket (replacing a stale one) and serves it on a background thread.
    pub fn spawn(self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if self.path.exists() {
            if UnixStream::connect(&self.path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "{} is served by another running bitcloud",
                        self.path.display()
                    ),
                ));
            }
            std::fs::remove_file(&self.path)?;
        }
        let listener = UnixListener::bind(&self.path)?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))?;
        let server = Arc::new(self);
        std::thread::Builder::new().name("bitcloud-control".into()).spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let server = server.clone();
                        let spawned = std::thread::Builder::new()
                            .name("bitcloud-control-conn".into())
                            .spawn(move || {
                                if let Err(e) = server.serve(stream) {
                                    tracing::debug!(target: "bitcloud::control", error = %e, "control request failed");
                                }
                            });
                        if let Err(e) = spawned {
                            tracing::warn!(target: "bitcloud::control", error = %e, "cannot serve a control connection");
                        }
                    }
                    Err(e) => tracing::warn!(target: "bitcloud::control", error = %e, "accept failed"),
                }
            }
        })?;
        Ok(())
    }

    fn serve(&self, stream: UnixStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let volume = match &self.volume {
            Some(weak) => match weak.upgrade() {
                Some(v) => Some(v),
                None => {
                    let mut w = &stream;
                    return w.write_all(b"{\"error\":\"the mount is stopping\"}\n");
                }
            },
            None => None,
        };
        let mut line = String::new();
        BufReader::new((&stream).take_limited()).read_line(&mut line)?;
        let err = |e: String| serde_json::json!({ "error": e }).to_string();
        let reply = match (line.trim(), &volume) {
            ("status", Some(v)) => match self.status(v) {
                Ok(r) => serde_json::to_string(&r).unwrap_or_default(),
                Err(e) => err(e.to_string()),
            },
            ("status", None) => self.node_status(),
            ("pending", v) => {
                let (blocks, bytes) = v
                    .as_ref()
                    .and_then(|v| v.remote_status().ok())
                    .map_or((0, 0), |r| (r.pending_blocks, r.pending_bytes));
                serde_json::json!({
                    "pending_bytes": v.as_ref().map_or(0, |v| v.pending_bytes()),
                    "upload_pending_blocks": blocks,
                    "upload_pending_bytes": bytes,
                })
                .to_string()
            }
            ("umount" | "stop", _) => {
                (self.on_umount)();
                serde_json::json!({ "ok": true }).to_string()
            }
            ("no-wait", _) => {
                self.no_wait.store(true, Ordering::SeqCst);
                serde_json::json!({ "ok": true }).to_string()
            }
            ("peers", v) => match &self.net {
                Some(n) => {
                    let ours = v
                        .as_ref()
                        .and_then(|v| v.shards_by_holder().ok())
                        .unwrap_or_default();
                    let backup = v
                        .as_ref()
                        .and_then(|v| v.backup_shards_by_holder().ok())
                        .unwrap_or_default();
                    serde_json::json!({ "peers": super::network::peer_reports(&n.node, &ours, &backup) })
                        .to_string()
                }
                None => err("this mount runs no node".into()),
            },
            (other, _) if other.starts_with("peers add ") => self.peers_add(&other[10..]),
            ("cache drop", Some(v)) => match v.evict_to(0) {
                Ok(r) => serde_json::json!({ "report": r }).to_string(),
                Err(e) => err(e.to_string()),
            },
            (other, Some(v)) if other.starts_with("fsck ") => {
                match serde_json::from_str::<FsckOptions>(&other[5..]) {
                    Ok(opts) => self.fsck(v, &stream, opts),
                    Err(e) => err(format!("bad fsck request: {e}")),
                }
            }
            (other, _) => err(format!("unknown request {other:?}")),
        };
        let mut w = &stream;
        w.write_all(reply.as_bytes())?;
        w.write_all(b"\n")
    }

    /// Dials `addr` at once and remembers it in config.toml.
    fn peers_add(&self, addr: &str) -> String {
        let err = |e: String| serde_json::json!({ "error": e }).to_string();
        let Some(n) = &self.net else {
            return err("this process runs no node".into());
        };
        let parsed = match crate::node::parse_peer_addr(addr) {
            Ok(a) => a,
            Err(e) => return err(e.to_string()),
        };
        if crate::node::peer_of(&parsed).is_none() {
            return err(format!(
                "{addr} does not end in /p2p/<peer id> (`bitcloud status` on that machine shows its addresses)"
            ));
        }
        let dialled = n.rt.block_on(n.node.dial(parsed.clone()));
        let saved = crate::config::add_bootstrap(&n.config_file, &parsed.to_string());
        match (dialled, saved) {
            (Ok(peer), Ok(added)) => {
                serde_json::json!({ "ok": true, "peer": peer.to_string(), "saved": added })
                    .to_string()
            }
            (Err(e), Ok(_)) => err(format!(
                "{e:#} (saved in config.toml; it is retried in the background)"
            )),
            (_, Err(e)) => err(format!("could not save the address in config.toml: {e}")),
        }
    }

    fn node_status(&self) -> String {
        let Some(n) = &self.net else {
            return serde_json::json!({ "error": "no node" }).to_string();
        };
        serde_json::json!({
            "node": super::network::node_report(&n.node),
            "peers": super::network::peer_reports(&n.node, &Default::default(), &Default::default()),
            "store": super::network::store_report(&n.node).unwrap_or_default(),
            "pid": std::process::id(),
        })
        .to_string()
    }

    /// Runs fsck on the mounted volume, streaming progress lines; returns the last line.
    fn fsck(&self, volume: &Volume, stream: &UnixStream, opts: FsckOptions) -> String {
        if FSCK_RUNNING.swap(true, Ordering::SeqCst) {
            return serde_json::json!({ "error": "an fsck of this volume is already running" })
                .to_string();
        }
        struct Running;
        impl Drop for Running {
            fn drop(&mut self) {
                FSCK_RUNNING.store(false, Ordering::SeqCst);
            }
        }
        let _running = Running;
        // The volume is mounted here, whatever the client says.
        let opts = FsckOptions {
            online: true,
            ..opts
        };
        tracing::info!(target: "bitcloud::control", repair = opts.repair, "fsck started");
        let mut w = stream;
        let mut send = |p: &FsckProgress| {
            let line = serde_json::json!({ "progress": p }).to_string();
            // A client that went away does not stop the check.
            let _ = w
                .write_all(line.as_bytes())
                .and_then(|_| w.write_all(b"\n"));
        };
        let result = volume.fsck(opts, &mut send);
        match result {
            Ok(report) => {
                tracing::info!(target: "bitcloud::control", problems = report.problems.len(), left = report.unrepaired(), "fsck finished");
                serde_json::json!({ "report": report }).to_string()
            }
            Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
        }
    }

    fn status(&self, volume: &Volume) -> crate::volume::Result<StatusReport> {
        let mut r = StatusReport::from_counts(&volume.counts()?, volume.block_size());
        r.mounted = true;
        r.mountpoint = self.mountpoint.as_ref().map(|m| m.display().to_string());
        r.pid = Some(std::process::id());
        r.pending_bytes = volume.pending_bytes();
        (r.committed_changes, r.durable_changes) = volume.commit_counts();
        let (k, m) = volume.scheme();
        r.shards = format!("{k}+{m}");
        if let Some(n) = &self.net {
            r.node = Some(super::network::node_report(&n.node));
            r.peers = super::network::peer_reports(
                &n.node,
                &volume.shards_by_holder()?,
                &volume.backup_shards_by_holder()?,
            );
            r.store = super::network::store_report(&n.node);
        }
        r.set_pool(&volume.remote_status()?);
        Ok(r)
    }
}

trait TakeLimited: std::io::Read + Sized {
    fn take_limited(self) -> std::io::Take<Self> {
        self.take(MAX_REQUEST as u64)
    }
}

impl<R: std::io::Read> TakeLimited for R {}

/// Sends one request to the control socket at `path` and returns the reply line.
pub fn request(path: &Path, req: &str) -> std::io::Result<String> {
    request_stream(path, req, |_| true)
}

/// Sends one request and reads reply lines, handing each to `more` until it returns false or
/// the server closes; returns the last line. Each line must come within 30 s.
pub fn request_stream(
    path: &Path,
    req: &str,
    mut more: impl FnMut(&str) -> bool,
) -> std::io::Result<String> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = &stream;
    w.write_all(req.as_bytes())?;
    w.write_all(b"\n")?;
    let mut reader = BufReader::new(&stream);
    let mut last = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let keep_going = more(line.trim_end());
        last = line;
        if !keep_going {
            break;
        }
    }
    if last.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the mount closed the control connection without replying",
        ));
    }
    Ok(last)
}
