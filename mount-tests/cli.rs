//! The command line's errors and reports: every bad input names the problem and exits non-zero.

use crate::harness::{Mount, bitcloud};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn errors_name_the_problem_and_exit_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = mnt.to_str().unwrap();

    let o = bitcloud(&home, &["mount", "--no-init", m]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not initialised"), "{}", stderr(&o));
    let o = bitcloud(&home, &["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not initialised"), "{}", stderr(&o));

    assert!(bitcloud(&home, &["init"]).status.success());
    let o = bitcloud(&home, &["init"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already initialised"), "{}", stderr(&o));

    let o = bitcloud(
        &home,
        &["mount", dir.path().join("missing").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));

    let o = bitcloud(&home, &["mount", m, "-o", "bogus"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown mount option \"bogus\""),
        "{}",
        stderr(&o)
    );

    let o = bitcloud(&home, &["umount", m]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not mounted"), "{}", stderr(&o));

    let o = bitcloud(&home, &["init", "--block-size", "1000"]);
    assert_eq!(o.status.code(), Some(1));

    let o = bitcloud(&home, &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
}

/// "`bitcloud umount` off a terminal prints a line per phase, not per tick." Regression: it
/// repeated "umount writing buffered data: 100% ..." a dozen times (with a falling rate)
/// while it waited on the final checkpoint.
#[test]
fn umount_off_a_terminal_reports_each_phase_once() {
    let mut m = Mount::new();
    crate::harness::sh(
        &m.mnt,
        "head -c 64000000 /dev/urandom > big && head -c 100000 /dev/urandom > small",
    );
    let o = bitcloud(&m.home, &["umount", m.mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.contains("writing buffered data"))
        .map(String::from)
        .collect();
    assert!(lines.len() <= 2, "repeated progress lines: {lines:#?}");
    m.forget_child_after_umount();
}

/// "A mount started the moment `bitcloud umount` returns comes up." Regression: the old
/// process released the volume lock while its control thread still held the database, and
/// the new mount failed with "Database already open".
#[test]
fn mount_right_after_umount() {
    let mut m = Mount::new();
    crate::harness::sh(&m.mnt, "echo kept > f");
    for _ in 0..3 {
        let o = bitcloud(&m.home, &["umount", m.mnt.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut old = m.take_child();
        m.start();
        assert!(crate::harness::wait_with_deadline(&mut old).success());
        assert_eq!(crate::harness::sh(&m.mnt, "cat f"), "kept\n");
    }
}

#[test]
fn mounting_twice_is_refused() {
    let m = Mount::new();
    let other = tempfile::tempdir().unwrap();
    let o = bitcloud(&m.home, &["mount", other.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("already mounted by another bitcloud process"),
        "{}",
        stderr(&o)
    );
    let o = bitcloud(&m.home, &["mount", m.mnt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already mounted"), "{}", stderr(&o));
}

#[test]
fn passphrase_protected_identity() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let o = bitcloud(
        &home,
        &["init", "--passphrase-file", pass.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let identity = std::fs::read_to_string(home.join("identity.age")).unwrap();
    assert!(identity.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
    // No passphrase and no terminal: a clear error.
    let o = bitcloud(&home, &["mount", mnt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("passphrase-protected"),
        "{}",
        stderr(&o)
    );
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "battery staple\n").unwrap();
    let o = bitcloud(
        &home,
        &[
            "mount",
            mnt.to_str().unwrap(),
            "--passphrase-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("wrong passphrase"), "{}", stderr(&o));
}

#[test]
fn status_reports_files_bytes_and_dedup() {
    let mut m = Mount::new();
    crate::harness::write_pattern(&m.path("a"), 3 << 20, 5);
    std::fs::copy(m.path("a"), m.path("b")).unwrap();
    let o = bitcloud(&m.home, &["status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["mounted"], true);
    assert_eq!(v["files"], 2);
    assert_eq!(v["logical_bytes"], 6 << 20);
    assert_eq!(v["dedup_saved_bytes"], 3 << 20, "{v}");
    assert!(v["stored_bytes"].as_u64().unwrap() > 3 << 20);
    m.stop();
    let o = bitcloud(&m.home, &["status"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("not mounted") && text.contains("2 files"),
        "{text}"
    );
}
