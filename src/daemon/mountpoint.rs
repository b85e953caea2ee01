//! Mountpoint checks: does it exist, is something mounted there, is it a dead FUSE mount
//! ("Transport endpoint is not connected") that we should detach before mounting again.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One line of /proc/mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
}

/// Undoes the octal escapes /proc/mounts uses for spaces and the like.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl MountEntry {
    /// Whether this is a bitcloud mount. As root, fuser mounts with mount(2) and the type
    /// shows as plain `fuse`; through fusermount3 it is `fuse.bitcloud`. The source is ours.
    pub fn is_bitcloud(&self) -> bool {
        self.fstype == "fuse.bitcloud" || (self.fstype == "fuse" && self.source == "bitcloud")
    }
}

/// Every current mount.
pub fn mounts() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let source = unescape(f.next()?);
            let target = PathBuf::from(unescape(f.next()?));
            let fstype = f.next()?.to_string();
            Some(MountEntry {
                source,
                target,
                fstype,
            })
        })
        .collect()
}

/// The mount at exactly `path`, if any (the last one wins, as the kernel shows it).
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().rfind(|m| m.target == path)
}

/// Whether `path` is a FUSE mount whose server is gone. `stat` alone can be answered from
/// the kernel's attribute cache, so this also asks for `statfs`, which always reaches the
/// server (and fails with ENOTCONN when it is dead).
pub fn is_stale(path: &Path) -> bool {
    if matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)) {
        return true;
    }
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// How long detaching a dead mount may take before the mount goes ahead anyway.
const DETACH_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Detaches a dead mount at `path` (lazy unmount), in bounded time.
///
/// A lazy unmount takes the mount out of the namespace as soon as the kernel starts it; the
/// teardown of the dead connection that follows (dropping its inodes and pages) runs in the
/// task that made the call and has been seen to take minutes (a restarted mount sat 20 s to
/// over 2 min in its `fusermount3 -u -z` child). So the call runs on a thread of its own (as
/// root: umount2 directly; otherwise the setuid fusermount3), and this waits only until the
/// dead mount is gone from the mount table, at most [`DETACH_WITHIN`], logging how long it
/// took; the teardown may go on in the background.
pub fn detach(path: &Path) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let before = mount_at(path);
    let target = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bitcloud-detach".into())
        .spawn(move || {
            let _ = tx.send(lazy_unmount(&target));
        })?;
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(20)) {
            Ok(result) => {
                log_detach(path, started);
                return result;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::other("the detach thread died"));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        // Gone from the table (or replaced): free to mount, whatever the thread still does.
        if before.is_some() && mount_at(path) != before && !is_stale(path) {
            tracing::warn!(target: "bitcloud::daemon", path = %path.display(), waited_ms = started.elapsed().as_millis() as u64, "the dead mount is detached; its teardown goes on in the background");
            return Ok(());
        }
        if started.elapsed() > DETACH_WITHIN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "detaching the dead mount at {} did not finish within {} s",
                    path.display(),
                    DETACH_WITHIN.as_secs()
                ),
            ));
        }
    }
}

fn log_detach(path: &Path, started: std::time::Instant) {
    let ms = started.elapsed().as_millis() as u64;
    if ms > 1000 {
        tracing::warn!(target: "bitcloud::daemon", path = %path.display(), ms, "detaching the dead mount was slow");
    } else {
        tracing::info!(target: "bitcloud::daemon", path = %path.display(), ms, "dead mount detached");
    }
}

/// umount2(MNT_DETACH) as root, `fusermount3 -u -z` otherwise.
fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: geteuid cannot fail; c is a valid NUL-terminated path.
    if unsafe { libc::geteuid() } == 0
        && unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0
    {
        return Ok(());
    }
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg("--")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(std::io::Error::other(if msg.is_empty() {
        "fusermount3 -u -z failed".to_string()
    } else {
        msg
    }))
}

/// Unmounts `path` (not lazily): fails with EBUSY while files are open.
pub fn unmount(path: &Path) -> std::io::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        return Err(std::io::Error::last_os_error());
    }
    let out = Command::new("fusermount3").arg("-u").arg(path).output()?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(std::io::Error::other(if msg.is_empty() {
        "fusermount3 -u failed".to_string()
    } else {
        msg
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn proc_root_is_listed() {
        assert!(mounts().iter().any(|m| m.target == Path::new("/")));
    }
}
