//! The mount-test harness: runs the real `bitcloud` binary with a temp home and a temp
//! mountpoint, waits for the mount by polling /proc/mounts (with a deadline, never a fixed
//! sleep), and on drop (so also when a test fails) unmounts and kills the child by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bitcloud");

/// Every bitcloud the tests start keeps its node on loopback and off multicast: tests may
/// talk to 127.0.0.0/8 only.
pub fn loopback_only(cmd: &mut Command) -> &mut Command {
    cmd.env("BITCLOUD_NO_MDNS", "1");
    if std::env::var_os("BITCLOUD_LISTEN").is_none() {
        cmd.env("BITCLOUD_LISTEN", "/ip4/127.0.0.1/tcp/0");
    }
    cmd
}

/// How long a mount may take to appear or go away.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `bitcloud --home HOME ARGS...` to completion.
pub fn bitcloud(home: &Path, args: &[&str]) -> Output {
    loopback_only(&mut Command::new(BIN))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("BITCLOUD_PASSPHRASE")
        .output()
        .expect("running bitcloud")
}

/// Runs a shell command in `dir`; panics with its output if it fails.
pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "command failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command that is expected to fail; returns its stderr.
pub fn sh_fails(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("running bash");
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded: {script}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mounted_at(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = path.to_str().expect("temp paths are UTF-8");
    text.lines().any(|l| l.split(' ').nth(1) == Some(want))
}

/// A volume, initialised, and (while `child` is set) mounted.
pub struct Mount {
    pub home: PathBuf,
    pub mnt: PathBuf,
    pub options: Vec<String>,
    child: Option<Child>,
    _root: tempfile::TempDir,
}

impl Mount {
    /// A fresh volume mounted with no extra options.
    pub fn new() -> Mount {
        Mount::with_options(&[])
    }

    /// A fresh volume mounted with `-o` options.
    pub fn with_options(options: &[&str]) -> Mount {
        Mount::create(std::env::temp_dir().as_path(), options)
    }

    /// A fresh volume whose home (and mountpoint) live under `dir`.
    pub fn with_home_in(dir: &Path) -> Mount {
        Mount::create(dir, &[])
    }

    fn create(parent: &Path, options: &[&str]) -> Mount {
        let root = tempfile::Builder::new()
            .prefix("bitcloud-mt")
            .tempdir_in(parent)
            .expect("temp dir");
        let home = root.path().join("home");
        let mnt = root.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = bitcloud(&home, &["init"]);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut m = Mount {
            home,
            mnt,
            options: options.iter().map(|s| s.to_string()).collect(),
            child: None,
            _root: root,
        };
        m.start();
        m
    }

    /// Mounts an existing home at `mnt` (both under `root`, which the caller keeps alive).
    pub fn existing(root: &Path, home: &Path, mnt: &Path) -> Mount {
        Mount::existing_with(root, home, mnt, &[])
    }

    /// [`Mount::existing`] with `-o` options.
    pub fn existing_with(root: &Path, home: &Path, mnt: &Path, options: &[&str]) -> Mount {
        let mut m = Mount {
            home: home.to_path_buf(),
            mnt: mnt.to_path_buf(),
            options: options.iter().map(|s| s.to_string()).collect(),
            child: None,
            _root: tempfile::Builder::new()
                .prefix("unused")
                .tempdir_in(root)
                .expect("temp dir"),
        };
        m.start();
        m
    }

    /// Unmounts, writes `toml` as the volume's config.toml, and mounts again with it.
    pub fn remount_with_config(&mut self, toml: &str) {
        self.stop();
        std::fs::write(self.home.join("config.toml"), toml).unwrap();
        self.start();
    }

    /// Sends a signal to the mount process (which keeps running).
    pub fn send_signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("mounted").id();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, sig) };
    }

    /// Waits (with the harness deadline) until the mount's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < DEADLINE,
                "log never said {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The path of `rel` inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Starts `bitcloud mount` and waits until the mount answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already mounted");
        let mut cmd = Command::new(BIN);
        loopback_only(&mut cmd);
        cmd.arg("--home")
            .arg(&self.home)
            .arg("mount")
            .arg(&self.mnt);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        // Each mount logs afresh (readiness is read from the log); the earlier mounts' logs
        // are kept after it in `mount.log.old` for a kept test root (BITCLOUD_TEST_KEEP).
        let path = self.home.join("mount.log");
        if let Ok(earlier) = std::fs::read(&path) {
            use std::io::Write;
            let mut old = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.home.join("mount.log.old"))
                .unwrap();
            old.write_all(&earlier).unwrap();
        }
        let log = std::fs::File::create(path).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning bitcloud mount");
        let start = Instant::now();
        // Ready when the process says so (it checks the mount answers first) and the kernel
        // lists it: a dead mount left by a kill -9 is still listed until the new process
        // detaches it, so /proc/mounts alone is not enough.
        while !(self.log().contains("bitcloud: mounted at") && mounted_at(&self.mnt)) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "bitcloud mount exited with {status} before mounting:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "mount did not appear within {DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// The mount process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("mount.log")).unwrap_or_default()
    }

    /// `bitcloud umount`, then waits for the mount process to exit successfully.
    pub fn stop(&mut self) {
        let out = bitcloud(&self.home, &["umount", self.mnt.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "umount failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let mut child = self.child.take().expect("mounted");
        let status = wait_with_deadline(&mut child);
        assert!(
            status.success(),
            "mount process exited with {status}:\n{}",
            self.log()
        );
        assert!(!mounted_at(&self.mnt));
    }

    /// The mount process, left running (the test waits for it itself).
    pub fn take_child(&mut self) -> Child {
        self.child.take().expect("mounted")
    }

    /// After a `bitcloud umount` the test ran itself: waits for the mount process to exit.
    pub fn forget_child_after_umount(&mut self) {
        let mut child = self.child.take().expect("mounted");
        let status = wait_with_deadline(&mut child);
        assert!(
            status.success(),
            "mount process exited with {status}:\n{}",
            self.log()
        );
    }

    /// Unmounts and mounts again (a clean restart).
    pub fn remount(&mut self) {
        self.stop();
        self.start();
    }

    /// Kills the mount process with SIGKILL, leaving a dead mountpoint behind.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("mounted");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends a signal to the mount process and waits for it to exit; returns its status.
    pub fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("mounted");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        wait_with_deadline(&mut child)
    }
}

pub fn wait_with_deadline(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("process {} did not exit within {DEADLINE:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if mounted_at(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mnt)
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes `len` deterministic pseudo-random bytes (seeded) to `path`.
pub fn write_pattern(path: &Path, len: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, data).unwrap();
}
