//! `mount.fuse.bitcloud`: the helper mount(8) runs for `mount -t fuse.bitcloud` and for
//! fstab lines of type `fuse.bitcloud`. It is this same binary, called by that name (the
//! Debian package installs the link; `ln -s $(command -v bitcloud)
//! /usr/sbin/mount.fuse.bitcloud` does it by hand).
//!
//! mount(8) calls `mount.fuse.bitcloud SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]` and waits for
//! it to exit, so the helper starts `bitcloud mount` in the background (its own session, its
//! output appended to `mount.log` in the volume's data dir), waits until that process says
//! READY (the sd_notify datagram, on a socket of the helper's own) and exits 0; if the mount
//! fails instead, the helper prints what it said and exits 32, mount(8)'s "mount failure".
//!
//! Options of the helper itself: `home=DIR` (the `--home` of the volume; also taken from
//! SOURCE when that is a directory holding a config.toml) and `passphrase_file=FILE`. Every
//! other option goes to `bitcloud mount -o`; fsname defaults to SOURCE.

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Paths;

/// mount(8)'s exit statuses for helpers.
const EXIT_USAGE: i32 = 1;
const EXIT_MOUNT_FAILED: i32 = 32;

/// How long the helper waits for the mount to come up (opening a large volume after a crash
/// may take a while).
const READY_WITHIN: Duration = Duration::from_secs(120);

/// Whether the binary was started as the mount(8) helper.
pub fn invoked_as_helper(argv0: &str) -> bool {
    let name = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name == "mount.fuse.bitcloud" || name == "mount.bitcloud"
}

/// What mount(8) asked for.
#[derive(Debug, PartialEq, Eq)]
struct HelperArgs {
    source: String,
    mountpoint: PathBuf,
    home: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    options: Vec<String>,
    fake: bool,
}

fn parse(args: &[String]) -> Result<HelperArgs, String> {
    let mut positional = Vec::new();
    let mut raw_options = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => raw_options.push(it.next().ok_or("-o needs a value")?.clone()),
            "-t" | "-N" => {
                it.next().ok_or(format!("{a} needs a value"))?;
            }
            s if s.starts_with("-o") => raw_options.push(s[2..].to_string()),
            s if s.starts_with('-') && s.len() > 1 => {
                for c in s[1..].chars() {
                    match c {
                        'f' => fake = true,
                        's' | 'n' | 'v' => {}
                        _ => return Err(format!("unknown flag -{c}")),
                    }
                }
            }
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = <[String; 2]>::try_from(positional)
        .map_err(|_| "usage: mount.fuse.bitcloud SOURCE MOUNTPOINT [-o OPTIONS]".to_string())?;
    let mut out = HelperArgs {
        source: source.clone(),
        mountpoint: PathBuf::from(mountpoint),
        home: None,
        passphrase_file: None,
        options: Vec::new(),
        fake,
    };
    let mut fsname = false;
    for o in raw_options.iter().flat_map(|o| o.split(',')) {
        if let Some(v) = o.strip_prefix("home=") {
            out.home = Some(PathBuf::from(v));
        } else if let Some(v) = o.strip_prefix("passphrase_file=") {
            out.passphrase_file = Some(PathBuf::from(v));
        } else if !o.is_empty() {
            fsname |= o.starts_with("fsname=");
            out.options.push(o.to_string());
        }
    }
    let source_is_home = Path::new(&source).join("config.toml").is_file();
    if out.home.is_none() && source_is_home {
        out.home = Some(PathBuf::from(&source));
    }
    // The source names the mount in /proc/mounts, unless it is a path (fsname cannot hold
    // blanks or commas, and a home path says little).
    if !fsname && !source_is_home && !source.is_empty() && !source.contains(['/', ',', ' ']) {
        out.options.push(format!("fsname={source}"));
    }
    Ok(out)
}

/// Runs the helper; returns the process exit status.
pub fn run(args: &[String]) -> i32 {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mount.fuse.bitcloud: {e}");
            return EXIT_USAGE;
        }
    };
    if args.fake {
        return 0;
    }
    match start_and_wait(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mount.fuse.bitcloud: {e}");
            EXIT_MOUNT_FAILED
        }
    }
}

fn start_and_wait(args: &HelperArgs) -> Result<(), String> {
    let paths = Paths::resolve(args.home.as_deref()).map_err(|e| e.to_string())?;
    let log_path = paths.volume_dir().join("mount.log");
    std::fs::create_dir_all(paths.volume_dir())
        .map_err(|e| format!("{}: {e}", paths.volume_dir().display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let sock_path =
        std::env::temp_dir().join(format!("bitcloud-mount-helper-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).map_err(|e| format!("notify socket: {e}"))?;
    let _remove = RemoveOnDrop(sock_path.clone());
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("finding the bitcloud binary: {e}"))?;
    let mut cmd = Command::new(exe);
    if let Some(h) = &args.home {
        cmd.arg("--home").arg(h);
    }
    cmd.arg("mount").arg(&args.mountpoint).arg("--no-init");
    if let Some(p) = &args.passphrase_file {
        cmd.arg("--passphrase-file").arg(p);
    }
    if !args.options.is_empty() {
        cmd.arg("-o").arg(args.options.join(","));
    }
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid is async-signal-safe; the mount leaves mount(8)'s session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting bitcloud mount: {e}"))?;
    let started = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        if let Ok(n) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
        {
            // The mount runs on in its own session; nobody waits for it here.
            std::mem::forget(child);
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read(&log_path)
                .map(|b| {
                    String::from_utf8_lossy(&b[(log_start as usize).min(b.len())..]).into_owned()
                })
                .unwrap_or_default();
            return Err(format!(
                "bitcloud mount exited ({status}) before the mount was up:\n{}",
                said.trim_end()
            ));
        }
        if started.elapsed() > READY_WITHIN {
            return Err(format!(
                "the mount did not come up within {} s (see {})",
                READY_WITHIN.as_secs(),
                log_path.display()
            ));
        }
    }
}

/// Deletes the helper's notify socket however the helper ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_what_mount8_passes() {
        let a = parse(&args("work /mnt/w -o rw,noatime,home=/srv/bc,_netdev -n")).unwrap();
        assert_eq!(a.mountpoint, PathBuf::from("/mnt/w"));
        assert_eq!(a.home, Some(PathBuf::from("/srv/bc")));
        assert_eq!(a.options, ["rw", "noatime", "_netdev", "fsname=work"]);
        assert!(!a.fake);
        let a = parse(&args("bitcloud /m -f -ofsname=x,passphrase_file=/k")).unwrap();
        assert!(a.fake);
        assert_eq!(a.options, ["fsname=x"]);
        assert_eq!(a.passphrase_file, Some(PathBuf::from("/k")));
        assert!(parse(&args("only-one")).is_err());
        assert!(parse(&args("a b -q")).is_err());
        assert!(invoked_as_helper("/usr/sbin/mount.fuse.bitcloud"));
        assert!(!invoked_as_helper("/usr/bin/bitcloud"));
    }
}
