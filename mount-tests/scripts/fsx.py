#!/usr/bin/env python3
"""fsx-style random I/O: the same random operations on a file under test and on a reference
file (on an ordinary filesystem), compared byte for byte after every read and at the end.

Usage: fsx.py TEST_FILE REFERENCE_FILE SEED OPS [MAX_SIZE]
Operations: pwrite at a random offset (1 B .. 300 KiB, often crossing block boundaries),
pread and compare, truncate (shrink and grow), fsync, fallocate PUNCH_HOLE, close and reopen,
reads and writes through a shared mmap. Exits 1 naming the failing operation, with the last
few operations before it (replay them with the same seed).
"""
import ctypes
import mmap
import os
import random
import sys

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch(fd, off, ln):
    if LIBC.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, ln) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Fsx:
    def __init__(self, test, ref, seed, max_size):
        self.paths = (test, ref)
        self.seed = seed
        self.max_size = max_size
        self.rnd = random.Random(seed)
        self.fds = [os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644) for p in self.paths]
        self.log = []

    def fail(self, msg):
        print(f"fsx: seed {self.seed}: {msg}", file=sys.stderr)
        print("fsx: last operations:\n  " + "\n  ".join(self.log[-15:]), file=sys.stderr)
        sys.exit(1)

    def compare(self, what, off, a, b):
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            self.fail(f"{what} at {off}: {len(a)} vs {len(b)} bytes, first difference at +{first}")

    def size(self):
        s = [os.fstat(fd).st_size for fd in self.fds]
        if s[0] != s[1]:
            self.fail(f"sizes differ: {s[0]} vs {s[1]}")
        return s[0]

    def step(self, n):
        rnd, fds, cur = self.rnd, self.fds, self.size()
        op = rnd.choices(
            ["write", "read", "truncate", "fsync", "punch", "reopen", "mmap"],
            [40, 30, 8, 4, 5, 5, 8],
        )[0]
        if op == "write":
            off = rnd.randrange(0, self.max_size)
            ln = rnd.choice([1, 7, 4096, 65536, rnd.randrange(1, 300 << 10)])
            ln = min(ln, self.max_size - off) or 1
            data = rnd.randbytes(ln) if rnd.random() < 0.7 else bytes([rnd.randrange(256)]) * ln
            self.log.append(f"{n} write {off} {ln}")
            for fd in fds:
                if os.pwrite(fd, data, off) != ln:
                    self.fail(f"short write at {off}")
        elif op == "read":
            off = rnd.randrange(0, max(cur, 1) + 4096)
            ln = rnd.choice([1, 4096, 65536, rnd.randrange(1, 400 << 10)])
            self.log.append(f"{n} read {off} {ln}")
            a, b = (os.pread(fd, ln, off) for fd in fds)
            self.compare("read", off, a, b)
        elif op == "truncate":
            new = rnd.randrange(0, self.max_size)
            self.log.append(f"{n} truncate {new}")
            for fd in fds:
                os.ftruncate(fd, new)
        elif op == "fsync":
            self.log.append(f"{n} fsync")
            os.fsync(fds[0])
        elif op == "punch" and cur > 0:
            off = rnd.randrange(0, cur)
            ln = rnd.randrange(1, min(cur - off, 2 << 20) + 1)
            self.log.append(f"{n} punch {off} {ln}")
            for fd in fds:
                punch(fd, off, ln)
        elif op == "reopen":
            self.log.append(f"{n} reopen")
            for i, p in enumerate(self.paths):
                os.close(fds[i])
                fds[i] = os.open(p, os.O_RDWR)
        elif op == "mmap" and cur > 0:
            off = rnd.randrange(0, cur) & ~(mmap.PAGESIZE - 1)
            ln = min(rnd.randrange(1, 256 << 10), cur - off)
            write = rnd.random() < 0.5
            data = rnd.randbytes(ln)
            self.log.append(f"{n} mmap {'write' if write else 'read'} {off} {ln}")
            got = []
            for fd in fds:
                m = mmap.mmap(fd, ln, offset=off)
                if write:
                    m[:] = data
                    m.flush()
                else:
                    got.append(bytes(m[:]))
                m.close()
            if got:
                self.compare("mmap read", off, got[0], got[1])

    def run(self, ops):
        for n in range(ops):
            try:
                self.step(n)
            except OSError as e:
                self.fail(f"operation {self.log[-1] if self.log else n} failed: {e}")
        cur = self.size()
        a, b = (os.pread(fd, cur, 0) for fd in self.fds)
        self.compare("final read", 0, a, b)
        for fd in self.fds:
            os.close(fd)
        print(f"fsx: seed {self.seed}: {ops} operations, final size {cur}, identical")


if __name__ == "__main__":
    test, ref, seed, ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    max_size = int(sys.argv[5]) if len(sys.argv) > 5 else 6 << 20
    Fsx(test, ref, seed, max_size).run(ops)
