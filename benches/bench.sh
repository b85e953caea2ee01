#!/usr/bin/env bash
# bench.sh — benchmark (not a test): bitcloud against the raw disk, a bindfs FUSE passthrough and
# gocryptfs (an encrypting FUSE filesystem), all in one run, on the same disk, interleaved, medians of
# BENCH_RUNS runs. Prints a markdown table with the ratios bitcloud/bindfs and bitcloud/gocryptfs.
#
# Usage (as root; needs fio, bindfs, gocryptfs, python3 — run scripts/setup.sh first):
#   benches/bench.sh                                           # full run (~12 min with bitcloud; depends on its speed)
#   BENCH_SEQ_MB=64 BENCH_FILES=500 BENCH_RAND_MB=32 BENCH_RAND_SECS=2 BENCH_BIG_MB=128 benches/bench.sh
#
# Environment:
#   BITCLOUD_BIN        bitcloud binary (default target/release/bitcloud of this repository); missing -> column skipped
#   BITCLOUD_MOUNT_OPTS extra args for `bitcloud mount`, e.g. "-o foo"
#   BINDFS_OPTS         extra args for bindfs (default "-o big_writes" when bindfs is linked with
#                       libfuse 2, as Debian 12's is: without it every write is 4 KiB; else none)
#   GOCRYPTFS_OPTS      extra args for the gocryptfs mount, e.g. "-kernel_cache" (default none)
#   BENCH_DIR           where the temp dirs go, all on one disk (default /var/tmp)
#   BENCH_TARGETS       subset of "raw bindfs gocryptfs bitcloud" (default all four); a missing
#                       bindfs/gocryptfs/bitcloud is skipped with a message
#   BENCH_RUNS          runs per measurement, median reported (default 3)
#   BENCH_ONLY          subset of "seq files fsx rand big" to measure (default all); e.g.
#                       BENCH_ONLY=files BENCH_RUNS=9 for the metadata rows alone
#   BENCH_SEQ_MB        sequential write/read file size, MiB (default 1024)
#   BENCH_FILES         number of 4 KiB files for create/stat/delete (default 10000)
#   BENCH_RAND_MB       file size for random 4 KiB I/O, MiB (default 256)
#   BENCH_RAND_SECS     seconds per random read / random write run (default 10)
#   BENCH_BIG_MB        file written before reading the mount process's peak RSS, MiB (default 4096)
#   BENCH_FSX_OPS       operations per fsx run (default 10000)
#   BENCH_MOUNT_TIMEOUT seconds to wait for a mount to appear / a daemon to exit (default 60)
#   BENCH_OUT           also write the report (table + per-run values) to this file
#
# Method:
#   seq write    fio, bs=1M, buffered, one fsync at the end (included in the time); MB = 10^6 bytes
#   seq read     cold: FUSE targets are unmounted and remounted, then `sync; echo 3 > drop_caches`
#   files        python3, no fork per file: os.open/os.write(4 KiB)/os.close, then os.stat, then
#                os.unlink over BENCH_FILES files in one directory; each loop timed separately
#                (the stats come right after the writes, so FUSE targets answer a GETATTR for each)
#   fsx          benches/fsx.c (compiled here with cc): the classic fsx mix of reads, writes,
#                mapped reads and writes (msync), truncates, fallocate, punch and zero range,
#                every byte checked, on a 10 MiB and a 256 KiB file; ops/s (the seed is the run).
#                A target that refuses a fallocate mode skips those operations (bindfs skips
#                half the mix, the costliest half: faster than raw ext4 there), so the
#                "classic" rows run only read, write, mmap and truncate: the same work on all
#   random 4 KiB fio psync, --direct=0, bs=4k, on a BENCH_RAND_MB file, each run time-based
#                (BENCH_RAND_SECS): read cold (after a remount + drop_caches: mostly disk + decode),
#                read warm (file read once just before, fio --invalidate=0: served by the kernel page
#                cache where the fs lets it keep pages, as bindfs does; else each read is a FUSE request),
#                then write (ends with an fsync, included)
#   peak memory  a fresh mount, write BENCH_BIG_MB (fio, fsync at end), then VmHWM of the mount process
#   gocryptfs    a fresh CIPHERDIR under the bench dir, `-init` with default crypto (AES-256-GCM,
#                encrypted names) but `-scryptn 10`: the password KDF runs at every (re)mount and at
#                the default logN 16 it allocates 64 MiB, which would dominate the peak-RSS row;
#                mounted with -fg, so the process we start is the daemon whose VmHWM is read
# Each run goes through the targets in turn (raw, bindfs, gocryptfs, bitcloud) so drift hits all of
# them alike.
set -euo pipefail
# bitcloud's node stays on loopback and off multicast (mDNS) here.
export BITCLOUD_NO_MDNS="${BITCLOUD_NO_MDNS:-1}" BITCLOUD_LISTEN="${BITCLOUD_LISTEN:-/ip4/127.0.0.1/tcp/0}"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BITCLOUD_BIN=${BITCLOUD_BIN:-$REPO/target/release/bitcloud}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
BENCH_TARGETS=${BENCH_TARGETS:-raw bindfs gocryptfs bitcloud}
RUNS=${BENCH_RUNS:-3}
SEQ_MB=${BENCH_SEQ_MB:-1024}
NFILES=${BENCH_FILES:-10000}
RAND_MB=${BENCH_RAND_MB:-256}
RAND_SECS=${BENCH_RAND_SECS:-10}
BIG_MB=${BENCH_BIG_MB:-4096}
FSX_OPS=${BENCH_FSX_OPS:-10000}
ONLY=${BENCH_ONLY:-seq files fsx rand big}
MOUNT_TIMEOUT=${BENCH_MOUNT_TIMEOUT:-60}
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3

say() { echo "bench: $*" >&2; }
# wanted GROUP: is this group of measurements in BENCH_ONLY?
wanted() { [[ " $ONLY " == *" $1 "* ]]; }
die() { echo "bench: $*" >&2; exit 2; }

[[ $(id -u) -eq 0 ]] || die "must run as root (drop_caches, mounts)"
for c in fio "$PY" fusermount3 cc; do command -v "$c" >/dev/null || die "$c not found (run scripts/setup.sh)"; done
for n in "$RUNS" "$SEQ_MB" "$NFILES" "$RAND_MB" "$RAND_SECS" "$BIG_MB" "$FSX_OPS"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "sizes/counts must be positive integers (got '$n')"
done

# ---------------------------------------------------------------- targets
TARGETS=()
SKIP_NOTE=()
for t in $BENCH_TARGETS; do
    case $t in
        raw) TARGETS+=(raw) ;;
        bindfs)
            if command -v bindfs >/dev/null; then TARGETS+=(bindfs)
            else SKIP_NOTE+=("bindfs: not installed (run scripts/setup.sh) — column skipped"); fi ;;
        gocryptfs)
            if command -v gocryptfs >/dev/null; then TARGETS+=(gocryptfs)
            else SKIP_NOTE+=("gocryptfs: not installed (run scripts/setup.sh) — column skipped"); fi ;;
        bitcloud)
            if [[ -x $BITCLOUD_BIN ]]; then TARGETS+=(bitcloud)
            else SKIP_NOTE+=("bitcloud: binary not found at $BITCLOUD_BIN (build it or set BITCLOUD_BIN) — column skipped"); fi ;;
        *) die "unknown target '$t' in BENCH_TARGETS" ;;
    esac
done
((${#TARGETS[@]})) || die "no target to measure"
if [[ -z ${BINDFS_OPTS+set} ]]; then
    BINDFS_OPTS=""
    if command -v bindfs >/dev/null && ldd "$(command -v bindfs)" 2>/dev/null | grep -q 'libfuse\.so\.2'; then
        BINDFS_OPTS="-o big_writes"
    fi
fi
for n in "${SKIP_NOTE[@]}"; do say "SKIP $n"; done
has_target() { local t; for t in "${TARGETS[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }

# ---------------------------------------------------------------- state + cleanup
BASE=""
CHILD_PID=""               # the measurement currently running (fio / python)
declare -A FS_PID=()       # target -> PID of the FUSE daemon we started
declare -A MNT=()          # target -> mountpoint
declare -A SRC=()          # target -> bindfs source dir / gocryptfs CIPHERDIR / bitcloud home
declare -A DIR=()          # target -> directory the measurements run in

mount_fstype() {
    local esc=${1// /\\040}
    awk -v m="$esc" '$2 == m { t = $3 } END { if (t != "") print t }' /proc/mounts
}
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local rc=$? t pid grace
    set +e
    trap - EXIT INT TERM
    if [[ -n $CHILD_PID ]] && kill -0 "$CHILD_PID" 2>/dev/null; then
        kill -TERM "$CHILD_PID" 2>/dev/null
        wait_gone "$CHILD_PID" 10 || kill -KILL "$CHILD_PID" 2>/dev/null
    fi
    for t in "${!FS_PID[@]}"; do
        grace=0
        if [[ -n $(mount_fstype "${MNT[$t]}") ]]; then
            grace=15
            fusermount3 -u "${MNT[$t]}" 2>/dev/null || { sleep 1; fusermount3 -u "${MNT[$t]}" 2>/dev/null; } \
                || fusermount3 -uz "${MNT[$t]}" 2>/dev/null
        fi
        pid=${FS_PID[$t]}
        if kill -0 "$pid" 2>/dev/null; then
            wait_gone "$pid" "$grace" || { kill -TERM "$pid" 2>/dev/null; wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null; }
        fi
    done
    if [[ -n $BASE && -d $BASE ]]; then
        if grep -qF " $BASE/" /proc/mounts; then
            say "something is still mounted under $BASE; leaving it in place"
        else
            rm -rf --one-file-system "$BASE"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run a measurement in the background and wait, so signals are handled at once;
# on failure, say what failed and show the tail of the mount daemons' logs, then stop
run() {
    local rc=0 f
    "$@" &
    CHILD_PID=$!
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    if ((rc != 0)); then
        say "FAILED (status $rc): $*"
        for f in "$BASE"/*.log; do
            [[ -e $f ]] || continue
            say "--- tail of $f"; tail -n 20 "$f" >&2
        done
        exit 1
    fi
}

[[ -d $BENCH_DIR ]] || die "BENCH_DIR $BENCH_DIR does not exist"
BASE=$(mktemp -d "$BENCH_DIR/bitcloud-bench.XXXXXX")
chmod 0755 "$BASE"
cc -O2 -o "$BASE/fsx" "$REPO/benches/fsx.c" || die "cannot compile benches/fsx.c"

# free space: the biggest file plus the FUSE targets' copies must fit (all targets hold a seq file at once)
copies=$(( ${#TARGETS[@]} > 3 ? ${#TARGETS[@]} : 3 ))
need_mb=$(( (BIG_MB > SEQ_MB ? BIG_MB : SEQ_MB) * copies + 1024 ))
avail_mb=$(( $(df -Pk "$BASE" | awk 'NR == 2 { print $4 }') / 1024 ))
((avail_mb >= need_mb)) || die "not enough space under $BENCH_DIR: ${avail_mb} MiB free, want ~${need_mb} MiB"

# ---------------------------------------------------------------- mounts
start_fs() {
    local t=$1 want deadline ft
    case $t in
        bindfs)
            # shellcheck disable=SC2086  # options are word-split on purpose
            bindfs -f $BINDFS_OPTS "${SRC[$t]}" "${MNT[$t]}" >>"$BASE/$t.log" 2>&1 &
            want='^fuse' ;;
        gocryptfs)
            # shellcheck disable=SC2086
            gocryptfs -fg -q -passfile "$BASE/gocryptfs.pw" ${GOCRYPTFS_OPTS:-} "${SRC[$t]}" "${MNT[$t]}" \
                >>"$BASE/$t.log" 2>&1 &
            want='^fuse(\.gocryptfs)?$' ;;
        bitcloud)
            # shellcheck disable=SC2086
            "$BITCLOUD_BIN" --home "${SRC[$t]}" mount "${MNT[$t]}" ${BITCLOUD_MOUNT_OPTS:-} >>"$BASE/$t.log" 2>&1 &
            want='^fuse(\.bitcloud)?$' ;;
    esac
    FS_PID[$t]=$!
    deadline=$((SECONDS + MOUNT_TIMEOUT))
    while :; do
        ft=$(mount_fstype "${MNT[$t]}")
        [[ -n $ft && $ft =~ $want ]] && return 0
        if ! kill -0 "${FS_PID[$t]}" 2>/dev/null; then
            say "$t mount process exited before mounting; log:"; tail -n 40 "$BASE/$t.log" >&2; exit 2
        fi
        ((SECONDS < deadline)) || { say "$t not mounted after ${MOUNT_TIMEOUT}s; log:"; tail -n 40 "$BASE/$t.log" >&2; exit 2; }
        sleep 0.1
    done
}

stop_fs() {
    local t=$1 pid=${FS_PID[$1]} rc=0
    fusermount3 -u "${MNT[$t]}" || { sleep 1; fusermount3 -u "${MNT[$t]}"; }
    wait_gone "$pid" "$MOUNT_TIMEOUT" || die "$t mount process $pid still running ${MOUNT_TIMEOUT}s after unmount"
    wait "$pid" || rc=$?
    ((rc == 0)) || say "WARNING: $t mount process exited with status $rc after unmount"
    unset 'FS_PID[$t]'
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# cold: unmount + remount FUSE targets, then drop the page cache
make_cold() {
    local t=$1
    if [[ $t != raw ]]; then stop_fs "$t"; fi
    drop_caches
    if [[ $t != raw ]]; then start_fs "$t"; fi
}

for t in "${TARGETS[@]}"; do
    case $t in
        raw)
            DIR[$t]="$BASE/raw"; mkdir "${DIR[$t]}" ;;
        bindfs)
            SRC[$t]="$BASE/bindfs-src"; MNT[$t]="$BASE/bindfs-mnt"; mkdir "${SRC[$t]}" "${MNT[$t]}"
            start_fs "$t"; DIR[$t]="${MNT[$t]}" ;;
        gocryptfs)
            SRC[$t]="$BASE/gocryptfs-cipher"; MNT[$t]="$BASE/gocryptfs-mnt"; mkdir -m 0700 "${SRC[$t]}"; mkdir "${MNT[$t]}"
            (umask 077; echo "bitcloud-bench" >"$BASE/gocryptfs.pw")
            gocryptfs -init -q -scryptn 10 -passfile "$BASE/gocryptfs.pw" "${SRC[$t]}" >>"$BASE/$t.log" 2>&1 \
                || { tail -n 40 "$BASE/$t.log" >&2; die "gocryptfs -init failed"; }
            start_fs "$t"; DIR[$t]="${MNT[$t]}" ;;
        bitcloud)
            SRC[$t]="$BASE/bitcloud-home"; MNT[$t]="$BASE/bitcloud-mnt"; mkdir -m 0700 "${SRC[$t]}"; mkdir "${MNT[$t]}"
            "$BITCLOUD_BIN" --home "${SRC[$t]}" init >>"$BASE/$t.log" 2>&1 \
                || { tail -n 40 "$BASE/$t.log" >&2; die "bitcloud init failed"; }
            start_fs "$t"; DIR[$t]="${MNT[$t]}" ;;
    esac
done

# ---------------------------------------------------------------- helpers
cat >"$BASE/fsbench.py" <<'PY'
import json, os, sys, time

def fio_result(path, kind, what):
    j = json.load(open(path))["jobs"][0][kind]
    print(j["bw_bytes"] / 1e6 if what == "mbps" else j["iops"])

def files(d, n):
    os.makedirs(d, exist_ok=True)
    names = [os.path.join(d, "f%06d" % i) for i in range(n)]
    buf = bytearray(os.urandom(4096))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    t0 = time.perf_counter()
    for i, p in enumerate(names):
        buf[0:8] = i.to_bytes(8, "little")  # every file distinct (no dedup)
        fd = os.open(p, flags, 0o644)
        os.write(fd, buf)
        os.close(fd)
    t1 = time.perf_counter()
    for p in names:
        os.stat(p)
    t2 = time.perf_counter()
    for p in names:
        os.unlink(p)
    t3 = time.perf_counter()
    os.rmdir(d)
    print(n / (t1 - t0), n / (t2 - t1), n / (t3 - t2))

if __name__ == "__main__":
    if sys.argv[1] == "fio":
        fio_result(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "files":
        files(sys.argv[2], int(sys.argv[3]))
PY

# fio_job OUT.json ARGS...: run one fio job (buffered psync, no preallocation)
fio_job() {
    local out=$1; shift
    run fio --name=bench --ioengine=psync --direct=0 --fallocate=none --output-format=json \
        --output="$out" "$@" >/dev/null
}

declare -A RES=()   # "metric|target" -> space-separated values
declare -A FSX_NOTE=()  # target -> what fsx skipped there (modes the filesystem refused)
record() { RES["$1|$2"]="${RES["$1|$2"]:+${RES["$1|$2"]} }$3"; }

# fio_val read|write mbps|iops: the result of the last fio job
fio_val() { "$PY" "$BASE/fsbench.py" fio "$BASE/fio.json" "$1" "$2"; }
# quiesce: write back every dirty page first, so a target's fsync does not pay for the data
# the previous target left dirty (ext4's ordered journal makes an fsync wait for it: measured,
# bitcloud's 1 GiB write ran at 238 MB/s when measured right after three others, 573 alone).
quiesce() { sync; }
seq_write() { # FILE MiB; then: fio_val write mbps
    quiesce
    fio_job "$BASE/fio.json" --filename="$1" --rw=write --bs=1M --size="${2}M" --end_fsync=1
}

# ---------------------------------------------------------------- measurements
say "base $BASE; targets: ${TARGETS[*]}; runs $RUNS; seq ${SEQ_MB} MiB; files $NFILES; random ${RAND_MB} MiB x ${RAND_SECS}s; big ${BIG_MB} MiB"
for g in $ONLY; do
    [[ $g =~ ^(seq|files|fsx|rand|big)$ ]] || die "BENCH_ONLY: unknown group '$g' (want seq files fsx rand big)"
done
for ((r = 1; r <= RUNS; r++)); do
  if wanted seq; then
    say "run $r/$RUNS: sequential write ${SEQ_MB} MiB"
    for t in "${TARGETS[@]}"; do
        seq_write "${DIR[$t]}/seq.bin" "$SEQ_MB"
        record seqw "$t" "$(fio_val write mbps)"
    done
    say "run $r/$RUNS: cold sequential read"
    for t in "${TARGETS[@]}"; do
        make_cold "$t"
        fio_job "$BASE/fio.json" --filename="${DIR[$t]}/seq.bin" --rw=read --bs=1M --size="${SEQ_MB}M"
        record seqr "$t" "$(fio_val read mbps)"
        rm -f "${DIR[$t]}/seq.bin"
    done
  fi
  if wanted files; then
    say "run $r/$RUNS: $NFILES x 4 KiB files create/stat/delete"
    for t in "${TARGETS[@]}"; do
        quiesce
        run "$PY" "$BASE/fsbench.py" files "${DIR[$t]}/files" "$NFILES" >"$BASE/files.out"
        read -r c s d <"$BASE/files.out"
        record create "$t" "$c"; record stat "$t" "$s"; record delete "$t" "$d"
    done
  fi
  if wanted fsx; then
    say "run $r/$RUNS: fsx ${FSX_OPS} operations on a 10 MiB and a 256 KiB file, full and classic mix"
    for t in "${TARGETS[@]}"; do
        for mix in full classic; do
            for size in 10485760 262144; do
                quiesce
                out=$(run "$BASE/fsx" "${DIR[$t]}/fsx.bin" "$FSX_OPS" "$size" "$r" \
                    $([[ $mix == classic ]] && echo classic)) || die "fsx failed on $t: $out"
                secs=$(awk '{ print $2 }' <<<"$out")
                [[ $mix == full ]] && FSX_NOTE[$t]=$(sed -n 's/.*(\(.*\)).*/\1/p' <<<"$out")
                key=$([[ $size == 10485760 ]] && echo fsx10m || echo fsx256k)
                [[ $mix == classic ]] && key=${key/fsx/fsxc}
                record "$key" "$t" "$(awk -v n="$FSX_OPS" -v s="$secs" 'BEGIN { print n / s }')"
                rm -f "${DIR[$t]}/fsx.bin"
            done
        done
    done
  fi
  if wanted rand; then
    say "run $r/$RUNS: random 4 KiB read cold/warm + write on ${RAND_MB} MiB (${RAND_SECS}s each)"
    for t in "${TARGETS[@]}"; do
        seq_write "${DIR[$t]}/rand.bin" "$RAND_MB"
        make_cold "$t"
        fio_job "$BASE/fio.json" --filename="${DIR[$t]}/rand.bin" --rw=randread --bs=4k --size="${RAND_MB}M" \
            --time_based --runtime="${RAND_SECS}s"
        record randr "$t" "$(fio_val read iops)"
        run dd if="${DIR[$t]}/rand.bin" of=/dev/null bs=1M status=none   # warm it up
        fio_job "$BASE/fio.json" --filename="${DIR[$t]}/rand.bin" --rw=randread --bs=4k --size="${RAND_MB}M" \
            --time_based --runtime="${RAND_SECS}s" --invalidate=0
        record randrw "$t" "$(fio_val read iops)"
        quiesce
        fio_job "$BASE/fio.json" --filename="${DIR[$t]}/rand.bin" --rw=randwrite --bs=4k --size="${RAND_MB}M" \
            --time_based --runtime="${RAND_SECS}s" --end_fsync=1
        record randw "$t" "$(fio_val write iops)"
        rm -f "${DIR[$t]}/rand.bin"
    done
  fi
done

wanted big && say "big write ${BIG_MB} MiB + peak memory (1 run, fresh mounts)"
for t in "${TARGETS[@]}"; do
    wanted big || break
    if [[ $t != raw ]]; then stop_fs "$t"; start_fs "$t"; fi
    seq_write "${DIR[$t]}/big.bin" "$BIG_MB"
    record bigw "$t" "$(fio_val write mbps)"
    if [[ $t != raw ]]; then
        [[ -r /proc/${FS_PID[$t]}/status ]] || die "$t mount process ${FS_PID[$t]} is gone"
        hwm_kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/${FS_PID[$t]}/status")
        record hwm "$t" "$(awk -v k="$hwm_kb" 'BEGIN { print k / 1024 }')"
    fi
    rm -f "${DIR[$t]}/big.bin"
done

for t in "${TARGETS[@]}"; do [[ $t == raw ]] || stop_fs "$t"; done

# ---------------------------------------------------------------- report
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fmt() { awk -v v="$1" 'BEGIN { if (v >= 100) printf "%.0f", v; else if (v >= 10) printf "%.1f", v; else printf "%.2f", v }'; }

ROWS=(seqw seqr create stat delete fsx10m fsx256k fsxc10m fsxc256k randr randrw randw bigw hwm)
declare -A LABEL=(
    [seqw]="seq write ${SEQ_MB} MiB, bs 1M, fsync (MB/s)"
    [seqr]="seq read cold (MB/s)"
    [create]="create ${NFILES} x 4 KiB (files/s)"
    [stat]="stat (files/s)"
    [delete]="delete (files/s)"
    [fsx10m]="fsx ${FSX_OPS} ops, 10 MiB file (ops/s)"
    [fsx256k]="fsx ${FSX_OPS} ops, 256 KiB file (ops/s)"
    [fsxc10m]="fsx classic mix (read/write/mmap/truncate; same work everywhere), 10 MiB (ops/s)"
    [fsxc256k]="fsx classic mix, 256 KiB file (ops/s)"
    [randr]="random read 4 KiB cold, ${RAND_MB} MiB file (IOPS)"
    [randrw]="random read 4 KiB warm (IOPS)"
    [randw]="random write 4 KiB + fsync (IOPS)"
    [bigw]="write ${BIG_MB} MiB, fsync (MB/s, 1 run)"
    [hwm]="peak RSS of mount process after ${BIG_MB} MiB write (MiB; lower is better)"
)

# measured ROW: has any target a value for this row (BENCH_ONLY leaves some out)?
measured() {
    local t
    for t in "${TARGETS[@]}"; do [[ -n ${RES["$1|$t"]:-} ]] && return 0; done
    return 1
}

report() {
    local row t v b c ratio tools
    echo "## bitcloud benchmark — $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) cores"
    echo
    echo "Disk: $(df -PT "$BASE" | awk 'NR == 2 { print $1 " (" $2 ")" }') under $BENCH_DIR. Medians of $RUNS runs, targets interleaved."
    echo "Mount options: bindfs \`${BINDFS_OPTS:-(none)}\`, gocryptfs \`${GOCRYPTFS_OPTS:-(none)}\`, bitcloud \`${BITCLOUD_MOUNT_OPTS:-(none)}\`."
    tools="$(fio --version)"
    if has_target bindfs; then tools+=", bindfs $(bindfs --version 2>/dev/null | awk '{ print $2; exit }')"; fi
    if has_target gocryptfs; then
        tools+=", gocryptfs $(gocryptfs -version 2>/dev/null | awk '{ sub(/;$/, "", $2); print $2; exit }')"
    fi
    echo "Tools: $tools."
    if has_target bitcloud; then
        echo "bitcloud: $BITCLOUD_BIN $("$BITCLOUD_BIN" --version 2>/dev/null | head -n 1 || true)"
    fi
    for n in "${SKIP_NOTE[@]}"; do echo "Skipped: $n"; done
    echo
    echo "Ratio columns = bitcloud's median ÷ the other target's median. Rates (MB/s, files/s, IOPS):"
    echo "higher is better, > 1 means bitcloud is faster. Peak RSS: lower is better, < 1 means bitcloud uses less memory."
    echo
    echo "| measurement | raw | bindfs | gocryptfs | bitcloud | bitcloud/bindfs | bitcloud/gocryptfs |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for row in "${ROWS[@]}"; do
        measured "$row" || continue
        printf '| %s ' "${LABEL[$row]}"
        declare -A med=()
        for t in raw bindfs gocryptfs bitcloud; do
            if ! has_target "$t"; then
                printf '| skipped '
            elif [[ -z ${RES["$row|$t"]:-} ]]; then
                printf '| n/a '
            else
                v=$(median <<<"${RES["$row|$t"]}")
                med[$t]=$v
                printf '| %s ' "$(fmt "$v")"
            fi
        done
        c=${med[bitcloud]:-}
        for t in bindfs gocryptfs; do
            b=${med[$t]:-}
            if [[ -n $b && -n $c ]]; then
                ratio=$(awk -v b="$b" -v c="$c" 'BEGIN { if (b > 0) printf "%.2f", c / b; else print "n/a" }')
            else
                ratio="n/a"
            fi
            printf '| %s ' "$ratio"
        done
        printf '|\n'
        unset med
    done
    echo
    for t in "${TARGETS[@]}"; do
        [[ -n ${FSX_NOTE[$t]:-} ]] && echo "fsx on $t: ${FSX_NOTE[$t]} (operations the filesystem refused are skipped, as fsx does)"
    done
    echo
    echo "Per-run values:"
    for row in "${ROWS[@]}"; do
        for t in "${TARGETS[@]}"; do
            [[ -n ${RES["$row|$t"]:-} ]] || continue
            printf '  %-7s %-9s %s\n' "$row" "$t" "$(for v in ${RES["$row|$t"]}; do printf '%s ' "$(fmt "$v")"; done)"
        done
    done
}

if [[ -n ${BENCH_OUT:-} ]]; then
    report | tee "$BENCH_OUT"
else
    report
fi
