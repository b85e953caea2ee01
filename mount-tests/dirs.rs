//! Directories through the kernel: offsets that programs seek to (getdents64 + lseek,
//! telldir/seekdir), and directories removed while a descriptor is open on them.

use crate::harness::{Mount, sh};

const DIRSEEK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/mount-tests/scripts/dirseek.py"
);

/// "Directory offsets are below 2^63 and stable: lseek/seekdir to any returned offset resume
/// the listing right after that entry, also while the directory changes." Regression: the
/// cookies had bit 63 set, so lseek(dirfd, d_off) failed with EINVAL for most entries.
#[test]
fn directory_offsets_can_be_sought_to() {
    let mut m = Mount::new();
    sh(&m.mnt, "mkdir big");
    let out = sh(&m.mnt, &format!("python3 {DIRSEEK} big 3000"));
    assert_eq!(out, "ok\n");
    // The same offsets after a remount: they come from the (stable) name tags.
    let before = sh(
        &m.mnt,
        "python3 -c 'import os; print(sorted(os.listdir(\"big\"))[:3])'",
    );
    m.remount();
    let after = sh(
        &m.mnt,
        "python3 -c 'import os; print(sorted(os.listdir(\"big\"))[:3])'",
    );
    assert_eq!(before, after);
}

/// "A directory removed (rmdir, or rename over it) while open keeps answering fstat with
/// st_nlink 0 until its last close." Regression: fstat gave ENOENT. `statx` with
/// AT_STATX_FORCE_SYNC makes the kernel ask the filesystem rather than its attribute cache.
#[test]
fn removed_open_directory_answers_fstat() {
    let m = Mount::new();
    let script = r#"
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
AT_EMPTY_PATH, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS = 0x1000, 0x2000, 0x7ff
def statx_fd(fd):
    buf = ctypes.create_string_buffer(256)
    if libc.statx(fd, b"", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, buf) != 0:
        raise OSError(ctypes.get_errno(), "statx")
    nlink, = struct.unpack_from("<I", buf.raw, 16)
    mode, = struct.unpack_from("<H", buf.raw, 28)
    return nlink, mode
os.mkdir("d")
fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY)
os.rmdir("d")
nlink, mode = statx_fd(fd)
assert nlink == 0 and (mode & 0o170000) == 0o040000, (nlink, oct(mode))
assert os.listdir(fd) == []
os.close(fd)
os.mkdir("d1"); os.mkdir("d2")
fd = os.open("d2", os.O_RDONLY | os.O_DIRECTORY)
os.rename("d1", "d2")
nlink, _ = statx_fd(fd)
assert nlink == 0, nlink
assert os.stat("d2").st_nlink == 2
os.close(fd)
print("ok")
"#;
    assert_eq!(sh(&m.mnt, &format!("python3 -c '{script}'")), "ok\n");
}
