//! Everyday tools on the mount: cp -a, diff -r, tar, rsync, git, sqlite3, dd, find.

use crate::harness::{Mount, sh, write_pattern};

/// Builds a varied tree in `dir`: nested dirs, empty/small/odd-sized/multi-block files, a
/// sparse file, symlinks (relative, dangling), hard links, odd names, modes and old mtimes.
fn make_tree(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("a/b/c")).unwrap();
    std::fs::create_dir_all(dir.join("empty-dir")).unwrap();
    for (i, len) in [
        0usize,
        1,
        4095,
        4096,
        4097,
        1 << 20,
        (1 << 20) + 1,
        3 * (1 << 20) + 12345,
    ]
    .iter()
    .enumerate()
    {
        write_pattern(&dir.join(format!("a/file{i}")), *len, i as u64);
    }
    write_pattern(&dir.join("a/b/c/deep"), 10_000, 99);
    std::fs::write(dir.join("name with spaces & ünïcödé"), b"odd name").unwrap();
    sh(
        dir,
        "truncate -s 50M sparse && printf end >> sparse && printf start | dd of=sparse conv=notrunc status=none",
    );
    sh(
        dir,
        "ln -s a/file1 rel-link && ln -s /nonexistent dangling && ln a/file2 hard-a && ln a/file2 a/b/hard-b",
    );
    sh(
        dir,
        "chmod 600 a/file3 && chmod 755 a/file4 && chmod 1777 empty-dir && touch -d '2001-02-03 04:05:06.123456789' a/file5",
    );
}

#[test]
fn cp_a_diff_tar_rsync_and_remount() {
    let mut m = Mount::new();
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let s = src.path().display().to_string();
    let mnt = m.mnt.clone();
    sh(
        &mnt,
        &format!("cp -a {s} copy && diff -r --no-dereference {s} copy"),
    );
    // Hard links stay one inode; link counts and mtimes survive cp -a.
    sh(
        &mnt,
        "test $(stat -c %i copy/hard-a) = $(stat -c %i copy/a/file2) && test $(stat -c %h copy/a/file2) = 3",
    );
    let mtime = sh(&mnt, "stat -c %y copy/a/file5");
    assert!(
        mtime.starts_with("2001-02-03 04:05:06.123456789"),
        "{mtime}"
    );
    // tar out of the mount and back in.
    let out = tempfile::tempdir().unwrap();
    let o = out.path().display().to_string();
    sh(
        &mnt,
        &format!(
            "tar -cf {o}/t.tar -C copy . && mkdir untar && tar -xf {o}/t.tar -C untar && diff -r --no-dereference {s} untar"
        ),
    );
    // rsync with permissions, times, links, hard links and sparse files.
    sh(
        &mnt,
        &format!(
            "rsync -aHS {s}/ synced/ && diff -r --no-dereference {s} synced && rsync -aHS --checksum {s}/ synced/"
        ),
    );
    let du = sh(&mnt, "du -k copy/sparse | cut -f1");
    assert!(
        du.trim().parse::<u64>().unwrap() < 10_000,
        "sparse file stored densely: {du}"
    );
    m.remount();
    sh(
        &mnt,
        &format!(
            "diff -r --no-dereference {s} copy && diff -r --no-dereference {s} untar && diff -r --no-dereference {s} synced"
        ),
    );
    let found = sh(&mnt, "find copy -type f | wc -l");
    assert_eq!(found.trim(), "13");
}

#[test]
fn git_init_add_commit_log() {
    let m = Mount::new();
    let mnt = m.mnt.clone();
    sh(
        &mnt,
        "git init -q repo && cd repo && git config user.email t@example.com && git config user.name T \
              && for i in $(seq 1 30); do echo line$i > f$i; done && git add . && git commit -qm first \
              && echo more >> f1 && git commit -qam second && git mv f2 g2 && git commit -qm third \
              && test $(git log --oneline | wc -l) = 3 && git fsck --strict 2>/dev/null && git status --porcelain | wc -l | grep -qx 0",
    );
}

#[test]
fn sqlite3_transactions_survive_remount() {
    let mut m = Mount::new();
    let mnt = m.mnt.clone();
    sh(
        &mnt,
        "sqlite3 db.sqlite 'create table t(id integer primary key, v text);' \
              && sqlite3 db.sqlite 'begin; with recursive s(i) as (select 1 union all select i+1 from s where i < 5000) insert into t(v) select hex(randomblob(64)) from s; commit;' \
              && sqlite3 db.sqlite 'begin; delete from t where id % 3 = 0; commit;' \
              && sqlite3 db.sqlite 'begin; update t set v = upper(v) where id < 100; rollback;' \
              && sqlite3 db.sqlite 'pragma journal_mode=wal; insert into t(v) values (\"wal\");' > /dev/null",
    );
    m.remount();
    let out = sh(
        &mnt,
        "sqlite3 db.sqlite 'pragma integrity_check; select count(*) from t;'",
    );
    assert_eq!(
        out, "ok\n3335\n",
        "5000 rows - 1666 deleted + 1 in WAL mode"
    );
}

#[test]
fn dd_one_gib_with_sha256_across_remount() {
    let mut m = Mount::new();
    let mnt = m.mnt.clone();
    let src = tempfile::tempdir().unwrap();
    let s = src.path().display().to_string();
    sh(src.path(), "head -c 1073741824 /dev/urandom > big");
    let want = sh(src.path(), "sha256sum < big");
    sh(
        &mnt,
        &format!("dd if={s}/big of=big bs=1M conv=fsync status=none"),
    );
    assert_eq!(sh(&mnt, "sha256sum < big"), want);
    m.remount();
    assert_eq!(sh(&mnt, "stat -c %s big"), "1073741824\n");
    assert_eq!(sh(&mnt, "sha256sum < big"), want);
    // Overwrite a range in the middle and check it against the same change made locally.
    sh(src.path(), "head -c 3000000 /dev/urandom > patch");
    sh(
        &mnt,
        &format!("dd if={s}/patch of=big bs=4k seek=12345 conv=notrunc status=none"),
    );
    sh(
        src.path(),
        "dd if=patch of=big bs=4k seek=12345 conv=notrunc status=none",
    );
    assert_eq!(
        sh(&mnt, "sha256sum < big"),
        sh(src.path(), "sha256sum < big")
    );
}

#[test]
fn files_larger_than_4_gib_and_holes() {
    let mut m = Mount::new();
    let mnt = m.mnt.clone();
    sh(
        &mnt,
        "truncate -s 6G huge && printf 'past-4G' | dd of=huge bs=1 seek=4500000000 conv=notrunc status=none",
    );
    m.remount();
    assert_eq!(sh(&mnt, "stat -c %s huge"), "6442450944\n");
    assert_eq!(
        sh(&mnt, "dd if=huge bs=1 skip=4500000000 count=7 status=none"),
        "past-4G"
    );
    assert_eq!(
        sh(
            &mnt,
            "dd if=huge bs=1M skip=100 count=1 status=none | tr -d '\\0' | wc -c"
        ),
        "0\n"
    );
    let blocks: u64 = sh(&mnt, "stat -c %b huge").trim().parse().unwrap();
    assert!(blocks < 4096, "holes are stored: {blocks} blocks");
}
