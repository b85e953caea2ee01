//! Self-healing, end to end: a mount and eight real `bitcloud node`s. Nodes stopped for good
//! have their shards rebuilt on the others with no user action (from the pool alone: the
//! local cache is dropped first), and a node that comes back gives up its surplus copies.

use crate::harness::{bitcloud, sh};
use crate::nodes::*;

#[test]
fn lost_nodes_are_replaced_and_a_returning_node_gives_up_its_surplus() {
    let root = test_root("bitcloud-heal");
    let mut nodes = start_nodes(root.path(), 8);
    // 4+2 on 8 hosts: with 2 of them gone for good, 6 remain for the 6 shards of a block.
    let (home, mnt) = new_volume(root.path(), "4+2", &nodes);
    edit_config(
        &home,
        "repair_interval_secs = 300",
        "repair_interval_secs = 1",
    );
    edit_config(&home, "repair_grace_secs = 3600", "repair_grace_secs = 3");
    // The metadata backup's chunks are placed anew too (a new backup after the repairs).
    edit_config(&home, "backup_secs = 60", "backup_secs = 1");
    let mut m = mount_with_peers(root.path(), &home, &mnt, 8);
    sh(
        &mnt,
        "mkdir d && for i in $(seq 1 20); do head -c $((i * 50000)) /dev/urandom > d/f$i; done \
         && head -c 33554432 /dev/urandom > big && sync",
    );
    let before = sums(&mnt);
    wait_full_redundancy(&m);
    // Nothing stays on this machine: repairs must rebuild from shards.
    drop_caches(&m);

    // Stop m = 2 nodes for good.
    let gone: Vec<String> = nodes[..2].iter().map(|n| n.id()).collect();
    for id in &gone {
        assert!(shards_on(&m, id).unwrap() > 0, "{id} holds shards");
    }
    nodes[0].stop();
    nodes[1].stop();
    // Without any user action, every shard they held is rebuilt elsewhere...
    wait_for("the lost nodes' shards rebuilt elsewhere", || {
        gone.iter()
            .all(|id| shards_on(&m, id) == Some(0))
            .then_some(())
    });
    // ... and the volume is back at full redundancy, every file as it was.
    wait_full_redundancy(&m);
    let s = status(&m.home).unwrap();
    assert_eq!(n(&s, "/redundancy/degraded"), 0, "{s}");
    drop_caches(&m);
    assert_eq!(sums(&mnt), before, "read back after the repair");

    // The metadata backup no longer names the lost nodes either.
    wait_backup_current(&m);
    // A node that comes back gives up the copies that were rebuilt elsewhere: it keeps
    // only what the volume names now (no block's shard; maybe some of the metadata
    // backup's, placed since it came back).
    nodes[0].start();
    wait_showing("the returning node's surplus released", || {
        let held = n(
            &status(&nodes[0].home).ok_or("no node status")?,
            "/store/shards",
        );
        let s = status(&m.home).ok_or("no status")?;
        let p = s["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == gone[0].as_str()))
            .ok_or("the node is not among the peers")?;
        let named = n(p, "/our_shards") + n(p, "/our_backup_shards");
        (held == named)
            .then_some(())
            .ok_or_else(|| format!("it holds {held} shards, the volume names {named}"))
    });
    assert_eq!(shards_on(&m, &gone[0]), Some(0));
    drop_caches(&m);
    assert_eq!(sums(&mnt), before);
    m.stop();
}

#[test]
fn audits_catch_a_damaged_shard_and_it_is_rebuilt_elsewhere() {
    let root = test_root("bitcloud-audit");
    let nodes = start_nodes(root.path(), 8);
    let (home, mnt) = new_volume(root.path(), "4+2", &nodes);
    // Audits every second; no periodic repair walk: only the failed audit can start it.
    edit_config(
        &home,
        "audit_interval_secs = 600",
        "audit_interval_secs = 1",
    );
    edit_config(
        &home,
        "repair_interval_secs = 300",
        "repair_interval_secs = 86400",
    );
    let mut m = mount_with_peers(root.path(), &home, &mnt, 8);
    // One block: each round audits one of its six shards.
    sh(&mnt, "head -c 1000000 /dev/urandom > one && sync");
    let before = sums(&mnt);
    wait_full_redundancy(&m);
    drop_caches(&m);

    // Delete the last 10 % of one block holder's shard files (its shard of the block, and
    // whatever of the metadata backup it holds).
    let victim = nodes
        .iter()
        .find(|n| shards_on(&m, &n.id()) == Some(1))
        .expect("a node holds a shard of the block");
    for file in shard_files(victim) {
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - len / 10)
            .unwrap();
    }
    let id = victim.id();

    // An audit finds it, and the shard is rebuilt on another node.
    wait_for("a failed audit", || {
        let s = status(&m.home)?;
        let p = s["peers"]
            .as_array()?
            .iter()
            .find(|p| p["id"] == id.as_str())?;
        (n(p, "/audits_failed") >= 1).then_some(())
    });
    wait_for("the shard rebuilt elsewhere", || {
        (shards_on(&m, &id) == Some(0)).then_some(())
    });
    wait_full_redundancy(&m);
    // Audits go on, and honest holders pass them.
    wait_for("an audit passed", || {
        let s = status(&m.home)?;
        let passed: u64 = s["peers"]
            .as_array()?
            .iter()
            .map(|p| n(p, "/audits_passed"))
            .sum();
        (passed > 0).then_some(())
    });
    drop_caches(&m);
    assert_eq!(sums(&mnt), before);

    // A damaged local copy: `fsck --repair` through the mount rebuilds it from the shards.
    // (After a remount nothing is in memory: the read fetches the block into a local file.)
    m.remount();
    wait_for_peers(&m, 8);
    sh(&mnt, "cat one > /dev/null");
    let blocks = home.join("data/volume/blocks");
    let local: Vec<std::path::PathBuf> = std::fs::read_dir(&blocks)
        .unwrap()
        .flatten()
        .filter(|d| d.file_name() != "tmp")
        .flat_map(|d| {
            std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(|f| f.path())
        })
        .collect();
    assert_eq!(local.len(), 1, "the block read back is cached: {local:?}");
    let mut bytes = std::fs::read(&local[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&local[0], bytes).unwrap();
    let out = bitcloud(&home, &["fsck", "--json"]);
    assert_eq!(out.status.code(), Some(4), "fsck finds the damage");
    let out = bitcloud(&home, &["fsck", "--repair", "--json"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("rebuilt from the pool"), "{said}");
    let out = bitcloud(&home, &["fsck"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert_eq!(sums(&mnt), before);
    m.stop();
}

#[test]
fn a_node_that_serves_wrong_bytes_is_caught_banned_and_emptied() {
    let root = test_root("bitcloud-liar");
    let nodes = start_nodes_where(root.path(), 8, |i| i == 0);
    let liar = nodes[0].id();
    let (home, mnt) = new_volume(root.path(), "4+2", &nodes);
    let mut m = mount_with_peers(root.path(), &home, &mnt, 8);
    sh(&mnt, "head -c 16777216 /dev/urandom > f && sync");
    let before = sums(&mnt);
    wait_full_redundancy(&m);
    // Audits start only with the next mount: one in this mount could catch the liar and
    // empty it before the reads below meet it (scores live in the mount's memory).
    assert!(
        shards_on(&m, &liar).is_some_and(|n| n > 0),
        "the liar was given no shards"
    );
    edit_config(
        &home,
        "audit_interval_secs = 600",
        "audit_interval_secs = 1",
    );
    // Every read goes to the pool (a remount empties the memory caches), the liar among
    // the holders: not one wrong byte arrives. (The rest happens in this one mount.)
    m.remount();
    wait_for_peers(&m, 8);
    drop_caches(&m);
    assert_eq!(sums(&mnt), before, "read back with a lying holder");
    // Caught by reads and audits: banned, its shards rebuilt on the others...
    wait_showing("the liar banned and emptied", || {
        let s = status(&m.home).ok_or("no status")?;
        let p = s["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == liar.as_str()))
            .ok_or_else(|| format!("the liar is not among the peers: {s}"))?;
        let banned = p["score"].as_f64().is_some_and(|x| x < 0.5);
        if banned && n(p, "/our_shards") == 0 {
            return Ok(());
        }
        Err(format!(
            "liar {p}; redundancy {}; upload {}; healing {}",
            s["redundancy"], s["upload"], s["healing"]
        ))
    });
    wait_full_redundancy(&m);
    // ... and it gets no new ones.
    sh(&mnt, "head -c 8388608 /dev/urandom > g && sync");
    wait_full_redundancy(&m);
    assert_eq!(
        shards_on(&m, &liar),
        Some(0),
        "a banned peer got new shards"
    );
    let before = sums(&mnt);
    drop_caches(&m);
    assert_eq!(sums(&mnt), before);
    m.stop();
}
