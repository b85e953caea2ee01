//! Helpers of the multi-node tests: real `bitcloud node` processes on their own loopback
//! addresses, a volume that knows them, and waits on `status --json` conditions.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, BIN, Mount, bitcloud, sh};

pub(crate) const DEADLINE: Duration = Duration::from_secs(180);

/// One `bitcloud node` process with its own home, on its own loopback address.
pub(crate) struct Node {
    pub home: PathBuf,
    pub ip: String,
    pub port: u16,
    pub child: Option<Child>,
    pub frozen: bool,
    /// Started as a lying node: it flips a byte of everything it serves.
    pub flips: bool,
    /// More environment for the process (fault switches).
    pub env: Vec<(&'static str, String)>,
}

impl Node {
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.with_extension("log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("--home")
            .arg(&self.home)
            .args(["node", "--offer", "4G", "--no-mdns", "--listen"])
            .arg(format!("/ip4/{}/tcp/{}", self.ip, self.port))
            .env_remove("BITCLOUD_LISTEN")
            .env(
                "BITCLOUD_FAULT_FLIP_SERVED",
                if self.flips { "1" } else { "0" },
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Up when its control socket answers with its address.
        let addr = wait_for("node status", || {
            let s = status(&self.home)?;
            s.pointer("/node/listen/0")?.as_str().map(str::to_string)
        });
        if self.port == 0 {
            self.port = addr
                .split("/tcp/")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .and_then(|p| p.parse().ok())
                .expect("a tcp port");
        }
    }

    pub(crate) fn addr(&self) -> String {
        let s = status(&self.home).expect("node status");
        s.pointer("/node/listen/0")
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(crate) fn id(&self) -> String {
        let s = status(&self.home).expect("node status");
        s.pointer("/node/id").unwrap().as_str().unwrap().to_string()
    }

    pub(crate) fn signal(&mut self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, sig) };
        self.frozen = sig == libc::SIGSTOP;
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let mut c = self.child.take().unwrap();
        let s = harness::wait_with_deadline(&mut c);
        assert!(s.success(), "node exited with {s}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.frozen {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The test's directory; BITCLOUD_TEST_KEEP=1 keeps the homes and logs for a post-mortem.
pub(crate) fn test_root(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(std::env::var_os("BITCLOUD_TEST_KEEP").is_some())
        .tempdir()
        .unwrap()
}

/// `count` running nodes on 127.0.0.2 and up.
pub(crate) fn start_nodes(root: &Path, count: usize) -> Vec<Node> {
    start_nodes_where(root, count, |_| false)
}

/// `count` running nodes on 127.0.0.2 and up; node `i` lies (flips served bytes) if
/// `flips(i)`.
pub(crate) fn start_nodes_where(
    root: &Path,
    count: usize,
    flips: impl Fn(usize) -> bool,
) -> Vec<Node> {
    let mut nodes: Vec<Node> = (0..count)
        .map(|i| {
            let mut n = node_at(root, i);
            n.flips = flips(i);
            n
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    nodes
}

/// Node `i` of a test (home `root/node<i>`, address 127.0.0.<i+2>), not started.
pub(crate) fn node_at(root: &Path, i: usize) -> Node {
    Node {
        home: root.join(format!("node{i}")),
        ip: format!("127.0.0.{}", i + 2),
        port: 0,
        child: None,
        frozen: false,
        flips: false,
        env: Vec::new(),
    }
}

/// Mounts the volume of `home` and waits until `peers` storage peers are connected.
pub(crate) fn mount_with_peers(root: &Path, home: &Path, mnt: &Path, peers: usize) -> Mount {
    let m = Mount::existing(root, home, mnt);
    wait_for_peers(&m, peers);
    m
}

/// Waits until the mount is connected to `peers` storage peers.
pub(crate) fn wait_for_peers(m: &Mount, peers: usize) {
    wait_for(&format!("{peers} storage peers"), || {
        (connected_peers(m) == peers).then_some(())
    });
}

/// A new volume (`init --shards`) that knows `peers`: its home and mountpoint.
pub(crate) fn new_volume(root: &Path, shards: &str, peers: &[Node]) -> (PathBuf, PathBuf) {
    let home = root.join("home");
    let mnt = root.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = bitcloud(&home, &["init", "--shards", shards]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in peers {
        let out = bitcloud(&home, &["peers", "add", &node.addr()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (home, mnt)
}

/// Replaces `from` with `to` in the volume's config.toml.
pub(crate) fn edit_config(home: &Path, from: &str, to: &str) {
    let cfg = home.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(from), "config.toml has no {from:?}");
    std::fs::write(&cfg, text.replace(from, to)).unwrap();
}

/// `status --json` of a home, if it answers.
pub(crate) fn status(home: &Path) -> Option<serde_json::Value> {
    let out = bitcloud(home, &["status", "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Polls `f` until it gives a value, within [`DEADLINE`].
pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    wait_showing(what, || f().ok_or_else(String::new))
}

/// Polls `f` until it gives `Ok`, within [`DEADLINE`]; a timeout names what `f` saw last
/// (its `Err`).
pub(crate) fn wait_showing<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) => assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; last seen: {seen}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn n(v: &serde_json::Value, path: &str) -> u64 {
    v.pointer(path).and_then(|x| x.as_u64()).unwrap_or(0)
}

/// Waits until every block of the volume has all its shards placed.
pub(crate) fn wait_full_redundancy(m: &Mount) {
    let last = std::cell::RefCell::new(None);
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        let s = status(&m.home);
        let done = s.as_ref().is_some_and(|s| {
            let not_full = n(s, "/redundancy/degraded")
                + n(s, "/redundancy/local_only")
                + n(s, "/redundancy/lost")
                + n(s, "/upload/pending_blocks");
            not_full == 0 && n(s, "/redundancy/full") > 0
        });
        if done {
            return;
        }
        *last.borrow_mut() = s;
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "timed out waiting for full redundancy; last status: {:#?}\nmount log tail:\n{}",
        last.borrow(),
        m.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Connected storage peers of the mount.
pub(crate) fn connected_peers(m: &Mount) -> usize {
    status(&m.home)
        .and_then(|s| s.get("peers")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|p| p["connected"] == true && p["storage"] == true)
        .count()
}

/// Evicts every fully placed block and drops the kernel's page cache: reads go to the pool.
pub(crate) fn drop_caches(m: &Mount) {
    let out = bitcloud(&m.home, &["cache", "drop", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

pub(crate) fn sums(dir: &Path) -> String {
    sh(dir, "find . -type f | sort | xargs -d '\\n' sha256sum")
}

/// How many shards of ours the peer `id` holds, by the mount's `status`.
pub(crate) fn shards_on(m: &Mount, id: &str) -> Option<u64> {
    let s = status(&m.home)?;
    Some(
        s["peers"]
            .as_array()?
            .iter()
            .find(|p| p["id"] == id)
            .map_or(0, |p| n(p, "/our_shards")),
    )
}

/// The shard files a node holds.
pub(crate) fn shard_files(node: &Node) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(node.home.join("data/shards/shards")) {
        for d in dirs.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                out.extend(files.flatten().map(|f| f.path()));
            }
        }
    }
    out
}

/// Waits until the mount's newest published metadata backup covers every change made so
/// far; returns its sequence.
pub(crate) fn wait_backup_current(m: &Mount) -> u64 {
    let changes = n(&status(&m.home).unwrap(), "/committed_changes");
    wait_showing("a metadata backup covering every change", || {
        let s = status(&m.home).ok_or("no status")?;
        let covered = s
            .pointer("/backup/changes_covered")
            .and_then(|v| v.as_u64());
        match covered {
            Some(c) if c >= changes && n(&s, "/backup/seq") > 0 => Ok(n(&s, "/backup/seq")),
            _ => Err(format!("{}", s["backup"])),
        }
    })
}
