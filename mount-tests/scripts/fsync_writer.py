"""Writes files of 1 B to 5 MiB into DIR, fsyncing each, until killed or the mount dies.

usage: fsync_writer.py DIR LEDGER SEED
After each fsync returns, appends "name sha256" to LEDGER (on another filesystem, flushed),
so a checker knows exactly which files must survive a crash of the mount.
"""
import hashlib
import os
import random
import sys

d, ledger, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
sizes = [1, 100, 4095, 65536, 300_000, 1 << 20, 5 << 20]
with open(ledger, "a") as out:
    i = 0
    while True:
        data = os.urandom(rng.choice(sizes))
        name = f"w{seed}-{i}"
        try:
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            break
        out.write(f"{name} {hashlib.sha256(data).hexdigest()}\n")
        out.flush()
        i += 1
