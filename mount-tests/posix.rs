//! POSIX behaviour through the kernel: names, links, renames, attributes, xattrs, errors.
//! Each test's doc names the claim of docs/semantics.md it pins.

use crate::harness::{Mount, sh, sh_fails};

/// "Link counts and ctimes are never stale after link, unlink or rename."
#[test]
fn link_counts_and_ctimes_are_fresh() {
    let m = Mount::new();
    let mnt = m.mnt.clone();
    sh(
        &mnt,
        "touch f && ln f g && test $(stat -c %h f) = 2 && ln g h && test $(stat -c %h f) = 3 \
              && c1=$(stat -c %Z f) && rm g && test $(stat -c %h f) = 2 && test $(stat -c %h h) = 2 \
              && mkdir d && test $(stat -c %h .) = 3 && mv h d/h && test $(stat -c %h f) = 2 \
              && ! rmdir d 2>/dev/null && test -e d/h && rm d/h && rmdir d && test $(stat -c %h .) = 2 && test $(stat -c %h f) = 1",
    );
    // ctime moves on link changes (nanosecond timestamps, so compare full values).
    sh(
        &mnt,
        "touch x && a=$(stat -c %z x) && sleep 0.01 && ln x y && b=$(stat -c %z x) && test \"$a\" != \"$b\"",
    );
}

/// "Names longer than 255 bytes fail with ENAMETOOLONG."
#[test]
fn long_names_are_refused() {
    let m = Mount::new();
    let long = "n".repeat(256);
    let err = sh_fails(&m.mnt, &format!("touch {long}"));
    assert!(err.contains("File name too long"), "{err}");
    sh(&m.mnt, &format!("touch {}", "n".repeat(255)));
}

/// "mv, ln, ln -s, chmod, touch -d and truncate behave as on a local disk."
#[test]
fn shell_tools_mv_ln_chmod_touch_truncate() {
    let m = Mount::new();
    sh(
        &m.mnt,
        "echo hi > a && mv a b && test ! -e a && test \"$(cat b)\" = hi \
                && ln -s b s && test \"$(readlink s)\" = b && test \"$(cat s)\" = hi \
                && chmod 640 b && test $(stat -c %a b) = 640 && chmod u+s,g+s b && test $(stat -c %a b) = 6640 \
                && touch -d '1999-12-31 23:59:59.5' b && test \"$(stat -c %y b)\" = '1999-12-31 23:59:59.500000000 +0000' \
                && TZ=UTC touch -h -d '2010-01-01' s && test \"$(stat -c %Y s)\" = 1262304000 \
                && truncate -s 10 b && test $(stat -c %s b) = 10 && test \"$(head -c 2 b)\" = hi \
                && truncate -s 1 b && test \"$(cat b)\" = h \
                && mkdir -p x/y && echo z > x/y/z && mv x w && test \"$(cat w/y/z)\" = z \
                && mv b w/y/z && test \"$(cat w/y/z)\" = h && test ! -e b \
                && find . | sort | tr '\\n' ' ' | grep -qx '. ./s ./w ./w/y ./w/y/z '",
    );
}

/// "RENAME_NOREPLACE and RENAME_EXCHANGE are supported."
#[test]
fn renameat2_noreplace_and_exchange() {
    let m = Mount::new();
    sh(
        &m.mnt,
        "echo one > a && echo two > b && mkdir d && echo three > d/c",
    );
    let script = r#"
import ctypes, os, errno
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
def r2(a, b, flags):
    rc = libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags)
    return 0 if rc == 0 else ctypes.get_errno()
assert r2("a", "b", 1) == errno.EEXIST           # RENAME_NOREPLACE onto an existing name
assert r2("a", "new", 1) == 0 and not os.path.exists("a")
assert r2("new", "b", 2) == 0                    # RENAME_EXCHANGE
assert open("b").read() == "one\n" and open("new").read() == "two\n"
assert r2("d", "b", 2) == 0                      # exchange a directory with a file
assert open("d").read() == "one\n" and open("b/c").read() == "three\n"
assert r2("nope", "b", 2) == errno.ENOENT
print("ok")
"#;
    assert_eq!(sh(&m.mnt, &format!("python3 -c '{script}'")), "ok\n");
}

/// "Extended attributes can be set, read, listed and removed (user.*, trusted.*, security.*)."
#[test]
fn xattrs_with_setfattr_getfattr() {
    let mut m = Mount::new();
    let mnt = m.mnt.clone();
    sh(
        &mnt,
        "touch f && setfattr -n user.color -v blue f && setfattr -n user.big -v \"$(head -c 60000 /dev/zero | tr '\\0' x)\" f \
              && test \"$(getfattr --only-values -n user.color f)\" = blue && setfattr -x user.big f \
              && mkdir d && setfattr -n trusted.t -v 1 d",
    );
    m.remount();
    let out = sh(&mnt, "getfattr -d -m - f d");
    assert!(
        out.contains("user.color=\"blue\"")
            && !out.contains("user.big")
            && out.contains("trusted.t=\"1\""),
        "{out}"
    );
    let err = sh_fails(&mnt, "getfattr -n user.missing f");
    assert!(err.contains("No such attribute"), "{err}");
    let err = sh_fails(
        &mnt,
        "setfattr -n user.color -v x --raw f; python3 -c 'import os; os.setxattr(\"f\", \"user.color\", b\"y\", os.XATTR_CREATE)'",
    );
    assert!(err.contains("File exists"), "{err}");
}

/// "Big directories list completely and stay consistent while they change."
#[test]
fn large_directory_listing() {
    let m = Mount::new();
    sh(
        &m.mnt,
        "mkdir big && cd big && for i in $(seq 1 3000); do : > f$i; done \
                && test $(ls | wc -l) = 3000 && test $(ls -f | wc -l) = 3002 \
                && rm f1* && test $(ls | wc -l) = 1889 && cd .. && rm -r big && test ! -e big",
    );
}

/// "fallocate extends files; punching a hole reads back as zeros; statfs reports the disk."
#[test]
fn fallocate_punch_and_statfs() {
    let m = Mount::new();
    sh(
        &m.mnt,
        "fallocate -l 3M f && test $(stat -c %s f) = 3145728 \
                && head -c 3145728 /dev/urandom > r && fallocate -p -o 1048576 -l 1048576 r && test $(stat -c %s r) = 3145728 \
                && test \"$(dd if=r bs=1M skip=1 count=1 status=none | tr -d '\\0' | wc -c)\" = 0 \
                && test \"$(dd if=r bs=1M count=1 status=none | tr -d '\\0' | wc -c)\" -gt 1000000 \
                && df -P . | tail -1 | awk '{ exit !($2 > 0) }'",
    );
}

/// "A file unlinked while open stays readable through its descriptor until closed."
#[test]
fn unlinked_while_open() {
    let m = Mount::new();
    let script = r#"
import os
fd = os.open("tmp", os.O_CREAT | os.O_RDWR, 0o600)
os.write(fd, b"x" * 100000)
os.unlink("tmp")
assert not os.path.exists("tmp")
os.lseek(fd, 0, 0)
assert os.read(fd, 200000) == b"x" * 100000
os.close(fd)
print("ok")
"#;
    assert_eq!(sh(&m.mnt, &format!("python3 -c '{script}'")), "ok\n");
}

/// "After a write returns, every read of that range sees it, whatever the open flags."
/// Regression: with FUSE's asynchronous direct I/O, AIO + O_DIRECT writes left pages that a
/// concurrent buffered reader had cached meanwhile, and later buffered reads returned the old
/// bytes (fstests' aio-dio-cycle-write pattern; failed in the first cycle).
#[test]
fn direct_writes_are_seen_by_buffered_readers() {
    let m = Mount::new();
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/mount-tests/scripts/aio_dio_cycle.c"
    );
    let bin = tempfile::tempdir().unwrap();
    let exe = bin.path().join("aio_dio_cycle");
    sh(bin.path(), &format!("cc -O2 -o {} {src}", exe.display()));
    let out = sh(&m.mnt, &format!("{} cycled 100", exe.display()));
    assert_eq!(out, "ok\n");
}

/// "A change of a file's data by another user than root through fallocate or hole punching
/// drops set-user-id, and set-group-id when the file is group-executable, as write(2) does
/// and as ext4 does for these calls." Regression: the bits survived (privilege escalation
/// material).
#[test]
fn fallocate_by_another_user_drops_set_id_bits() {
    let m = Mount::with_options(&["allow_other"]);
    sh(&m.mnt, "chmod 777 .");
    let cases = [
        // (mode set by root, operation by `tests`, mode after)
        ("6777", "fallocate -l 1M", "777"),
        ("2777", "fallocate -p -o 0 -l 4096", "777"),
        ("2767", "fallocate -l 1M", "2767"), // not group-executable: a locking mark, kept
        ("4766", "fallocate -p -o 0 -l 4096", "766"),
        ("2777", "fallocate -n -l 1M", "777"), // KEEP_SIZE too
    ];
    for (i, (before, op, after)) in cases.iter().enumerate() {
        let f = format!("f{i}");
        sh(
            &m.mnt,
            &format!("head -c 8192 /dev/urandom > {f} && chmod {before} {f}"),
        );
        sh(&m.mnt, &format!("runuser -u tests -- {op} {f}"));
        assert_eq!(
            sh(&m.mnt, &format!("stat -c %a {f}")).trim(),
            *after,
            "{op} on a file of mode {before}"
        );
    }
    // Root keeps them (CAP_FSETID).
    sh(
        &m.mnt,
        "head -c 8192 /dev/urandom > r && chmod 6777 r && fallocate -l 1M r && test $(stat -c %a r) = 6777",
    );
}
