//! The nodepool, end to end: one real mount and real `bitcloud node` processes on
//! 127.0.0.2 and up, talking libp2p. Data written through FUSE is spread as shards; the
//! tests stop, kill, freeze and damage nodes and check every byte that comes back, what
//! fsync promises with `mount.sync = "remote"`, and what `umount --no-wait` leaves.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, bitcloud, sh, sh_fails, write_pattern};
use crate::nodes::*;

const NODES: usize = 6;

#[test]
fn a_volume_lives_in_the_pool_through_stops_kills_freezes_and_damage() {
    let root = test_root("bitcloud-pool");
    let mut nodes = start_nodes(root.path(), NODES);
    let (home, mnt) = new_volume(root.path(), "3+3", &nodes);
    // Reads give up after 10 s; the frozen-pool step checks the mount answers meanwhile.
    edit_config(&home, "read_timeout_secs = 5", "read_timeout_secs = 10");
    let mut m = mount_with_peers(root.path(), &home, &mnt, NODES);

    // A tree of small files and a 256 MiB file.
    sh(
        &mnt,
        "mkdir -p tree/a/b tree/c && for i in $(seq 1 40); do head -c $((i * 997)) /dev/urandom > tree/a/f$i; done \
         && for i in $(seq 1 10); do head -c $((i * 70000)) /dev/urandom > tree/c/g$i; done \
         && ln -s a/f1 tree/link && head -c 268435456 /dev/urandom > big && sync",
    );
    // Names, contents, links and xattrs no node (nor the mount's own home) may see in clear.
    sh(
        &mnt,
        &format!(
            "mkdir tree/dir-{MARKER} && echo '{MARKER} body' > tree/dir-{MARKER}/file-{MARKER} \
             && head -c 3000000 /dev/zero | tr '\\0' Q | sed 's/^/{MARKER}/' > tree/{MARKER}-big \
             && ln -s target-{MARKER} tree/link-{MARKER} && setfattr -n user.{MARKER} -v value-{MARKER} tree/{MARKER}-big && sync"
        ),
    );
    let before = sums(&mnt);
    wait_full_redundancy(&m);
    let s = status(&m.home).unwrap();
    assert!(n(&s, "/redundancy/full") >= 256, "{s}");
    for p in s["peers"].as_array().unwrap() {
        assert!(n(p, "/our_shards") > 0, "every node holds shards: {p}");
    }
    let state = sh(&mnt, "getfattr --only-values -n user.bitcloud.state big");
    assert_eq!(state.trim(), "redundant");

    // Everything comes back from the pool alone.
    drop_caches(&m);
    assert!(n(&status(&m.home).unwrap(), "/cache/used_bytes") < 1 << 20);
    assert_eq!(sums(&mnt), before, "read back from the pool");

    // Any 3 of the 6 shards rebuild a block: stop 3 nodes.
    for node in &mut nodes[..3] {
        node.stop();
    }
    drop_caches(&m);
    assert_eq!(sums(&mnt), before, "read back with 3 of 6 nodes stopped");

    // One more: reads fail with EIO in bounded time; the mount stays usable.
    nodes[3].stop();
    drop_caches(&m);
    let t = Instant::now();
    let err = sh_fails(&mnt, "dd if=big of=/dev/null bs=1M count=4");
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "EIO took {:?}",
        t.elapsed()
    );
    sh(
        &mnt,
        "ls -l tree/a >/dev/null && stat big >/dev/null && echo still > usable && cat usable",
    );

    // Start them again: reads work.
    for node in &mut nodes[..4] {
        node.start();
    }
    wait_for("nodes back", || {
        (connected_peers(&m) == NODES).then_some(())
    });
    drop_caches(&m);
    sh(&mnt, "rm usable");
    assert_eq!(sums(&mnt), before, "read back after the nodes came back");

    // Damage every shard file of one node: reads stay correct, and that node is scored down.
    let victim = nodes[4].id();
    let shards = nodes[4].home.join("data/shards/shards");
    let mut damaged = 0;
    for dir in std::fs::read_dir(&shards).unwrap().flatten() {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let mut bytes = std::fs::read(f.path()).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x55;
            std::fs::write(f.path(), bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 100, "{damaged} shard files damaged");
    drop_caches(&m);
    assert_eq!(
        sums(&mnt),
        before,
        "read back with one node's shards damaged"
    );
    let s = status(&m.home).unwrap();
    let scored = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == victim.as_str())
        .map(|p| n(p, "/lost_shards") + n(p, "/bad_shards"))
        .unwrap();
    assert!(scored > 0, "the damaged node was not scored down: {s}");
    let score = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == victim.as_str())
        .and_then(|p| p["score"].as_f64())
        .unwrap();
    assert!(score < 0.5, "a node that lost every shard is banned: {s}");
    // Its disk is replaced: a fresh node (new identity) on the same host takes its shards.
    nodes[4].stop();
    nodes[4] = node_at(root.path(), 4);
    nodes[4].home = root.path().join("node4-new");
    nodes[4].start();
    let out = bitcloud(&home, &["peers", "add", &nodes[4].addr()]);
    assert!(out.status.success());
    wait_full_redundancy(&m);
    wait_for("the fresh node holds the rebuilt shards", || {
        let s = status(&m.home)?;
        let id = nodes[4].id();
        let p = s["peers"]
            .as_array()?
            .iter()
            .find(|p| p["id"] == id.as_str())?;
        (n(p, "/our_shards") > 100).then_some(())
    });

    // Freeze every node: writes still succeed locally, the mount answers while 16 cold reads
    // wait for the pool, and uploads finish once the nodes run again.
    drop_caches(&m);
    for node in &mut nodes {
        node.signal(libc::SIGSTOP);
    }
    let readers: Vec<Child> = (0..16)
        .map(|i| {
            Command::new("dd")
                .arg("if=big")
                .arg("of=/dev/null")
                .args(["bs=1M", "count=1", &format!("skip={}", i * 16 + 3)])
                .current_dir(&mnt)
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let t = Instant::now();
    write_pattern(&mnt.join("while-frozen"), 8 << 20, 7);
    sh(
        &mnt,
        "ls -l tree/a >/dev/null && stat big >/dev/null && cat tree/a/f3 >/dev/null && cat while-frozen >/dev/null",
    );
    let answered = t.elapsed();
    let mut readers = readers;
    let still_waiting = readers
        .iter_mut()
        .map(|c| c.try_wait().unwrap().is_none())
        .filter(|&waiting| waiting)
        .count();
    assert!(
        still_waiting > 0 && answered < Duration::from_secs(8),
        "the mount answered in {answered:?} with {still_waiting} cold reads waiting"
    );
    for node in &mut nodes {
        node.signal(libc::SIGCONT);
    }
    for mut r in readers {
        harness::wait_with_deadline(&mut r);
    }
    wait_full_redundancy(&m);
    let with_frozen = sums(&mnt);
    drop_caches(&m);
    assert_eq!(
        sums(&mnt),
        with_frozen,
        "what was written while the pool was frozen"
    );

    // kill -9 the mount with uploads pending: the next mount resumes them, nothing is lost.
    for node in &mut nodes {
        node.signal(libc::SIGSTOP);
    }
    write_pattern(&mnt.join("pending"), 24 << 20, 11);
    sh(&mnt, "sync pending");
    wait_for("uploads pending", || {
        (n(&status(&m.home)?, "/upload/pending_blocks") > 0).then_some(())
    });
    let expected = sums(&mnt);
    m.kill9();
    for node in &mut nodes {
        node.signal(libc::SIGCONT);
    }
    m.start();
    wait_full_redundancy(&m);
    drop_caches(&m);
    assert_eq!(sums(&mnt), expected, "after kill -9 and remount");
    assert_ne!(expected, with_frozen);

    // A cache smaller than the data: write and read back four times the cache size.
    m.stop();
    edit_config(&home, "# size = \"20G\"", "size = \"64M\"");
    m.start();
    sh(
        &mnt,
        "rm big && head -c 268435456 /dev/urandom > big2 && sync",
    );
    let expected = sums(&mnt);
    wait_full_redundancy(&m);
    wait_for("cache within its limit", || {
        (n(&status(&m.home)?, "/cache/used_bytes") <= 64 << 20).then_some(())
    });
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert_eq!(sums(&mnt), expected, "read back through a small cache");
    wait_for("cache within its limit after reading", || {
        (n(&status(&m.home)?, "/cache/used_bytes") <= 64 << 20).then_some(())
    });
    m.stop();
    for node in nodes.iter_mut().filter(|n| n.child.is_some()) {
        node.stop();
    }

    // Nothing in any home (the nodes' shard stores, the mount's cache and database, the logs)
    // holds a name, a content or an xattr in clear.
    for needle in [MARKER, "QQQQQQQQQQQQQQQQ"] {
        let out = Command::new("grep")
            .args(["-r", "-a", "-l", needle])
            .arg(root.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{needle} found in: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

const MARKER: &str = "PLAINTEXT-MARKER-77c2";

/// `mount.sync = "remote"`: fsync returns only once every block of the file has k+1 shards on
/// distinct peers, and fails with EIO when the pool cannot give them in time. Also `peers add`
/// on a running mount, and `umount --no-wait` with uploads pending.
#[test]
fn sync_remote_fsync_waits_for_the_pool() {
    let root = test_root("bitcloud-pool-sync");
    let mut nodes = start_nodes(root.path(), 3);
    // 2+1: fsync waits for k+1 = 3 shards, i.e. all three nodes.
    let (home, mnt) = new_volume(root.path(), "2+1", &nodes[..2]);
    edit_config(&home, "sync = \"local\"", "sync = \"remote\"");
    edit_config(&home, "sync_timeout_secs = 60", "sync_timeout_secs = 4");
    let mut m = mount_with_peers(root.path(), &home, &mnt, 2);

    // `peers add` on a running mount dials at once and remembers the peer.
    let third = nodes[2].addr();
    let out = bitcloud(&home, &["peers", "add", &third]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the third peer", || {
        (connected_peers(&m) == 3).then_some(())
    });
    let config = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert!(config.contains(&third), "remembered in config.toml");

    // With every node answering, fsync returns with the file fully placed.
    sh(
        &mnt,
        "dd if=/dev/urandom of=a bs=1M count=5 conv=fsync status=none",
    );
    let state = sh(&mnt, "getfattr --only-values -n user.bitcloud.state a");
    assert_eq!(
        state.trim(),
        "redundant",
        "fsync returned before the pool had it"
    );

    // One node frozen: only two shards per block can be placed; fsync gives up with EIO
    // after sync_timeout_secs, and the data stays (locally) readable.
    nodes[2].signal(libc::SIGSTOP);
    let t = Instant::now();
    let err = sh_fails(
        &mnt,
        "dd if=/dev/urandom of=b bs=1M count=3 conv=fsync status=none",
    );
    assert!(err.contains("Input/output error"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let b = sh(&mnt, "sha256sum b");
    // Once it answers again, the uploads finish (without another write) and fsync succeeds.
    nodes[2].signal(libc::SIGCONT);
    wait_for("b fully placed", || {
        (sh(&mnt, "getfattr --only-values -n user.bitcloud.state b").trim() == "redundant")
            .then_some(())
    });
    sh(
        &mnt,
        "python3 -c \"import os; fd = os.open('b', os.O_RDWR); os.fsync(fd)\"",
    );

    // Every node frozen: `umount --no-wait` returns at once and says what is only local;
    // the next mount uploads it.
    for node in &mut nodes {
        node.signal(libc::SIGSTOP);
    }
    sh(&mnt, "head -c 3000000 /dev/urandom > c");
    let c = sh(&mnt, "sha256sum c");
    let out = bitcloud(&home, &["umount", "--no-wait", mnt.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("is only on this machine"), "{said}");
    m.forget_child_after_umount();
    for node in &mut nodes {
        node.signal(libc::SIGCONT);
    }
    m.start();
    wait_full_redundancy(&m);
    drop_caches(&m);
    assert_eq!(sh(&mnt, "sha256sum b"), b);
    assert_eq!(sh(&mnt, "sha256sum c"), c);
    m.stop();
}
