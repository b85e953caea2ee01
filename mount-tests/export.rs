//! File handles (`name_to_handle_at` / `open_by_handle_at`, what an NFS re-export uses):
//! handles outlive the kernel's caches and remounts, and a handle of a deleted file is stale.

use crate::harness::{Mount, sh};

const SCRIPT: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Handle(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int), ("data", ctypes.c_ubyte * 128)]
def handle(path):
    h = Handle(); h.bytes = 128; mid = ctypes.c_int()
    if libc.name_to_handle_at(-100, path.encode(), ctypes.byref(h), ctypes.byref(mid), 0) != 0:
        raise OSError(ctypes.get_errno(), "name_to_handle_at " + path)
    return bytes(h)
def open_handle(mount_fd, raw, flags=os.O_RDONLY):
    h = Handle.from_buffer_copy(raw)
    fd = libc.open_by_handle_at(mount_fd, ctypes.byref(h), flags)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "open_by_handle_at")
    return fd
def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
mode = sys.argv[1]
if mode == "make":
    os.makedirs("a/b/c")
    with open("a/b/c/file", "w") as f: f.write("by handle")
    with open("gone", "w") as f: f.write("x")
    hs = {p: handle(p) for p in ("a/b/c/file", "a/b", "gone")}
    os.unlink("gone")
    with open(sys.argv[2], "wb") as out:
        for p in ("a/b/c/file", "a/b", "gone"):
            out.write(hs[p])
else:
    raw = open(sys.argv[2], "rb").read()
    size = len(raw) // 3
    hfile, hdir, hgone = raw[:size], raw[size:2 * size], raw[2 * size:]
    drop_caches()
    mfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    fd = open_handle(mfd, hfile)
    assert os.read(fd, 100) == b"by handle"
    os.close(fd)
    fd = open_handle(mfd, hdir)
    assert os.listdir(fd) == ["c"], os.listdir(fd)
    assert os.readlink(f"/proc/self/fd/{fd}").endswith("/a/b"), os.readlink(f"/proc/self/fd/{fd}")
    os.close(fd)
    try:
        open_handle(mfd, hgone)
        raise AssertionError("a deleted file opened by handle")
    except OSError as e:
        assert e.errno == errno.ESTALE, e
print("ok")
"#;

/// "File handles work (name_to_handle_at, open_by_handle_at; an NFS re-export needs them):
/// after the kernel dropped its caches and after a remount, a handle opens its file or
/// directory again (directories reconnect through '..'); a deleted file's handle is ESTALE."
/// Regression: without export support every open_by_handle_at failed with ESTALE.
#[test]
fn file_handles_survive_cache_drops_and_remounts() {
    let mut m = Mount::new();
    let handles = tempfile::NamedTempFile::new().unwrap();
    let h = handles.path().display().to_string();
    assert_eq!(
        sh(&m.mnt, &format!("python3 -c '{SCRIPT}' make {h}")),
        "ok\n"
    );
    assert_eq!(
        sh(&m.mnt, &format!("python3 -c '{SCRIPT}' open {h}")),
        "ok\n"
    );
    m.remount();
    assert_eq!(
        sh(&m.mnt, &format!("python3 -c '{SCRIPT}' open {h}")),
        "ok\n"
    );
}
