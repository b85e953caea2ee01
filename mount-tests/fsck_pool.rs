//! `fsck` with peers, end to end: a mount and six real nodes. fsck audits every holder of
//! every shard; a deleted shard file and a frozen holder (SIGSTOP: connected, silent) are
//! both found at once, long before the repair grace period, and `fsck --repair` rebuilds
//! their shards on other peers there and then.

use crate::harness::{bitcloud, sh};
use crate::nodes::*;

fn fsck(home: &std::path::Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["fsck", "--json"];
    all.extend_from_slice(args);
    let out = bitcloud(home, &all);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck printed no report ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

#[test]
fn fsck_audits_every_shard_and_repair_respreads_at_once() {
    let root = test_root("bitcloud-fsck-pool");
    let mut nodes = start_nodes(root.path(), 6);
    let (home, mnt) = new_volume(root.path(), "2+2", &nodes);
    // No background audits or repair walks during the test, and the default hour of grace:
    // only fsck can find and repair anything here.
    edit_config(
        &home,
        "audit_interval_secs = 600",
        "audit_interval_secs = 86400",
    );
    edit_config(
        &home,
        "repair_interval_secs = 300",
        "repair_interval_secs = 86400",
    );
    let m = mount_with_peers(root.path(), &home, &mnt, 6);
    sh(
        &mnt,
        "for i in 1 2 3; do head -c 1500000 /dev/urandom > f$i; done; sync",
    );
    let before = sums(&mnt);
    wait_full_redundancy(&m);

    // Three clean checks: every holder earns a history of passed audits (one failure
    // among few successes would ban a peer, and its other shards would go too).
    let mut audited = 0;
    for _ in 0..3 {
        let (code, r) = fsck(&home, &[]);
        assert_eq!(code, Some(0), "{r}");
        audited = n(&r, "/shards_audited");
        assert!(audited > 0, "{r}");
        assert_eq!(n(&r, "/shards_proved"), audited, "{r}");
    }

    // One holder loses a shard file; another freezes.
    let victim = (0..nodes.len())
        .max_by_key(|&i| shard_files(&nodes[i]).len())
        .unwrap();
    assert!(shard_files(&nodes[victim]).len() >= 4);
    std::fs::remove_file(&shard_files(&nodes[victim])[0]).unwrap();
    let frozen = (0..nodes.len())
        .find(|&i| i != victim && !shard_files(&nodes[i]).is_empty())
        .unwrap();
    let frozen_id = nodes[frozen].id();
    nodes[frozen].signal(libc::SIGSTOP);
    let frozen_shards = shard_files(&nodes[frozen]).len() as u64;

    let (code, r) = fsck(&home, &[]);
    assert_eq!(code, Some(4), "fsck finds both: {r}");
    assert_eq!(n(&r, "/shards_proved"), audited - 1 - frozen_shards, "{r}");
    let problems = r["problems"].as_array().unwrap();
    assert!(
        problems.iter().all(|p| p["kind"] == "short_of_shards"),
        "{r}"
    );
    assert!(r.to_string().contains("no longer has it"), "{r}");

    let (code, r) = fsck(&home, &["--repair"]);
    assert_eq!(code, Some(0), "fsck --repair re-spreads at once: {r}");
    assert!(
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["repaired"] == true),
        "{r}"
    );
    // Nothing of ours is left on the frozen node, and the pool is whole again.
    assert_eq!(shards_on(&m, &frozen_id), Some(0));
    wait_full_redundancy(&m);
    let (code, r) = fsck(&home, &[]);
    assert_eq!(code, Some(0), "clean after the repair: {r}");
    drop_caches(&m);
    assert_eq!(sums(&mnt), before);
    nodes[frozen].signal(libc::SIGCONT);
    let mut m = m;
    m.stop();
}
