"""Directory offsets through the kernel: getdents64 + lseek to every returned d_off, telldir /
seekdir through glibc, and a listing resumed while the directory changes.

usage: dirseek.py DIR N
Creates N files in DIR (which must be empty) and checks that
  - every d_off is a valid (non-negative) loff_t and lseek(dirfd, d_off, SEEK_SET) works;
  - resuming at any d_off returns exactly the entries listed after it;
  - seekdir(telldir()) positions work through glibc;
  - a listing paged in small steps while entries are removed and added returns every entry
    that was there throughout exactly once.
Prints "ok" on success; raises on the first mismatch.
"""
import ctypes
import os
import random
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
SYS_getdents64 = 217  # x86_64
libc.syscall.restype = ctypes.c_long
libc.lseek.restype = ctypes.c_long
libc.lseek.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int]


def getdents(fd, size=32768):
    """One getdents64 call: a list of (name, d_off)."""
    buf = ctypes.create_string_buffer(size)
    n = libc.syscall(SYS_getdents64, fd, buf, size)
    if n < 0:
        raise OSError(ctypes.get_errno(), "getdents64")
    out, pos, raw = [], 0, buf.raw[:n]
    while pos < n:
        _ino, off, reclen, _typ = struct.unpack_from("<QqHB", raw, pos)
        name = raw[pos + 19 : pos + reclen].split(b"\0", 1)[0].decode()
        out.append((name, off))
        pos += reclen
    return out


def seek(fd, off):
    r = libc.lseek(fd, off, os.SEEK_SET)
    if r < 0:
        raise OSError(ctypes.get_errno(), f"lseek(dirfd, {off:#x})")


def listing(fd, start=0, size=32768):
    seek(fd, start)
    out = []
    while True:
        batch = getdents(fd, size)
        if not batch:
            return out
        out.extend(batch)


def main():
    d, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):
        open(os.path.join(d, f"file-{i:05d}"), "w").close()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    full = listing(fd)
    names = [x for x, _ in full]
    assert sorted(names) == sorted([".", ".."] + [f"file-{i:05d}" for i in range(n)]), "listing"
    for i, (name, off) in enumerate(full):
        assert off >= 0, f"d_off of {name} is {off:#x} (negative as loff_t)"
        seek(fd, off)
        after = getdents(fd, 4096)
        expect = names[i + 1 : i + 1 + len(after)]
        got = [x for x, _ in after]
        assert got == expect, f"resume at {name} ({off:#x}): {got[:3]} != {expect[:3]}"

    # telldir / seekdir through glibc.
    class Dirent(ctypes.Structure):
        _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                    ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                    ("d_name", ctypes.c_char * 256)]
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.POINTER(Dirent)
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.telldir.restype = ctypes.c_long
    libc.telldir.argtypes = [ctypes.c_void_p]
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.closedir.argtypes = [ctypes.c_void_p]
    dirp = libc.opendir(d.encode())
    assert dirp, "opendir"
    positions = []  # (telldir before reading, name read)
    while True:
        pos = libc.telldir(dirp)
        assert pos >= 0, f"telldir gave {pos}"
        ent = libc.readdir(dirp)
        if not ent:
            break
        positions.append((pos, ent.contents.d_name.decode()))
    assert [x for _, x in positions] == names, "readdir order differs from getdents"
    rng = random.Random(7)
    for pos, name in rng.sample(positions, min(400, len(positions))):
        libc.seekdir(dirp, pos)
        ent = libc.readdir(dirp)
        assert ent and ent.contents.d_name.decode() == name, f"seekdir to {pos} did not give {name}"
    libc.closedir(dirp)

    # Page through in small steps while the directory changes.
    originals = set(names) - {".", ".."}
    seen = []
    off = 0
    k = 0
    while True:
        seek(fd, off)
        batch = getdents(fd, 512)
        if not batch:
            break
        seen.extend(x for x, _ in batch)
        off = batch[-1][1]
        victim = batch[0][0]
        if victim.startswith("file-"):
            os.unlink(os.path.join(d, victim))
        open(os.path.join(d, f"new-{k}"), "w").close()
        k += 1
    got = [x for x in seen if x in originals]
    assert len(got) == len(originals) and set(got) == originals, \
        f"{len(got)} of {len(originals)} originals listed, {len(set(got))} distinct"
    os.close(fd)
    print("ok")


main()
