#!/usr/bin/env bash
# recover-bench.sh — benchmark (not a test): losing the machine. A mount and 6 local storage
# nodes; a tree of many small files and a few large ones is written and unmounted (the
# unmount publishes the metadata backup); the home is deleted; `bitcloud recover` brings the
# volume back in an empty home from the identity file alone; the tree is listed and read back
# from the pool. Prints what each step took, the backup's size against the data's, and the
# ratios of the recovery to the writing of the same tree in the same run.
#
# Usage (as root; run scripts/setup.sh first):
#   cargo build --release && benches/recover-bench.sh
#   RECOVER_FILES=2000 benches/recover-bench.sh        # a quick look
#
# Environment:
#   BITCLOUD_BIN     bitcloud binary (default target/release/bitcloud of this repository)
#   RECOVER_DIR      where homes and shard stores go (default /var/tmp/bitcloud-recover-bench)
#   RECOVER_FILES    small files (default 10000, 4 KiB each, 100 per directory)
#   RECOVER_BIG_MB   large files' total size, MiB (default 64, in 4 files)
#   RECOVER_OUT      also write the report to this file
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BITCLOUD_BIN:-$REPO/target/release/bitcloud}
DIR=${RECOVER_DIR:-/var/tmp/bitcloud-recover-bench}
FILES=${RECOVER_FILES:-10000}
BIG=${RECOVER_BIG_MB:-64}
NODES=6
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3

say() { echo "recover-bench: $*" >&2; }
die() { echo "recover-bench: $*" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || die "must run as root (drop_caches, mounts)"
[[ -x $BIN ]] || die "no bitcloud binary at $BIN (cargo build --release, or set BITCLOUD_BIN)"
for n in "$FILES" "$BIG"; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "sizes/counts must be positive integers (got '$n')"; done
for c in fusermount3 "$PY"; do command -v "$c" >/dev/null || die "$c not found (run scripts/setup.sh)"; done
export BITCLOUD_NO_MDNS=1
unset BITCLOUD_LISTEN

PIDS=()
MNTS=()
cleanup() {
    for m in "${MNTS[@]}"; do fusermount3 -u -z "$m" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { $PY -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
json() { "$BIN" --home "$1" status --json 2>/dev/null | $PY -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {'d': d}))" "$2"; }
wait_until() { # what, home, python condition on d
    local start; start=$(now)
    until [[ $(json "$2" "$3" 2>/dev/null) == True ]]; do
        sleep 0.2
        (( $(printf '%.0f' "$(since "$start")") < 1800 )) || die "timed out waiting for $1"
    done
}

rm -rf "$DIR"; mkdir -p "$DIR"
ADDRS=()
for i in $(seq 0 $((NODES - 1))); do
    h=$DIR/node$i
    "$BIN" --home "$h" node --offer 4G --no-mdns --listen "/ip4/127.0.0.$((i + 2))/tcp/0" >"$h.log" 2>&1 &
    PIDS+=($!)
done
for i in $(seq 0 $((NODES - 1))); do
    wait_until "node $i" "$DIR/node$i" "len(d['node']['listen']) > 0"
    ADDRS+=("$(json "$DIR/node$i" "d['node']['listen'][0]")")
done
H1=$DIR/home1 M1=$DIR/mnt1
mkdir -p "$M1"
"$BIN" --home "$H1" init --shards 3+3 >/dev/null
sed -i 's/^backup_secs = 60/backup_secs = 5/' "$H1/config.toml"
for a in "${ADDRS[@]}"; do "$BIN" --home "$H1" peers add "$a" >/dev/null; done
cp "$H1/identity.age" "$DIR/identity.age"
"$BIN" --home "$H1" mount "$M1" --listen /ip4/127.0.0.1/tcp/0 >"$DIR/mount1.log" 2>&1 &
PIDS+=($!); MNTS+=("$M1")
wait_until "the first mount" "$H1" "d['mounted'] and sum(1 for p in d['peers'] if p['connected'] and p['storage']) == $NODES"

say "writing $FILES files of 4 KiB and $BIG MiB in 4 large files"
t=$(now)
$PY - "$M1" "$FILES" "$BIG" <<'EOF'
import os, sys
root, files, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(files):
    d = os.path.join(root, "small", f"d{i // 100:04d}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(os.urandom(4096))
os.makedirs(os.path.join(root, "big"), exist_ok=True)
for j in range(4):
    with open(os.path.join(root, "big", f"b{j}"), "wb") as f:
        for _ in range(big // 4):
            f.write(os.urandom(1 << 20))
EOF
sync
WRITE=$(since "$t")
(cd "$M1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$DIR/before.sums"
wait_until "every block in the pool" "$H1" "d['upload']['pending_blocks'] == 0 and d['redundancy']['local_only'] == 0"
PLACED=$(since "$t")
t=$(now)
"$BIN" --home "$H1" umount "$M1" >/dev/null
UMOUNT=$(since "$t")
MNTS=()
grep -q "the pool holds the volume's metadata" "$DIR/mount1.log" || die "the unmount did not publish the backup (see $DIR/mount1.log)"
SEQ=$(json "$H1" "d['backup']['seq']")
CHUNKS=$(json "$H1" "d['backup']['chunks']")
CBYTES=$(json "$H1" "d['backup']['chunk_bytes']")
CUR=$(json "$H1" "d['backup']['current_chunks']")
CURB=$(json "$H1" "d['backup']['current_bytes']")
STORED=$(json "$H1" "d['stored_bytes']")
rm -rf "$H1"

H2=$DIR/home2 M2=$DIR/mnt2
mkdir -p "$M2"
PEERS=()
for a in "${ADDRS[@]}"; do PEERS+=(--peer "$a"); done
t=$(now)
"$BIN" --home "$H2" recover --identity "$DIR/identity.age" "${PEERS[@]}" --listen /ip4/127.0.0.1/tcp/0 >"$DIR/recover.log" 2>&1
RECOVER=$(since "$t")
"$BIN" --home "$H2" mount "$M2" --listen /ip4/127.0.0.1/tcp/0 >"$DIR/mount2.log" 2>&1 &
PIDS+=($!); MNTS+=("$M2")
wait_until "the recovered mount" "$H2" "d['mounted'] and sum(1 for p in d['peers'] if p['connected'] and p['storage']) == $NODES"
echo 3 > /proc/sys/vm/drop_caches
t=$(now)
N=$(find "$M2" -type f | wc -l)
LIST=$(since "$t")
t=$(now)
(cd "$M2" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$DIR/after.sums"
READ=$(since "$t")
cmp -s "$DIR/before.sums" "$DIR/after.sums" || die "the recovered tree differs (see $DIR/*.sums)"
"$BIN" --home "$H2" umount "$M2" >/dev/null
MNTS=()

report=$($PY - <<EOF
w, placed, um, rec, lst, rd = $WRITE, $PLACED, $UMOUNT, $RECOVER, $LIST, $READ
cb, st, cur, curb = $CBYTES, $STORED, $CUR, $CURB
print("## bitcloud recover benchmark — $(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores")
print()
print(f"A mount and $NODES nodes on 127.0.0.2-7 (3+3); $FILES files of 4 KiB in {($FILES + 99) // 100} directories and $BIG MiB in 4 files; every file's sha256 checked after the recovery.")
print()
print("| step | seconds | vs writing the tree |")
print("|---|---:|---:|")
print(f"| write the tree into the mount (to \`sync\`) | {w:.2f} | 1.00 |")
print(f"| ... until every block is in the pool | {placed:.2f} | {placed / w:.2f} |")
print(f"| \`umount\` (publishes the metadata backup) | {um:.2f} | {um / w:.2f} |")
print(f"| \`recover\` in an empty home (find the root, fetch and write the metadata) | {rec:.2f} | {rec / w:.2f} |")
print(f"| list every file of the recovered mount ($N files) | {lst:.2f} | {lst / w:.2f} |")
print(f"| read every file back from the pool and hash it | {rd:.2f} | {rd / w:.2f} |")
print()
print(f"Metadata backup #$SEQ: {cur} chunks, {curb / 2**20:.2f} MiB sealed ({curb / ($FILES + 4):.0f} bytes per file), {100 * curb / st:.2f} % of the {st / 2**20:.1f} MiB of sealed blocks; with the backup before it (kept too) $CHUNKS chunks, {cb / 2**20:.2f} MiB. Each is stored 2x in the pool by 3+3, like the blocks.")
EOF
)
echo "$report"
[[ -n ${RECOVER_OUT:-} ]] && echo "$report" > "$RECOVER_OUT"
say "done ($DIR)"
