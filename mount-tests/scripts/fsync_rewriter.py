"""Rewrites parts of one existing file and fsyncs it, over and over, until killed.

usage: fsync_rewriter.py FILE LEDGER SEED
Before each fsync appends "pending SHA" to LEDGER and after it "done SHA" (SHA of the whole
file as it must read after that fsync), flushed each time, so a checker knows which states a
crash may leave: the last "done", or the "pending" after it.
"""
import hashlib
import os
import random
import sys

path, ledger, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
with open(path, "rb") as f:
    model = bytearray(f.read())
fd = os.open(path, os.O_RDWR)
with open(ledger, "a") as out:
    while True:
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            if op < 0.7:
                off = rng.randrange(0, len(model) + 70_000)
                data = os.urandom(rng.choice([1, 100, 4096, 30_000, 70_000]))
                os.pwrite(fd, data, off)
                if len(model) < off:
                    model.extend(bytes(off - len(model)))
                model[off:off + len(data)] = data
            else:
                size = rng.randrange(0, len(model) + 1)
                os.ftruncate(fd, size)
                del model[size:]
        sha = hashlib.sha256(model).hexdigest()
        out.write(f"pending {sha}\n")
        out.flush()
        try:
            os.fsync(fd)
        except OSError:
            break
        out.write(f"done {sha}\n")
        out.flush()
