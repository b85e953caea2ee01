//! Losing the machine: the volume comes back on a new one from the identity file alone.
//!
//! Six real nodes and a mount that publishes its metadata every second. Its home is deleted
//! after an unmount, and again (in the recovered copy) after a kill -9 that left a change
//! covered by the last published backup; each time `bitcloud recover --identity --peer`
//! in an empty home brings back every name, type, mode, size, link count, symlink target,
//! mtime, xattr and byte, read from the pool (the second time with half the nodes frozen).
//! The original copy, started again afterwards, finds the volume was recovered elsewhere and
//! stops publishing.

use std::path::Path;

use crate::harness::{bitcloud, sh};
use crate::nodes::*;

/// Names, types, modes, sizes, link counts, symlink targets and mtimes of a tree.
fn listing(dir: &Path) -> String {
    sh(dir, "find . -printf '%p %y %m %s %n %l %T@\\n' | sort")
}

fn xattrs(dir: &Path) -> String {
    sh(
        dir,
        "getfattr -R -d -m user. --absolute-names . 2>/dev/null | sort",
    )
}

/// Recovers the volume of `identity` into `home`, asking the nodes at `addrs`.
fn recover(home: &Path, identity: &Path, addrs: &[String]) -> String {
    let mut args = vec![
        "recover".to_string(),
        "--identity".into(),
        identity.display().to_string(),
    ];
    for a in addrs {
        args.push("--peer".into());
        args.push(a.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bitcloud(home, &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "recover failed:\n{text}");
    text
}

#[test]
fn a_lost_machine_comes_back_from_the_identity_file_alone() {
    let root = test_root("bitcloud-recover");
    let mut nodes = start_nodes(root.path(), 6);
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let (home, mnt) = new_volume(root.path(), "3+3", &nodes);
    edit_config(&home, "backup_secs = 60", "backup_secs = 1");
    let identity = root.path().join("identity-backup.age");
    std::fs::copy(home.join("identity.age"), &identity).unwrap();
    let mut m = mount_with_peers(root.path(), &home, &mnt, 6);
    sh(
        &mnt,
        "mkdir -p docs/deep/er empty-dir && head -c 3000000 /dev/urandom > docs/big.bin \
         && echo hello > docs/small.txt && head -c 40000 /dev/urandom > docs/deep/er/mid.bin \
         && truncate -s 5M docs/sparse && printf x | dd of=docs/sparse bs=1 seek=4000000 conv=notrunc status=none \
         && ln -s ../../small.txt docs/deep/er/link && ln docs/small.txt docs/hard \
         && chmod 640 docs/small.txt && chmod 1777 empty-dir && mkfifo docs/fifo && : > empty \
         && setfattr -n user.color -v blue docs/big.bin && setfattr -n user.note -v '' empty \
         && for i in $(seq 1 300); do echo file $i > docs/deep/n$i; done \
         && rm docs/deep/n7 && touch -d '2020-01-02 03:04:05' docs/deep/er/mid.bin && sync",
    );
    let before = (listing(&mnt), sums(&mnt), xattrs(&mnt));
    wait_full_redundancy(&m);
    m.stop();
    let files = n(&status(&home).unwrap(), "/files");
    assert!(
        m.log()
            .contains("the pool holds the volume's metadata (backup #"),
        "unmount did not publish the metadata:\n{}",
        m.log()
    );
    // A copy of the machine as it was, for the end of the test.
    let old_home = root.path().join("old-home");
    sh(
        root.path(),
        &format!("cp -a {} {}", home.display(), old_home.display()),
    );
    std::fs::remove_dir_all(&home).unwrap();

    // A new machine: an empty home, the identity file and the pool's addresses.
    let home2 = root.path().join("home2");
    let mnt2 = root.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let said = recover(&home2, &identity, &addrs);
    assert!(said.contains("found backup #"), "{said}");
    assert!(said.contains(&format!(" {files} files,")), "{said}");
    // Nothing of the contents is on this disk: it comes from the pool.
    assert_eq!(n(&status(&home2).unwrap(), "/cache/used_bytes"), 0);
    edit_config(&home2, "backup_secs = 60", "backup_secs = 1");
    let mut m2 = mount_with_peers(root.path(), &home2, &mnt2, 6);
    assert_eq!(listing(&mnt2), before.0, "names and attributes");
    assert_eq!(sums(&mnt2), before.1, "contents");
    assert_eq!(xattrs(&mnt2), before.2, "xattrs");
    let out = bitcloud(&home2, &["fsck", "--json"]);
    assert!(
        out.status.success(),
        "fsck of the recovered volume: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // It is a volume like any other: it changes, and publishes its own backups.
    sh(&mnt2, "echo after > after.txt && rm docs/deep/n8 && sync");
    let seq = wait_backup_current(&m2);
    let before2 = (listing(&mnt2), sums(&mnt2));
    // This machine dies too, with no unmount.
    m2.kill9();
    sh(
        root.path(),
        &format!("fusermount3 -u -z {}", mnt2.display()),
    );
    std::fs::remove_dir_all(&home2).unwrap();
    let home3 = root.path().join("home3");
    let mnt3 = root.path().join("mnt3");
    std::fs::create_dir(&mnt3).unwrap();
    // Half the pool is frozen (SIGSTOP: connections open, nothing answers): any 3 of the 6
    // shards of every chunk, and any holder of the newest record, are enough.
    for node in &mut nodes[3..] {
        node.signal(libc::SIGSTOP);
    }
    let said = recover(&home3, &identity, &addrs);
    for node in &mut nodes[3..] {
        node.signal(libc::SIGCONT);
    }
    // That backup, or a later one (reading updated access times).
    let found: u64 = said
        .split("found backup #")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no backup number in: {said}"));
    assert!(
        found >= seq,
        "found backup #{found}, #{seq} was current: {said}"
    );
    let mut m3 = mount_with_peers(root.path(), &home3, &mnt3, 6);
    // Unchanged, it still publishes a backup of its own at once: a copy left on the lost
    // machine must find itself superseded.
    wait_showing("the recovered copy's own backup", || {
        let s = status(&home3).ok_or("no status")?;
        (n(&s, "/backup/seq") > found)
            .then_some(())
            .ok_or_else(|| s["backup"].to_string())
    });
    assert_eq!((listing(&mnt3), sums(&mnt3)), before2);
    wait_backup_current(&m3);
    m3.stop();

    // Recovering again into a home that has a volume is refused, naming it.
    let out = bitcloud(
        &home3,
        &["recover", "--identity", identity.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a volume already exists"));

    // The machine thought lost comes back: it must not publish over the recovered copy.
    let old_mnt = root.path().join("old-mnt");
    std::fs::create_dir(&old_mnt).unwrap();
    let mut old = mount_with_peers(root.path(), &old_home, &old_mnt, 6);
    sh(&old_mnt, "echo stale > stale.txt && sync");
    wait_showing("the old copy to find it was superseded", || {
        let s = status(&old_home).ok_or("no status")?;
        (s["backup"]["state"] == "superseded")
            .then_some(())
            .ok_or_else(|| s["backup"].to_string())
    });
    old.stop();
    let home4 = root.path().join("home4");
    recover(&home4, &identity, &addrs);
    let mnt4 = root.path().join("mnt4");
    std::fs::create_dir(&mnt4).unwrap();
    let mut m4 = mount_with_peers(root.path(), &home4, &mnt4, 6);
    assert!(!mnt4.join("stale.txt").exists());
    assert!(mnt4.join("after.txt").exists());
    m4.stop();
}

#[test]
fn recover_without_a_pool_or_identity_says_why() {
    let root = test_root("bitcloud-recover-errors");
    let home = root.path().join("home");
    // No identity anywhere.
    let out = bitcloud(&home, &["recover"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--identity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An identity, but no peer answers: a bounded wait, then a message that says what to do.
    let other = root.path().join("other");
    assert!(bitcloud(&other, &["init"]).status.success());
    let id = other.join("identity.age");
    let out = bitcloud(
        &home,
        &[
            "recover",
            "--identity",
            id.to_str().unwrap(),
            "--timeout",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--peer"), "{err}");
    assert!(
        !home.join("identity.age").exists(),
        "a failed recover leaves nothing behind"
    );
    // A peer that holds nothing of this volume.
    let mut nodes = start_nodes(root.path(), 1);
    let out = bitcloud(
        &home,
        &[
            "recover",
            "--identity",
            id.to_str().unwrap(),
            "--peer",
            &nodes[0].addr(),
            "--timeout",
            "20",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds a root record of this volume"), "{err}");
    nodes[0].stop();
}
