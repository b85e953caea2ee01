//! Mounting the FUSE filesystem: `-o` options, and the mount itself.
//!
//! bitcloud mounts by itself rather than through fuser, for three reasons: as root, fuser
//! calls mount(2) with type `fuse` (so /proc/mounts said `fuse`, not `fuse.bitcloud`); it
//! opens /dev/fuse itself before falling back to fusermount3, so an ordinary user failed
//! with a bare "Permission denied" wherever /dev/fuse is root-only, although the setuid
//! fusermount3 could have mounted; and its option set has no atime policies.
//!
//! - As root: open /dev/fuse and mount(2) it with source = fsname and type
//!   `fuse.<subtype>`.
//! - Otherwise (or with `auto_unmount`, which needs a process that outlives us): run the
//!   setuid `fusermount3`, which mounts and passes the /dev/fuse descriptor back over a
//!   socket (SCM_RIGHTS; the `_FUSE_COMMFD` protocol of libfuse).
//!
//! Either way the caller gets the descriptor and hands it to `fuser::Session::from_fd`.

use std::ffi::CString;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use fuser::SessionACL;

use crate::volume::{AtimePolicy, AtimeRules};

/// The default source (fsname) and type suffix (subtype): `bitcloud ... fuse.bitcloud`.
pub const DEFAULT_NAME: &str = "bitcloud";

/// The mount flags fusermount3 accepts by name.
const FUSERMOUNT_FLAGS: &[&str] = &["nosuid", "nodev", "noexec", "sync", "dirsync", "noatime"];

/// What `-o` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// Shown as the source in /proc/mounts.
    pub fsname: String,
    /// The type is `fuse.<subtype>`.
    pub subtype: String,
    pub acl: SessionACL,
    pub auto_unmount: bool,
    pub read_only: bool,
    /// MS_* flags for mount(2).
    pub flags: libc::c_ulong,
    /// The same flags by name, for fusermount3.
    pub flag_names: Vec<&'static str>,
    /// When reads and listings update access times.
    pub atime: AtimeRules,
}

/// Options mount(8) and fstab pass that mean nothing to the mount itself.
fn is_userspace_option(o: &str) -> bool {
    matches!(
        o,
        "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "nofail"
            | "_netdev"
            | "silent"
            | "loud"
    ) || o.starts_with("x-")
        || o.starts_with("comment=")
}

impl MountSpec {
    /// Parses `-o` options (already split at commas).
    pub fn parse(opts: &[String]) -> Result<MountSpec> {
        let mut spec = MountSpec {
            fsname: DEFAULT_NAME.into(),
            subtype: DEFAULT_NAME.into(),
            acl: SessionACL::Owner,
            auto_unmount: false,
            read_only: false,
            flags: 0,
            flag_names: Vec::new(),
            atime: AtimeRules::default(),
        };
        let (mut suid, mut dev) = (false, false);
        // The atime policy: the last of these wins, as for mount(8).
        let mut atime = AtimePolicy::Relative;
        let flag = |spec: &mut MountSpec, name: &'static str, bits: libc::c_ulong| {
            spec.flags |= bits;
            spec.flag_names.retain(|n| *n != name);
            spec.flag_names.push(name);
        };
        for o in opts {
            let o = o.trim();
            match o {
                "" | "default_permissions" | "rw" | "async" | "exec" => {}
                "allow_other" => spec.acl = SessionACL::All,
                "allow_root" => spec.acl = SessionACL::RootAndOwner,
                "auto_unmount" => spec.auto_unmount = true,
                "ro" => {
                    spec.read_only = true;
                    flag(&mut spec, "ro", libc::MS_RDONLY);
                }
                "noexec" => flag(&mut spec, "noexec", libc::MS_NOEXEC),
                "nosuid" => suid = false,
                "suid" => suid = true,
                "nodev" => dev = false,
                "dev" => dev = true,
                "sync" => flag(&mut spec, "sync", libc::MS_SYNCHRONOUS),
                "dirsync" => flag(&mut spec, "dirsync", libc::MS_DIRSYNC),
                "noatime" => atime = AtimePolicy::Never,
                "atime" | "relatime" | "nostrictatime" => atime = AtimePolicy::Relative,
                "strictatime" | "norelatime" => atime = AtimePolicy::Strict,
                "nodiratime" => spec.atime.dirs = false,
                "diratime" => spec.atime.dirs = true,
                "lazytime" => flag(&mut spec, "lazytime", libc::MS_LAZYTIME),
                "nolazytime" => {
                    spec.flags &= !libc::MS_LAZYTIME;
                    spec.flag_names.retain(|n| *n != "lazytime");
                }
                o if o.starts_with("fsname=") => {
                    spec.fsname = checked_name("fsname", &o["fsname=".len()..])?;
                }
                o if o.starts_with("subtype=") => {
                    spec.subtype = checked_name("subtype", &o["subtype=".len()..])?;
                }
                o if o.starts_with("home=") || o.starts_with("passphrase_file=") => bail!(
                    "mount option {o:?} is for mount(8) and fstab (mount.fuse.bitcloud); with `bitcloud mount` use --home / --passphrase-file"
                ),
                o if is_userspace_option(o) => {}
                o => bail!("unknown mount option {o:?} (see `bitcloud mount --help`)"),
            }
        }
        // Like every FUSE mount by default: no set-id programs, no device nodes.
        if !suid {
            flag(&mut spec, "nosuid", libc::MS_NOSUID);
        }
        if !dev {
            flag(&mut spec, "nodev", libc::MS_NODEV);
        }
        let (bits, name) = match atime {
            AtimePolicy::Never => (libc::MS_NOATIME, "noatime"),
            AtimePolicy::Relative => (libc::MS_RELATIME, "relatime"),
            AtimePolicy::Strict => (libc::MS_STRICTATIME, "strictatime"),
        };
        flag(&mut spec, name, bits);
        if !spec.atime.dirs {
            flag(&mut spec, "nodiratime", libc::MS_NODIRATIME);
        }
        // A read-only mount writes nothing, access times included.
        spec.atime.policy = if spec.read_only {
            AtimePolicy::Never
        } else {
            atime
        };
        if spec.auto_unmount && spec.acl == SessionACL::Owner {
            bail!("-o auto_unmount needs -o allow_other or -o allow_root");
        }
        Ok(spec)
    }

    /// The option string for fusermount3 (and for the kernel's own list, as root).
    fn fusermount_options(&self) -> String {
        let mut o = vec![
            format!("fsname={}", self.fsname),
            format!("subtype={}", self.subtype),
            "default_permissions".to_string(),
        ];
        if self.acl != SessionACL::Owner {
            o.push("allow_other".into());
        }
        if self.auto_unmount {
            o.push("auto_unmount".into());
        }
        o.push(if self.read_only { "ro" } else { "rw" }.into());
        // fusermount3 (3.14) knows only the classic flags; relatime (the kernel's default
        // anyway), strictatime, nodiratime and lazytime are the volume's to honour.
        o.extend(
            self.flag_names
                .iter()
                .filter(|n| FUSERMOUNT_FLAGS.contains(n))
                .map(|n| n.to_string()),
        );
        o.join(",")
    }
}

/// fsname and subtype end up in /proc/mounts and in fusermount3's option string: no commas,
/// blanks or control characters.
fn checked_name(what: &str, v: &str) -> Result<String> {
    if v.is_empty()
        || v.len() > 64
        || v.bytes()
            .any(|b| b == b',' || b == b'=' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        bail!(
            "mount option {what}={v:?}: give 1 to 64 characters without commas, '=', blanks or control characters"
        );
    }
    Ok(v.to_string())
}

/// A live FUSE mount: the /dev/fuse descriptor the session serves, and, with
/// `auto_unmount`, the socket that keeps fusermount3 waiting to unmount when we exit.
#[derive(Debug)]
pub struct FuseMount {
    pub fd: OwnedFd,
    _auto_unmount: Option<UnixStream>,
}

/// Keeps fusermount3 waiting to unmount (with `auto_unmount`) for as long as it lives.
#[derive(Debug)]
pub struct AutoUnmountGuard(#[allow(dead_code)] Option<UnixStream>);

impl FuseMount {
    /// The descriptor to serve, and the guard to keep until the process ends.
    pub fn into_parts(self) -> (OwnedFd, AutoUnmountGuard) {
        (self.fd, AutoUnmountGuard(self._auto_unmount))
    }
}

/// Mounts at `mountpoint` (a canonical, existing directory).
pub fn mount(mountpoint: &Path, spec: &MountSpec) -> Result<FuseMount> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 && !spec.auto_unmount {
        match mount_as_root(mountpoint, spec)? {
            Some(fd) => {
                return Ok(FuseMount {
                    fd,
                    _auto_unmount: None,
                });
            }
            None => {
                tracing::debug!(target: "bitcloud::daemon", "mount(2) not permitted here; trying fusermount3")
            }
        }
    }
    mount_with_fusermount(mountpoint, spec)
}

/// mount(2) with our own fsname and type. `None` when the kernel says EPERM (root inside a
/// user namespace without the right capability): fusermount3 may still work.
fn mount_as_root(mountpoint: &Path, spec: &MountSpec) -> Result<Option<OwnedFd>> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!(
                "/dev/fuse does not exist: load the FUSE module (`modprobe fuse`) or install fuse3"
            ),
            _ => anyhow!("cannot open /dev/fuse: {e}"),
        })?;
    let rootmode = std::fs::metadata(mountpoint)
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?
        .mode()
        & libc::S_IFMT;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode={rootmode:o},user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    );
    if spec.acl != SessionACL::Owner {
        data.push_str(",allow_other");
    }
    let source = CString::new(spec.fsname.as_str())?;
    let fstype = CString::new(format!("fuse.{}", spec.subtype))?;
    let target = CString::new(mountpoint.as_os_str().as_bytes())?;
    let data = CString::new(data)?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            spec.flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Ok(None);
        }
        bail!("mount(2) of {} failed: {e}", mountpoint.display());
    }
    Ok(Some(OwnedFd::from(dev)))
}

/// Mounts through the setuid fusermount3, which sends the /dev/fuse descriptor back.
fn mount_with_fusermount(mountpoint: &Path, spec: &MountSpec) -> Result<FuseMount> {
    let (ours, theirs) = UnixStream::pair().context("creating a socket pair for fusermount3")?;
    let their_fd = theirs.as_raw_fd();
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-o")
        .arg(spec.fusermount_options())
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", their_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(their_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(their_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "fusermount3 not found: install FUSE 3 (`sudo apt-get install fuse3`, or your distribution's fuse3 package)"
        ),
        _ => anyhow!("running fusermount3: {e}"),
    })?;
    drop(theirs);
    let received = receive_fd(&ours);
    let stderr_of = |child: &mut std::process::Child| {
        let mut s = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s.trim().to_string()
    };
    let fd = match received {
        Ok(fd) => fd,
        Err(e) => {
            drop(ours);
            let msg = stderr_of(&mut child);
            let _ = child.wait();
            return Err(explain_fusermount_failure(&msg, &e));
        }
    };
    if spec.auto_unmount {
        // fusermount3 waits on the socket and unmounts when it closes (when we exit, however
        // we exit). Reap it in the background then.
        std::thread::Builder::new()
            .name("fusermount3-wait".into())
            .spawn(move || {
                let _ = child.wait();
            })?;
        return Ok(FuseMount {
            fd,
            _auto_unmount: Some(ours),
        });
    }
    drop(ours);
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "fusermount3 mounted but then failed: {}",
            stderr_of(&mut child)
        );
    }
    Ok(FuseMount {
        fd,
        _auto_unmount: None,
    })
}

/// A message for a failed fusermount3 that says what to do about it.
fn explain_fusermount_failure(stderr: &str, recv_error: &std::io::Error) -> anyhow::Error {
    let detail = if stderr.is_empty() {
        recv_error.to_string()
    } else {
        stderr.to_string()
    };
    if stderr.contains("/dev/fuse") && stderr.contains("ermission denied") {
        return anyhow!(
            "cannot open /dev/fuse ({detail}): the FUSE device is not accessible to you. Ask an administrator to run `chmod 0666 /dev/fuse` (or add the udev rule KERNEL==\"fuse\", MODE=\"0666\"), or make fusermount3 setuid root as its package does (`chmod u+s $(command -v fusermount3)`)"
        );
    }
    if stderr.contains("Operation not permitted") || stderr.contains("mount failed") {
        return anyhow!(
            "fusermount3 could not mount ({detail}): it must be setuid root (`ls -l $(command -v fusermount3)` shows -rwsr-xr-x), and the mountpoint must be yours"
        );
    }
    if stderr.contains("user_allow_other") {
        return anyhow!(
            "{detail}: add a line `user_allow_other` to /etc/fuse.conf to let users mount with -o allow_other or allow_root"
        );
    }
    anyhow!("fusermount3 failed: {detail}")
}

/// Receives one descriptor sent with SCM_RIGHTS.
fn receive_fd(sock: &UnixStream) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    // Room for one cmsghdr carrying one int, 8-byte aligned.
    let mut cmsg = [0u64; 8];
    loop {
        // SAFETY: an all-zero msghdr is valid; the buffers it points at outlive recvmsg.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr().cast();
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        // SAFETY: msg is initialised above.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "fusermount3 closed the socket without sending the FUSE descriptor",
            ));
        }
        // SAFETY: msg was filled by recvmsg; the CMSG_* helpers walk its control buffer.
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            if !hdr.is_null()
                && (*hdr).cmsg_level == libc::SOL_SOCKET
                && (*hdr).cmsg_type == libc::SCM_RIGHTS
            {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(hdr).cast::<libc::c_int>());
                if fd >= 0 {
                    return Ok(OwnedFd::from_raw_fd(fd));
                }
            }
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "fusermount3 sent no descriptor",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MountSpec> {
        MountSpec::parse(&s.split(',').map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_are_relatime_nosuid_nodev() {
        let s = parse("").unwrap();
        assert_eq!(
            (s.fsname.as_str(), s.subtype.as_str()),
            ("bitcloud", "bitcloud")
        );
        assert_eq!(s.atime.policy, AtimePolicy::Relative);
        assert!(s.atime.dirs);
        assert_eq!(
            s.flags,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RELATIME
        );
        assert_eq!(
            s.fusermount_options(),
            "fsname=bitcloud,subtype=bitcloud,default_permissions,rw,nosuid,nodev"
        );
    }

    #[test]
    fn names_and_atime_options() {
        let s = parse("fsname=work,subtype=bc2,noatime,nodiratime,lazytime,allow_other").unwrap();
        assert_eq!((s.fsname.as_str(), s.subtype.as_str()), ("work", "bc2"));
        assert_eq!(s.atime.policy, AtimePolicy::Never);
        assert!(!s.atime.dirs);
        assert_ne!(s.flags & libc::MS_LAZYTIME, 0);
        assert_ne!(s.flags & libc::MS_NOATIME, 0);
        assert_eq!(s.acl, SessionACL::All);
        assert_eq!(
            parse("noatime,strictatime").unwrap().atime.policy,
            AtimePolicy::Strict
        );
        assert_eq!(
            parse("strictatime,ro").unwrap().atime.policy,
            AtimePolicy::Never
        );
        assert!(parse("noauto,_netdev,x-systemd.automount,defaults,nofail").is_ok());
    }

    #[test]
    fn bad_options_are_named() {
        for (o, needle) in [
            ("fsname=a b", "fsname"),
            ("subtype=", "subtype"),
            ("fsname=x,y", "unknown mount option \"y\""),
            ("bogus", "bogus"),
            ("auto_unmount", "allow_other"),
            ("home=/x", "mount.fuse.bitcloud"),
        ] {
            let e = parse(o).unwrap_err().to_string();
            assert!(e.contains(needle), "{o}: {e}");
        }
    }
}
