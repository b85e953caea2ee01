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

/// Detaches a dead mount at `path` (lazy unmount).
pub fn detach(path: &Path) -> std::io::Result<()> {
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: c is a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
    }
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
