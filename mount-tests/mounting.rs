//! Mounting as users and tools do it: two volumes with names of their own, mount(8) and
//! fstab through mount.fuse.bitcloud, the atime options, an ordinary user with and without
//! access to /dev/fuse, and a first mount on a home with no volume.
//!
//! The mount(8) and ordinary-user cases run inside a private mount namespace (`unshare -m`):
//! the helper is put on /usr/sbin with an overlay and /dev/fuse is replaced by a node of the
//! mode under test, both visible to that namespace only and gone with it.

use std::path::Path;
use std::process::Command;

use crate::harness::{self, BIN, Mount, bitcloud, sh};

fn proc_mounts_line(mnt: &Path) -> String {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == mnt.to_str())
        .unwrap_or_default()
        .to_string()
}

/// "Two volumes can be mounted at once with `-o fsname=` / `subtype=` of their own, and
/// /proc/mounts shows them as NAME ... fuse.SUBTYPE (also when mounted as root)."
#[test]
fn two_volumes_with_names_of_their_own() {
    let a = Mount::with_options(&["fsname=alpha"]);
    let mut b = Mount::with_options(&["fsname=beta,subtype=bc2"]);
    let la = proc_mounts_line(&a.mnt);
    let lb = proc_mounts_line(&b.mnt);
    assert!(
        la.starts_with("alpha ") && la.contains(" fuse.bitcloud "),
        "{la}"
    );
    assert!(lb.starts_with("beta ") && lb.contains(" fuse.bc2 "), "{lb}");
    sh(&a.mnt, "echo a > f");
    sh(&b.mnt, "echo b > f");
    assert_eq!(sh(&a.mnt, "cat f"), "a\n");
    assert_eq!(sh(&b.mnt, "cat f"), "b\n");
    // `bitcloud umount` knows its own mount under another type name.
    b.stop();
    let out = bitcloud(&a.home, &["umount", b.mnt.to_str().unwrap()]);
    assert!(!out.status.success());
}

/// "mount(8) mounts a volume through mount.fuse.bitcloud (`mount -t fuse.bitcloud SOURCE DIR
/// -o home=...`, and fstab lines of type fuse.bitcloud); umount(8) unmounts it cleanly; a
/// failing mount exits 32 with the reason."
#[test]
fn mount8_and_fstab_through_the_helper() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let home = r.join("home");
    let out = bitcloud(&home, &["init"]);
    assert!(out.status.success());
    std::fs::create_dir_all(r.join("sbin")).unwrap();
    std::os::unix::fs::symlink(BIN, r.join("sbin/mount.fuse.bitcloud")).unwrap();
    for d in ["m1", "m2"] {
        std::fs::create_dir(r.join(d)).unwrap();
    }
    std::fs::write(
        r.join("fstab"),
        format!(
            "work {r}/m2 fuse.bitcloud noauto,nofail,home={h},noatime 0 0\n",
            r = r.display(),
            h = home.display()
        ),
    )
    .unwrap();
    let script = format!(
        r#"
set -euo pipefail
R={r}
mount -t overlay overlay -o lowerdir=$R/sbin:/usr/sbin /usr/sbin
mount -t fuse.bitcloud mine $R/m1 -o home={h},relatime
grep -q "^mine $R/m1 fuse.bitcloud .*relatime" /proc/self/mounts
echo hello > $R/m1/f
umount $R/m1
# The mount process flushes and exits after umount(8): wait on its volume lock.
for i in $(seq 600); do flock -n {h}/data/volume.lock true && break; sleep 0.05; done
flock -n {h}/data/volume.lock true
mount --bind $R/fstab /etc/fstab
mount $R/m2
grep -q "^work $R/m2 fuse.bitcloud .*noatime" /proc/self/mounts
test "$(cat $R/m2/f)" = hello
{bin} --home {h} umount $R/m2
set +e
mount -t fuse.bitcloud x $R/m1 -o home=$R/nothing-here 2>$R/err
echo "status $?"
cat $R/err
"#,
        r = r.display(),
        h = home.display(),
        bin = BIN,
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("status 32"), "{stdout}");
    assert!(stdout.contains("not initialised"), "{stdout}");
}

/// "Access times follow the mount's policy: relatime (default) updates atime on the first
/// access after a change and then at most daily; strictatime on every access; noatime never.
/// An open for reading counts as an access (reads the kernel serves from its page cache never
/// reach the volume); a listing is an access of the directory." Times are read with statx
/// AT_STATX_FORCE_SYNC: plain stat may show the kernel's cached attributes for up to 1 s.
#[test]
fn atime_policies() {
    let script = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def atime(path):
    buf = ctypes.create_string_buffer(256)
    if libc.statx(-100, path.encode(), 0x2000, 0x20, buf) != 0:   # FORCE_SYNC, STATX_ATIME
        raise OSError(ctypes.get_errno(), "statx")
    secs, nanos = struct.unpack_from("<qI", buf.raw, 64)
    return secs * 10**9 + nanos
def access(path):
    if os.path.isdir(path):
        os.listdir(path)
    else:
        with open(path, "rb") as f:
            f.read()
out = []
for path in ("f", "d"):
    if path == "f":
        with open("f", "w") as f:
            f.write("data")
    else:
        os.mkdir("d")
    os.utime(path, (978307200, os.stat(path).st_mtime))   # atime 2001, before mtime
    a0 = atime(path); access(path); a1 = atime(path); access(path); a2 = atime(path)
    out.append(("changed" if a1 != a0 else "same") + " " + ("changed" if a2 != a1 else "same"))
print(" / ".join(out))
"#;
    let cases = [
        ("", "changed same / changed same"),
        ("strictatime", "changed changed / changed changed"),
        ("strictatime,nodiratime", "changed changed / same same"),
        ("noatime", "same same / same same"),
    ];
    for (opts, want) in cases {
        let opts_list: Vec<&str> = opts.split(',').filter(|o| !o.is_empty()).collect();
        let m = Mount::with_options(&opts_list);
        let out = sh(&m.mnt, &format!("python3 -c '{script}'"));
        assert_eq!(out.trim(), want, "-o {opts:?}");
    }
}

/// "An ordinary user mounts through the setuid fusermount3 even where /dev/fuse is root-only;
/// where fusermount3 cannot open it either, the error names /dev/fuse and the fix."
#[test]
fn ordinary_user_mounts_and_gets_a_clear_error_without_dev_fuse() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    sh(r, "mkdir m h && chown tests:tests m h && chmod 755 .");
    // The test binary may live under a directory the user cannot enter: use a copy.
    std::fs::copy(BIN, r.join("bitcloud")).unwrap();
    let script = format!(
        r#"
set -euo pipefail
R={r}
read -r maj min < <(stat -c '%t %T' /dev/fuse)
mknod $R/fuse-open c $((16#$maj)) $((16#$min)); chmod 0666 $R/fuse-open
mknod $R/fuse-closed c $((16#$maj)) $((16#$min)); chmod 0600 $R/fuse-closed
mount --bind $R/fuse-closed /dev/fuse
set +e
runuser -u tests -- $R/bitcloud --home $R/h mount $R/m 2>$R/err
echo "closed status $?"
set -e
umount /dev/fuse
mount --bind $R/fuse-open /dev/fuse
runuser -u tests -- $R/bitcloud --home $R/h mount $R/m 2>$R/log &
pid=$!
for i in $(seq 600); do grep -q "mounted at" $R/log && break; kill -0 $pid || {{ cat $R/log; exit 1; }}; sleep 0.05; done
grep -q "^bitcloud $R/m fuse.bitcloud" /proc/self/mounts
runuser -u tests -- sh -c "echo mine > $R/m/f && cat $R/m/f"
runuser -u tests -- $R/bitcloud --home $R/h umount $R/m
wait
"#,
        r = r.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = std::fs::read_to_string(r.join("err")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{err}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("closed status 1"), "{stdout}");
    assert!(
        err.contains("/dev/fuse") && err.contains("chmod 0666 /dev/fuse"),
        "the error must name the device and the fix: {err}"
    );
    assert!(stdout.contains("mine"), "{stdout}");
}

/// "`bitcloud mount DIR` on a home with no volume creates one (and says where the identity is
/// and that it must be kept), creating DIR if it is inside the user's home; `--no-init`
/// refuses instead."
#[test]
fn first_mount_creates_the_volume_and_the_mountpoint() {
    let root = tempfile::tempdir().unwrap();
    let user_home = root.path().join("user");
    std::fs::create_dir(&user_home).unwrap();
    let home = root.path().join("bitcloud-home");
    let mnt = user_home.join("cloud");
    let refused = harness::loopback_only(&mut Command::new(BIN))
        .arg("--home")
        .arg(&home)
        .args(["mount", "--no-init"])
        .arg(&mnt)
        .env("HOME", &user_home)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("not initialised"), "{err}");
    assert!(
        !home.exists() && !mnt.exists(),
        "--no-init created something"
    );

    let log = root.path().join("mount.log");
    let mut child = harness::loopback_only(&mut Command::new(BIN))
        .arg("--home")
        .arg(&home)
        .arg("mount")
        .arg(&mnt)
        .env("HOME", &user_home)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(&mut child, mnt.clone());
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("mounted at")
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let said = std::fs::read_to_string(&log).unwrap();
    for needle in [
        "initialised a new volume",
        &format!("identity     {}", home.join("identity.age").display()),
        "Keep a copy of",
        &format!("created the mountpoint {}", mnt.display()),
    ] {
        assert!(said.contains(needle), "missing {needle:?} in:\n{said}");
    }
    sh(&mnt, "echo first > f && test \"$(cat f)\" = first");
    let out = bitcloud(&home, &["umount", mnt.to_str().unwrap()]);
    assert!(out.status.success());
}

/// Kills a mount started by hand, and detaches its mountpoint, also when the test fails.
struct KillOnDrop<'a>(&'a mut std::process::Child, std::path::PathBuf);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.1)
                .status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
