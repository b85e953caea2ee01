//! The control socket: a Unix socket in the runtime directory through which `bitcloud status`
//! and `bitcloud umount` talk to a running mount. One request line, one reply line (JSON).
//! Requests: `status`, `umount`. The socket file is mode 0600: only the owner may talk to it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::status::StatusReport;
use crate::volume::Volume;

/// What the server needs to answer.
pub struct ControlServer {
    pub path: PathBuf,
    pub volume: Arc<Volume>,
    pub mountpoint: PathBuf,
    /// Called on an `umount` request.
    pub on_umount: Box<dyn Fn() + Send + Sync>,
}

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
                        if let Err(e) = server.serve(stream) {
                            tracing::debug!(target: "bitcloud::control", error = %e, "control request failed");
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
        let mut line = String::new();
        BufReader::new((&stream).take_limited()).read_line(&mut line)?;
        let reply = match line.trim() {
            "status" => match self.status() {
                Ok(r) => serde_json::to_string(&r).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
            },
            "umount" => {
                (self.on_umount)();
                serde_json::json!({ "ok": true }).to_string()
            }
            other => {
                serde_json::json!({ "error": format!("unknown request {other:?}") }).to_string()
            }
        };
        let mut w = &stream;
        w.write_all(reply.as_bytes())?;
        w.write_all(b"\n")
    }

    fn status(&self) -> crate::volume::Result<StatusReport> {
        let mut r = StatusReport::from_counts(&self.volume.counts()?, self.volume.block_size());
        r.mounted = true;
        r.mountpoint = Some(self.mountpoint.display().to_string());
        r.pid = Some(std::process::id());
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
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = &stream;
    w.write_all(req.as_bytes())?;
    w.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(line)
}
