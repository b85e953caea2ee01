//! The systemd service, exercised without systemd: run the unit's ExecStart line as systemd
//! would (NOTIFY_SOCKET pointing at a socket we read), and check the readiness protocol, the
//! clean stop on SIGTERM, SIGHUP config reloads, and config errors.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{BIN, bitcloud, sh, sh_fails};

fn mounted(path: &std::path::Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap();
    text.lines().any(|l| l.split(' ').nth(1) == path.to_str())
}

/// "READY=1 is sent only once the mount answers; SIGTERM sends STOPPING=1, unmounts, and
/// exits 0 leaving no stale mount."
#[test]
fn exec_start_notifies_ready_and_stops_cleanly_on_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let mnt = root.path().join("cloud");
    std::fs::create_dir(&mnt).unwrap();
    assert!(bitcloud(&home, &["init"]).status.success());
    let sock_path = root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();

    let unit = bitcloud::cli::service::unit_text(std::path::Path::new(BIN), Some(&home)).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart line");
    let argv = exec_argv(exec, mnt.to_str().unwrap());
    let log = std::fs::File::create(root.path().join("log")).unwrap();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.0)
                .status();
        }
    }
    let _cleanup = Cleanup(mnt.clone());

    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY=1 within 60 s");
    assert_eq!(&buf[..n], b"READY=1");
    // At READY the mount must already answer.
    assert_eq!(
        std::fs::metadata(&mnt).unwrap().ino(),
        1,
        "READY=1 before the mount answered"
    );
    std::fs::write(mnt.join("f"), b"written after READY").unwrap();

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).expect("no STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(!mounted(&mnt), "SIGTERM left the mount behind");

    // The data written before the stop is there at the next mount.
    let mut m = crate::harness::Mount::existing(root.path(), &home, &mnt);
    assert_eq!(
        std::fs::read(mnt.join("f")).unwrap(),
        b"written after READY"
    );
    m.stop();
}

/// "SIGHUP re-reads config.toml; a bad file is reported and the mount keeps running."
#[test]
fn sighup_reloads_config_and_survives_a_bad_one() {
    let mut m = crate::harness::Mount::new();
    let config = m.home.join("config.toml");
    std::fs::write(&config, "[mount]\ncheckpoint_secs = 5\n").unwrap();
    m.send_signal(libc::SIGHUP);
    m.wait_for_log("config reloaded");
    std::fs::write(&config, "[mount]\ncheckpoint_sec = 5\n").unwrap();
    m.send_signal(libc::SIGHUP);
    m.wait_for_log("config not reloaded");
    sh(
        &m.mnt,
        "echo still > alive && test \"$(cat alive)\" = still",
    );
    m.stop();
    // The same bad file stops the next mount with a message naming the key and line.
    let o = bitcloud(&m.home, &["mount", m.mnt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 2") && err.contains("checkpoint_sec"),
        "{err}"
    );
    // Flags override the file, and are checked too.
    let o = bitcloud(
        &m.home,
        &["mount", m.mnt.to_str().unwrap(), "--seal-threads", "0"],
    );
    assert_eq!(o.status.code(), Some(1));
}

/// "The read-only xattr user.bitcloud.state tells a file manager where a file's data stands."
#[test]
fn state_xattr_is_virtual_and_read_only() {
    let m = crate::harness::Mount::new();
    sh(
        &m.mnt,
        "echo data > f && test \"$(getfattr --only-values -n user.bitcloud.state f)\" = local",
    );
    let err = sh_fails(&m.mnt, "setfattr -n user.bitcloud.state -v x f");
    assert!(err.contains("Operation not permitted"), "{err}");
    let listed = sh(&m.mnt, "getfattr -d -m - f");
    assert!(
        !listed.contains("bitcloud.state"),
        "virtual xattr listed: {listed}"
    );
}

/// Splits an `ExecStart=` value as systemd does for what the unit uses: double-quoted words
/// with backslash escapes, `%%` for `%`, and `%f` for the instance's path.
fn exec_argv(line: &str, instance_path: &str) -> Vec<String> {
    let mut argv = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                word.get_or_insert_default();
            }
            '\\' if quoted => word.get_or_insert_default().push(chars.next().unwrap()),
            '%' => match chars.next() {
                Some('%') => word.get_or_insert_default().push('%'),
                Some('f') => word.get_or_insert_default().push_str(instance_path),
                other => panic!("unexpected specifier %{other:?} in {line}"),
            },
            c if c.is_whitespace() && !quoted => argv.extend(word.take()),
            c => word.get_or_insert_default().push(c),
        }
    }
    argv.extend(word);
    argv
}

#[test]
fn exec_lines_split_like_systemd() {
    assert_eq!(
        exec_argv(r#""/a b/bc" --home "/h/100%% \"x\"" mount %f"#, "/m n"),
        ["/a b/bc", "--home", "/h/100% \"x\"", "mount", "/m n"]
    );
}
