//! A private pool, end to end: three real nodes that admit one volume's node only
//! (`node.allow`). The member's blocks reach full redundancy and read back from the pool; a
//! stranger that knows the nodes' addresses is disconnected at once and stores nothing.

use crate::harness::{Mount, bitcloud, sh};
use crate::nodes::*;

#[test]
fn a_private_pool_serves_its_member_and_refuses_a_stranger() {
    let root = test_root("bitcloud-private");
    // The member's node id: its volume mounted once, alone.
    let home = root.path().join("home");
    let mnt = root.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    assert!(
        bitcloud(&home, &["init", "--shards", "2+1"])
            .status
            .success()
    );
    let mut m = Mount::existing(root.path(), &home, &mnt);
    let member = status(&home).unwrap()["node"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    m.stop();

    let mut nodes: Vec<Node> = (0..3).map(|i| node_at(root.path(), i)).collect();
    for node in &mut nodes {
        std::fs::create_dir_all(&node.home).unwrap();
        std::fs::write(
            node.home.join("config.toml"),
            format!("[node]\nallow = [\"{member}\"]\n"),
        )
        .unwrap();
        node.env.push(("RUST_LOG", "bitcloud=info".into()));
        node.start();
    }
    for node in &nodes {
        let out = bitcloud(&home, &["peers", "add", &node.addr()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The member publishes its metadata backup quickly and reads change no metadata: what
    // it stores on the nodes is settled before the stranger comes.
    edit_config(&home, "backup_secs = 60", "backup_secs = 1");
    m.options = vec!["noatime".into()];
    m.start();
    wait_for_peers(&m, 3);
    sh(&mnt, "head -c 3000000 /dev/urandom > f && sync");
    let before = sums(&mnt);
    wait_full_redundancy(&m);
    wait_backup_current(&m);
    let used: Vec<u64> = nodes
        .iter()
        .map(|node| n(&status(&node.home).unwrap(), "/store/used_bytes"))
        .collect();

    // A stranger with the same addresses.
    let root2 = test_root("bitcloud-stranger");
    let (home2, mnt2) = new_volume(root2.path(), "2+1", &nodes);
    let s = Mount::existing(root2.path(), &home2, &mnt2);
    let stranger = status(&home2).unwrap()["node"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    sh(&mnt2, "head -c 3000000 /dev/urandom > g && sync");
    wait_for("every node to refuse the stranger", || {
        nodes
            .iter()
            .all(|node| {
                std::fs::read_to_string(node.home.with_extension("log"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| {
                        l.contains("refused a peer outside the private pool")
                            && l.contains(&stranger)
                    })
            })
            .then_some(())
    });
    let st = status(&home2).unwrap();
    assert_eq!(n(&st, "/redundancy/full"), 0, "{st}");
    assert!(n(&st, "/redundancy/local_only") > 0, "{st}");
    assert_eq!(connected_peers(&s), 0, "{st}");
    for (node, before) in nodes.iter().zip(&used) {
        assert_eq!(
            n(&status(&node.home).unwrap(), "/store/used_bytes"),
            *before,
            "the stranger stored nothing on {}",
            node.home.display()
        );
    }
    // The member is served as before.
    drop_caches(&m);
    assert_eq!(sums(&mnt), before);
    let out = bitcloud(&home2, &["umount", "--no-wait", mnt2.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = s;
    s.forget_child_after_umount();
    m.stop();
}
