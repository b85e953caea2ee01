//! Leases, end to end: a mount and four real `bitcloud node`s with leases shortened to
//! seconds, two of them with clocks a month off. A running owner's renewals keep every
//! copy alive whatever the clocks say; an owner that goes away has its copies moved to the
//! trash when the lease runs out, gets them back by coming back within the trash period,
//! and loses them (the pool's space comes back) when it stays away longer.

use crate::nodes::*;

const LEASE_SECS: u64 = 6;
const TRASH_SECS: u64 = 20;
const MONTH: i64 = 30 * 86_400;

/// (copies under lease, bytes in the trash) of a node.
fn held(node: &Node) -> Option<(u64, u64)> {
    let s = status(&node.home)?;
    Some((n(&s, "/store/shards"), n(&s, "/store/trash_bytes")))
}

fn all_held(nodes: &[Node]) -> Option<Vec<(u64, u64)>> {
    nodes.iter().map(held).collect()
}

/// What the nodes hold once the metadata backup covers every change and nothing is left to
/// release (the shards of the backup's chunks are held under leases like blocks').
fn settled(m: &crate::harness::Mount, nodes: &[Node]) -> Vec<(u64, u64)> {
    wait_backup_current(m);
    wait_showing("nothing left to release", || {
        let s = status(&m.home).ok_or("no status")?;
        (n(&s, "/upload/releases_pending") == 0)
            .then_some(())
            .ok_or_else(|| s["upload"].to_string())
    });
    all_held(nodes).unwrap()
}

#[test]
fn leases_keep_a_live_owners_shards_and_collect_a_vanished_owners() {
    let root = test_root("bitcloud-lease");
    let mut nodes: Vec<Node> = (0..4).map(|i| node_at(root.path(), i)).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        std::fs::create_dir_all(&node.home).unwrap();
        std::fs::write(
            node.home.join("config.toml"),
            format!("[node]\nlease_secs = {LEASE_SECS}\ntrash_secs = {TRASH_SECS}\n"),
        )
        .unwrap();
        // Clock skew between peers must not expire live leases.
        let skew = match i {
            0 => MONTH,
            1 => -MONTH,
            _ => 0,
        };
        node.env
            .push(("BITCLOUD_FAULT_CLOCK_SKEW_SECS", skew.to_string()));
        node.start();
    }
    let (home, mnt) = new_volume(root.path(), "2+2", &nodes);
    edit_config(&home, "backup_secs = 60", "backup_secs = 1");
    // No access times: reads change no metadata, so the backup (and its shards) stay put.
    let mut m = crate::harness::Mount::existing_with(root.path(), &home, &mnt, &["noatime"]);
    wait_for_peers(&m, 4);
    crate::harness::sh(
        &mnt,
        "for i in 1 2 3 4; do head -c 3000000 /dev/urandom > f$i; done; echo small > s; sync",
    );
    let before = sums(&mnt);
    wait_full_redundancy(&m);
    let placed = settled(&m, &nodes);
    let total: u64 = placed.iter().map(|(c, _)| c).sum();
    assert!(placed.iter().all(|(c, t)| *c > 0 && *t == 0), "{placed:?}");

    // A running owner renews: after several leases' time nothing has expired anywhere.
    wait_for("four rounds of renewals", || {
        let s = status(&m.home)?;
        (n(&s, "/healing/renewed_leases") >= 4 * total).then_some(())
    });
    assert_eq!(all_held(&nodes).unwrap(), placed, "live leases kept");
    drop_caches(&m);
    assert_eq!(sums(&mnt), before);
    // Reading changed access times: a new metadata backup, whose shards are held too.
    let placed = settled(&m, &nodes);

    // The owner goes away: its copies run out of lease and move to the trash.
    m.stop();
    wait_for("every copy in the trash", || {
        all_held(&nodes)?
            .iter()
            .all(|(c, t)| *c == 0 && *t > 0)
            .then_some(())
    });
    // Back within the trash period: the first renewals bring every copy back.
    m.start();
    wait_showing("every copy back from the trash", || {
        let now = all_held(&nodes).ok_or("a node did not answer")?;
        (now == placed)
            .then_some(())
            .ok_or_else(|| format!("{now:?}, placed {placed:?}"))
    });
    drop_caches(&m);
    assert_eq!(sums(&mnt), before, "read back from the restored copies");

    // Gone for good: after the lease and the trash period, the space is free again.
    m.stop();
    wait_for("every copy deleted", || {
        nodes
            .iter()
            .all(|node| {
                status(&node.home).is_some_and(|s| {
                    n(&s, "/store/shards") == 0
                        && n(&s, "/store/trash_bytes") == 0
                        && n(&s, "/store/used_bytes") == 0
                })
            })
            .then_some(())
    });
    for node in &nodes {
        let trash = std::fs::read_dir(node.home.join("data/shards/trash")).unwrap();
        assert_eq!(trash.count(), 0, "{} trash emptied", node.home.display());
    }
}
