#!/usr/bin/env bash
# pool-bench.sh — benchmark (not a test): a bitcloud mount with 6 local storage nodes against a
# Tahoe-LAFS 3-of-5 grid and a bindfs passthrough, in one run, interleaved, medians of POOL_RUNS.
# Prints a markdown table (MB/s and ratios) and the peak memory of the mount and of a node.
#
# Usage (as root; run scripts/setup.sh first; the Tahoe column needs network access to PyPI once):
#   cargo build --release && benches/pool-bench.sh
#   POOL_MB=64 POOL_RUNS=1 benches/pool-bench.sh           # a quick look
#
# Environment:
#   BITCLOUD_BIN   bitcloud binary (default target/release/bitcloud of this repository)
#   TAHOE_GRID     ../shared/bench/tahoe-grid.sh by default; missing or POOL_TAHOE=0 -> column skipped
#   POOL_DIR       where homes, shard stores and test files go (default /var/tmp/bitcloud-pool-bench)
#   POOL_MB        file size, MiB (default 256)
#   POOL_RUNS      runs, median reported (default 3)
#   POOL_SHARDS    the volume's scheme (default 3+3: the default for pools of six, docs/pool.md)
#   POOL_OUT       also write the report to this file
#   POOL_PERF      write a CPU profile (perf record, cpu-clock) of the mount and the nodes during
#                  the first upload to this file
#
# Method (each run: bitcloud, then Tahoe, then bindfs, on a fresh random file; MB = 10^6 bytes):
#   upload     a mount and 6 `bitcloud node`s on 127.0.0.2-7 (each its own failure domain). The
#              clock runs from the start of `dd ... conv=fsync` into the mount until `status
#              --json` shows no block pending upload and none short of its k+m shards: the file
#              is sealed, encrypted, erasure-coded and every shard acknowledged (fsynced) by a
#              node. "local" is the part until dd returned (the file durable on the local disk).
#   cold read  `bitcloud cache drop` (every block evicted: the pool is the only copy), the
#              kernel's caches dropped, then `cat` of the file: fetched from the nodes, verified,
#              decoded, decrypted. The file's sha256 is checked after each run.
#   tahoe      `tahoe put` / `tahoe get` of the same file through the client of a 3-of-5 grid on
#              127.0.0.1 (tahoe-grid.sh setup/start); the get writes to a file, as Tahoe's CLI does
#   bindfs     the same file read through a bindfs passthrough of the local disk, cold
#   memory     VmHWM of the mount and the largest VmHWM of the nodes, at the end
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BITCLOUD_BIN:-$REPO/target/release/bitcloud}
TAHOE_GRID=${TAHOE_GRID:-$REPO/../shared/bench/tahoe-grid.sh}
DIR=${POOL_DIR:-/var/tmp/bitcloud-pool-bench}
MB=${POOL_MB:-256}
RUNS=${POOL_RUNS:-3}
SHARDS=${POOL_SHARDS:-3+3}
NODES=6
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3

say() { echo "pool-bench: $*" >&2; }
die() { echo "pool-bench: $*" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || die "must run as root (drop_caches, mounts)"
[[ -x $BIN ]] || die "no bitcloud binary at $BIN (cargo build --release, or set BITCLOUD_BIN)"
for n in "$MB" "$RUNS"; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "sizes/counts must be positive integers (got '$n')"; done
for c in fusermount3 "$PY" dd; do command -v "$c" >/dev/null || die "$c not found (run scripts/setup.sh)"; done
TAHOE=1
if [[ ${POOL_TAHOE:-1} == 0 || ! -f $TAHOE_GRID ]]; then TAHOE=0; say "Tahoe-LAFS column skipped (TAHOE_GRID=$TAHOE_GRID)"; fi
BINDFS=1
command -v bindfs >/dev/null || { BINDFS=0; say "bindfs not found: column skipped"; }

export BITCLOUD_NO_MDNS=1
unset BITCLOUD_LISTEN
HOME_DIR=$DIR/home
MNT=$DIR/mnt
PLAIN=$DIR/plain
BMNT=$DIR/bindfs
NODE_PIDS=()
MOUNT_PID=
TAHOE_BASE=$DIR/tahoe
TAHOE_UP=0

cleanup() {
    set +e
    if mountpoint -q "$MNT" 2>/dev/null; then "$BIN" --home "$HOME_DIR" umount "$MNT" >/dev/null 2>&1 || fusermount3 -u "$MNT"; fi
    [[ -n $MOUNT_PID ]] && { kill "$MOUNT_PID" 2>/dev/null; wait "$MOUNT_PID" 2>/dev/null; }
    mountpoint -q "$BMNT" 2>/dev/null && fusermount -u "$BMNT" 2>/dev/null || fusermount3 -u "$BMNT" 2>/dev/null
    for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    [[ $TAHOE_UP == 1 ]] && BASE=$TAHOE_BASE bash "$TAHOE_GRID" stop >/dev/null 2>&1
}
trap cleanup EXIT

json() { # json HOME POINTER -> value of `status --json` at a /-separated path ("" if absent)
    "$BIN" --home "$1" status --json 2>/dev/null | "$PY" -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].strip("/").split("/"):
    v = v[int(k)] if isinstance(v, list) else v.get(k) if isinstance(v, dict) else None
    if v is None: break
print("" if v is None else (len(v) if isinstance(v, list) else v))' "$2" 2>/dev/null || true
}
wait_until() { # wait_until WHAT SECONDS COMMAND...: polls COMMAND until it succeeds
    local what=$1 secs=$2; shift 2
    local end=$((SECONDS + secs))
    until "$@"; do (( SECONDS < end )) || die "timed out waiting for $what"; sleep 0.05; done
}
now() { date +%s.%N; }
mbps() { "$PY" -c "import sys; print('%.1f' % (int(sys.argv[1]) * 1048576 / 1e6 / float(sys.argv[2])))" "$MB" "$1"; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
secs() { "$PY" -c "import sys; print('%.1f' % ((int(sys.argv[2]) - int(sys.argv[1])) / $(getconf CLK_TCK)))" "$1" "$2"; }

say "setting up under $DIR"
rm -rf "$DIR"; mkdir -p "$DIR" "$MNT" "$PLAIN" "$BMNT"
for i in $(seq 0 $((NODES - 1))); do
    "$BIN" --home "$DIR/node$i" node --offer 16G --no-mdns --listen "/ip4/127.0.0.$((i + 2))/tcp/0" \
        >"$DIR/node$i.log" 2>&1 &
    NODE_PIDS+=($!)
done
"$BIN" --home "$HOME_DIR" init --shards "$SHARDS" >/dev/null 2>&1
for i in $(seq 0 $((NODES - 1))); do
    node_up() { [[ -n $(json "$DIR/node$i" /node/listen/0) ]]; }
    wait_until "node $i" 60 node_up
    "$BIN" --home "$HOME_DIR" peers add "$(json "$DIR/node$i" /node/listen/0)" >/dev/null
done
"$BIN" --home "$HOME_DIR" mount "$MNT" --listen /ip4/127.0.0.1/tcp/0 >"$DIR/mount.log" 2>&1 &
MOUNT_PID=$!
connected() { # storage peers the mount is connected to
    "$BIN" --home "$HOME_DIR" status --json 2>/dev/null | "$PY" -c '
import json, sys
print(sum(1 for p in json.load(sys.stdin).get("peers", []) if p.get("connected") and p.get("storage")))' 2>/dev/null || echo 0
}
all_peers() { mountpoint -q "$MNT" && [[ $(connected) == "$NODES" ]]; }
wait_until "the mount and $NODES peers" 120 all_peers
if [[ $TAHOE == 1 ]]; then
    say "Tahoe-LAFS grid (install, setup, start) under $TAHOE_BASE"
    BASE=$TAHOE_BASE bash "$TAHOE_GRID" install >"$DIR/tahoe-install.log" 2>&1 || die "tahoe install failed: $DIR/tahoe-install.log"
    BASE=$TAHOE_BASE bash "$TAHOE_GRID" setup >"$DIR/tahoe-setup.log" 2>&1 || die "tahoe setup failed: $DIR/tahoe-setup.log"
    TAHOE_UP=1
    BASE=$TAHOE_BASE bash "$TAHOE_GRID" start >"$DIR/tahoe-start.log" 2>&1 || die "tahoe start failed: $DIR/tahoe-start.log"
    TAHOE_C=("$TAHOE_BASE/venv/bin/tahoe" -d "$TAHOE_BASE/grid/client")
fi
if [[ $BINDFS == 1 ]]; then
    bindfs "$PLAIN" "$BMNT"
fi

declare -A R
for run in $(seq 1 "$RUNS"); do
    src=$DIR/src.bin
    head -c $((MB * 1048576)) /dev/urandom >"$src"
    sum=$(sha256sum "$src" | cut -d' ' -f1)
    cold

    m0=$(ticks "$MOUNT_PID"); n0=$(ticks "${NODE_PIDS[@]}")
    if [[ -n ${POOL_PERF:-} ]]; then # a CPU profile of the upload: POOL_PERF=file
        perf record -q -F 499 -e cpu-clock -g -o "$POOL_PERF" \
            -p "$(IFS=,; echo "$MOUNT_PID,${NODE_PIDS[*]}")" -- sleep 8 >/dev/null 2>&1 &
        PERF_PID=$!
        sleep 0.5
    fi
    t0=$(now)
    dd if="$src" of="$MNT/f$run" bs=1M conv=fsync status=none
    t1=$(now)
    # One poller on the control socket (a `bitcloud status` per poll would cost CPU the
    # upload needs).
    "$PY" - "$HOME_DIR/run/control.sock" <<'POLL' || die "timed out waiting for full redundancy"
import json, socket, sys, time
end = time.time() + 600
while time.time() < end:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(b"status\n")
    r = json.loads(s.makefile().readline())
    s.close()
    red, up = r.get("redundancy", {}), r.get("upload", {})
    if up.get("pending_blocks") == 0 and red.get("degraded") == 0 and red.get("local_only") == 0:
        sys.exit(0)
    time.sleep(0.02)
sys.exit(1)
POLL
    t2=$(now)
    m1=$(ticks "$MOUNT_PID"); n1=$(ticks "${NODE_PIDS[@]}")
    [[ -n ${POOL_PERF:-} ]] && wait "$PERF_PID"
    R[cpu,$run]="mount $(secs "$m0" "$m1") s, nodes $(secs "$n0" "$n1") s CPU"
    R[local,$run]=$(mbps "$("$PY" -c "print($t1 - $t0)")")
    R[up,$run]=$(mbps "$("$PY" -c "print($t2 - $t0)")")
    "$BIN" --home "$HOME_DIR" cache drop >/dev/null
    cold
    t0=$(now); cat "$MNT/f$run" >/dev/null; t1=$(now)
    R[get,$run]=$(mbps "$("$PY" -c "print($t1 - $t0)")")
    [[ $(sha256sum "$MNT/f$run" | cut -d' ' -f1) == "$sum" ]] || die "run $run: the file read back from the pool differs"
    say "run $run bitcloud: local ${R[local,$run]} MB/s, to the pool ${R[up,$run]} MB/s (${R[cpu,$run]}), cold pool read ${R[get,$run]} MB/s"

    if [[ $TAHOE == 1 ]]; then
        cold
        t0=$(now); cap=$("${TAHOE_C[@]}" put "$src"); t1=$(now)
        R[tput,$run]=$(mbps "$("$PY" -c "print($t1 - $t0)")")
        cold
        t0=$(now); "${TAHOE_C[@]}" get "$cap" "$DIR/tahoe-out.bin"; t1=$(now)
        R[tget,$run]=$(mbps "$("$PY" -c "print($t1 - $t0)")")
        [[ $(sha256sum "$DIR/tahoe-out.bin" | cut -d' ' -f1) == "$sum" ]] || die "run $run: tahoe returned other bytes"
        rm -f "$DIR/tahoe-out.bin"
        say "run $run tahoe: put ${R[tput,$run]} MB/s, get ${R[tget,$run]} MB/s"
    fi
    if [[ $BINDFS == 1 ]]; then
        cp "$src" "$PLAIN/f"
        cold
        t0=$(now); cat "$BMNT/f" >/dev/null; t1=$(now)
        R[bread,$run]=$(mbps "$("$PY" -c "print($t1 - $t0)")")
        rm -f "$PLAIN/f"
        say "run $run bindfs: cold read ${R[bread,$run]} MB/s"
    fi
    rm -f "$src"
done

median() { # median KEY
    local k=$1 vals=()
    for run in $(seq 1 "$RUNS"); do [[ -n ${R[$k,$run]:-} ]] && vals+=("${R[$k,$run]}"); done
    [[ ${#vals[@]} -gt 0 ]] || { echo "-"; return; }
    "$PY" -c "import statistics, sys; print('%.1f' % statistics.median(map(float, sys.argv[1:])))" "${vals[@]}"
}
ratio() { "$PY" -c "import sys; a, b = sys.argv[1:]; print('-' if '-' in (a, b) else '%.2fx' % (float(a) / float(b)))" "$1" "$2"; }
mount_hwm=$(hwm "$MOUNT_PID")
node_hwm=0
for p in "${NODE_PIDS[@]}"; do h=$(hwm "$p"); (( h > node_hwm )) && node_hwm=$h; done
up=$(median up); get=$(median get); tput=$(median tput); tget=$(median tget); bread=$(median bread)
report=$(cat <<EOF
pool-bench $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $MB MiB file, medians of $RUNS runs, MB/s (10^6 bytes/s)
bitcloud: 1 mount + $NODES nodes on 127.0.0.2-7, --shards $SHARDS; Tahoe-LAFS 1.20 3-of-5 (happy 4) on 127.0.0.1

| | bitcloud | Tahoe-LAFS | bitcloud / Tahoe | bindfs (local disk) |
|---|---:|---:|---:|---:|
| write, durable locally (dd conv=fsync) | $(median local) | | | |
| upload: write until every shard is on a node | $up | $tput | $(ratio "$up" "$tput") | |
| cold read, nothing cached locally | $get | $tget | $(ratio "$get" "$tget") | $bread |

peak RSS: mount $((mount_hwm / 1024)) MiB, largest storage node $((node_hwm / 1024)) MiB
per run (local, upload, read | tahoe put, get | bindfs read):
$(for run in $(seq 1 "$RUNS"); do echo "  run $run: ${R[local,$run]} ${R[up,$run]} ${R[get,$run]} | ${R[tput,$run]:--} ${R[tget,$run]:--} | ${R[bread,$run]:--}"; done)
EOF
)
echo "$report"
[[ -n ${POOL_OUT:-} ]] && echo "$report" >"$POOL_OUT"
exit 0
