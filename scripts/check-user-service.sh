#!/usr/bin/env bash
# check-user-service.sh: runs bitcloud's systemd user unit (packaging/systemd/bitcloud-mount@.service,
# installed by `bitcloud service install`) under a REAL `systemd --user` manager, as the
# unprivileged user `tests`, and checks its whole life:
#   1. init + `service install ~/cloud`: exit 0, unit file written, the instance active,
#      ~/cloud a bitcloud FUSE mount, a written file reads back (sha256), `bitcloud status`.
#   2. `systemctl --user stop`: inactive, Result=success, mount gone; start again: the file is
#      still there, same hash (durability across a clean stop).
#   3. `kill -9` of the service's MainPID: Restart=on-failure brings it back, the dead FUSE mount
#      is replaced by exactly one working mount, and a file fsynced just before the kill is intact.
#   4. `service uninstall ~/cloud`: inactive, unit file gone, mount gone.
#
# How: there is no systemd as PID 1 on the CI machines, so the script re-executes itself in a
# private mount namespace (unshare -m) and there
#   - mounts a tmpfs on /run with /run/systemd/system in it (sd_booted() becomes true, only in
#     this namespace) and /run/user/UID, the test user's XDG_RUNTIME_DIR;
#   - if /dev/fuse is not read-write for everybody (no udev to apply its usual 0666 mode),
#     bind-mounts a 0666 node for the same device over it, again only in this namespace;
#   - creates a cgroup2 directory delegated to the test user (systemd must create init.scope
#     and the service cgroups below its own cgroup) and starts `systemd --user` in it;
#   - listens on /run/systemd/journal/{socket,stdout} with a small Python stand-in for
#     journald (there is none, and a user manager closes its stderr), so the manager's log and
#     the unit's output (StandardOutput=journal, as shipped) land in one file, printed on failure.
#     The unit itself runs exactly as `service install` writes it: no drop-ins.
# Everything is undone by an EXIT trap: the manager is stopped (SIGTERM makes a user manager
# stop its units and exit), leftover mounts are detached, the cgroup and temp files removed;
# the mounts above disappear with the namespace.
#
# Run as root after scripts/setup.sh (user `tests`, fuse3, systemd):
#   BITCLOUD_BIN=$PWD/target/debug/bitcloud bash scripts/check-user-service.sh
# Prints SKIP and exits 0 only when the host cannot run a user manager at all (no writable
# cgroup2 hierarchy, mount namespaces not allowed).
set -euo pipefail

say() { echo "check-user-service: $*"; }
SKIPPED=0
skip() { say "SKIP: $*"; SKIPPED=1; exit 0; }
die() { say "FAIL: $*" >&2; exit 1; }

TEST_USER=${BITCLOUD_TEST_USER:-tests}
SYSTEMD=/usr/lib/systemd/systemd

# ---------------------------------------------------------------------------------------------
# Outside the namespace: checks, then re-execute in a private mount namespace.
if [[ ${BITCLOUD_USVC_IN_NS:-} != 1 ]]; then
    [[ $(id -u) -eq 0 ]] || die "must run as root (it creates a mount namespace and a cgroup)"
    [[ -n ${BITCLOUD_BIN:-} ]] || die "set BITCLOUD_BIN to the bitcloud binary to test"
    [[ -x $BITCLOUD_BIN ]] || die "BITCLOUD_BIN=$BITCLOUD_BIN is not an executable"
    getent passwd "$TEST_USER" >/dev/null || die "no user '$TEST_USER' (run scripts/setup.sh)"
    for c in systemctl systemd-escape setpriv unshare fusermount3 python3 sha256sum; do
        command -v "$c" >/dev/null || die "$c not found (run scripts/setup.sh)"
    done
    [[ -x $SYSTEMD ]] || die "$SYSTEMD not found (run scripts/setup.sh: it installs systemd)"
    unshare --mount --propagation private true 2>/dev/null \
        || skip "cannot create a mount namespace here (unshare -m fails), so no private /run for a user manager"
    export BITCLOUD_USVC_IN_NS=1 BITCLOUD_BIN
    exec unshare --mount --propagation private -- bash "$(readlink -f "${BASH_SOURCE[0]}")" "$@"
fi

# ---------------------------------------------------------------------------------------------
# Inside the namespace.
START=$SECONDS
T_UID=$(id -u "$TEST_USER")
T_GID=$(id -g "$TEST_USER")

# The cgroup2 hierarchy: unified (/sys/fs/cgroup) or hybrid (/sys/fs/cgroup/unified).
CGROOT=
for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
    if [[ $(stat -fc %T "$d" 2>/dev/null) == cgroup2fs ]]; then CGROOT=$d; break; fi
done
[[ -n $CGROOT ]] || skip "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified: systemd --user needs one"

WORK=         # temp dir: binary, the user's home, logs
CG=           # the delegated cgroup2 directory
CG1=          # on hybrid hosts, its twin in the name=systemd v1 hierarchy
MGR_PID=      # the systemd --user we started
CATCHER_PID=  # the journal stand-in
FAILED_DIAG=0 # diagnostics printed once

as_user() {
    setpriv --reuid="$T_UID" --regid="$T_GID" --init-groups \
        env -i HOME="$T_HOME" USER="$TEST_USER" LOGNAME="$TEST_USER" \
        XDG_RUNTIME_DIR="$RUNTIME" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$@"
}
# systemctl --user / its properties, as the test user.
uctl() { as_user systemctl --user "$@"; }
prop() { uctl show -p "$2" --value "$1"; }

# Polls CMD... every 0.2 s until it succeeds or TIMEOUT seconds pass.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for: $what"
        sleep 0.2
    done
}

# The mounts exactly at $1, one "source fstype" line each (mountpoints here have no spaces).
mounts_at() { awk -v m="$1" '$2 == m { print $1, $3 }' /proc/self/mounts; }

diagnostics() {
    ((FAILED_DIAG == 0)) || return 0
    FAILED_DIAG=1
    echo "---------------- diagnostics ----------------"
    if [[ -n $MGR_PID ]] && kill -0 "$MGR_PID" 2>/dev/null; then
        echo "== systemctl --user status"
        uctl --no-pager status 2>&1 | head -40 || true
        if [[ -n ${INST:-} ]]; then
            echo "== systemctl --user status $INST"
            uctl --no-pager status "$INST" 2>&1 | head -30 || true
            echo "== systemctl --user show $INST (selected)"
            uctl show -p ActiveState -p SubState -p Result -p MainPID -p NRestarts \
                -p ExecMainCode -p ExecMainStatus "$INST" 2>&1 || true
        fi
    else
        echo "== the user manager is not running"
    fi
    echo "== bitcloud mounts"
    awk '$1 == "bitcloud" || $3 ~ /^fuse/ { print; f = 1 } END { if (!f) print "(none)" }' /proc/self/mounts
    if [[ -n $WORK ]]; then
        echo "== user manager and unit log ($LOGDIR/journal.log, last 60 lines)"
        tail -n 60 "$LOGDIR/journal.log" 2>/dev/null || echo "(none)"
        echo "== user manager stdout/stderr ($LOGDIR/manager.log)"
        tail -n 20 "$LOGDIR/manager.log" 2>/dev/null || echo "(none)"
    fi
    echo "---------------------------------------------"
}

# Kills what is left in our cgroup tree (only processes we started end up there).
kill_cgroup() {
    [[ -n $CG && -d $CG ]] || return 0
    if [[ -e $CG/cgroup.kill ]]; then
        echo 1 >"$CG/cgroup.kill" 2>/dev/null || true
    else
        local f pid
        while IFS= read -r f; do
            while IFS= read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$f"
        done < <(find "$CG" -name cgroup.procs)
    fi
}

cgroup_empty() { ! grep -q 'populated 1' "$CG/cgroup.events" 2>/dev/null; }

cleanup() {
    local rc=$?
    set +eu
    ((rc == 0)) || diagnostics
    if [[ -n $MGR_PID ]] && kill -0 "$MGR_PID" 2>/dev/null; then
        # SIGTERM: a user manager starts exit.target, stops every unit (the mount unmounts
        # cleanly) and exits.
        kill -TERM "$MGR_PID"
        local deadline=$((SECONDS + 60))
        while kill -0 "$MGR_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$MGR_PID" 2>/dev/null; then
            say "the user manager did not exit in 60 s; killing it"
            kill -KILL "$MGR_PID"
        fi
        wait "$MGR_PID" 2>/dev/null
    fi
    if [[ -n $CATCHER_PID ]]; then
        kill -TERM "$CATCHER_PID" 2>/dev/null
        wait "$CATCHER_PID" 2>/dev/null
    fi
    if [[ -n $CG && -d $CG ]]; then
        kill_cgroup
        local deadline=$((SECONDS + 10))
        until cgroup_empty || ((SECONDS >= deadline)); do sleep 0.1; done
    fi
    if [[ -n $WORK ]]; then
        # Anything still mounted under the work dir (deepest first).
        local m
        while IFS= read -r m; do
            fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null \
                || say "warning: could not detach $m"
        done < <(awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r)
    fi
    local g
    for g in "$CG" "$CG1"; do
        [[ -n $g && -d $g ]] || continue
        # Child cgroups first (rmdir of a cgroup dir ignores its control files).
        find "$g" -depth -type d -exec rmdir {} + 2>/dev/null \
            || say "warning: could not remove cgroup $g"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        rm -rf --one-file-system "$WORK" || say "warning: could not remove $WORK"
    fi
    if ((SKIPPED)); then
        :
    elif ((rc == 0)); then
        say "ok ($((SECONDS - START)) s)"
    else
        say "FAILED (exit $rc) after $((SECONDS - START)) s" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- namespace setup --------------------------------------------------------------------------
mount --make-rprivate /
# /tmp, not $TMPDIR: the test user must be able to traverse it.
WORK=$(mktemp -d /tmp/bitcloud-usvc.XXXXXX)
chmod 711 "$WORK"
LOGDIR=$WORK/logs
T_HOME=$WORK/home
MNT=$T_HOME/cloud
BCHOME=$T_HOME/bitcloud-home
RUNTIME=/run/user/$T_UID
mkdir -p "$WORK/bin" "$LOGDIR" "$T_HOME"
# A copy the test user can reach (the checkout may be in a directory it cannot traverse).
install -m 0755 "$BITCLOUD_BIN" "$WORK/bin/bitcloud"
BIN=$WORK/bin/bitcloud
chown "$T_UID:$T_GID" "$LOGDIR" "$T_HOME"
chmod 700 "$T_HOME"

# A private /run: /run/systemd/system makes sd_booted() true for the manager and systemctl.
mount -t tmpfs -o mode=0755 bitcloud-usvc-run /run
mkdir -p /run/systemd/system "$RUNTIME"
chown "$T_UID:$T_GID" "$RUNTIME"
chmod 700 "$RUNTIME"

# /dev/fuse: without udev it can be root-only (0600); udev's rule makes it 0666, and a user
# mount needs that (fuser, like libfuse, opens it before falling back to fusermount3).
if ! as_user test -r /dev/fuse -a -w /dev/fuse; then
    say "NOTE: /dev/fuse is $(stat -c %a /dev/fuse) (no udev); giving it udev's usual 0666 inside this namespace only"
    read -r fmaj fmin < <(stat -c '%t %T' /dev/fuse)
    mknod -m 0666 /run/bitcloud-usvc-fuse c "$((16#$fmaj))" "$((16#$fmin))"
    mount --bind /run/bitcloud-usvc-fuse /dev/fuse
    as_user test -r /dev/fuse -a -w /dev/fuse || die "could not make /dev/fuse usable for $TEST_USER"
fi

# The delegated cgroup.
CG=$CGROOT/bitcloud-usvc-$$-$RANDOM
mkdir "$CG" 2>/dev/null || { CG=; skip "cannot create a cgroup under $CGROOT (read-only cgroup2?): systemd --user needs a delegated cgroup"; }
chown -R "$T_UID:$T_GID" "$CG"
# Hybrid hosts also have the name=systemd v1 hierarchy, which systemd keeps in step ("compat");
# delegate a twin there too, else every unit start logs "Failed to create compat systemd cgroup".
if [[ $CGROOT == /sys/fs/cgroup/unified ]] \
    && awk '$2 == "/sys/fs/cgroup/systemd" && $3 == "cgroup" { f = 1 } END { exit !f }' /proc/self/mounts; then
    CG1=/sys/fs/cgroup/systemd/${CG##*/}
    if mkdir "$CG1" 2>/dev/null; then chown -R "$T_UID:$T_GID" "$CG1"; else CG1=; fi
fi

# --- a stand-in for journald -------------------------------------------------------------------
# There is no journald, and a user manager closes its stderr: with nothing listening on the
# journal sockets both its own log and the unit's output (StandardOutput=journal, the default)
# would be lost. This listener takes both (native datagrams, stdout streams) into one file.
cat >"$WORK/journal-catcher.py" <<'EOF'
import os, selectors, socket, struct, sys, time

out = open(sys.argv[1], "a", buffering=1, encoding="utf-8", errors="replace")
os.makedirs("/run/systemd/journal", mode=0o755, exist_ok=True)
sel = selectors.DefaultSelector()

def stamp():
    t = time.time()
    return time.strftime("%H:%M:%S", time.localtime(t)) + ".%03d" % int(t % 1 * 1000)

def native(data):
    """KEY=value lines, or KEY\n<le64 length><bytes>\n for values with newlines."""
    f, i = {}, 0
    while i < len(data):
        nl = data.find(b"\n", i)
        nl = len(data) if nl < 0 else nl
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            (n,) = struct.unpack_from("<Q", data, nl + 1)
            k, v = line, data[nl + 9 : nl + 9 + n]
            i = nl + 10 + n
        f[k.decode(errors="replace")] = v.decode(errors="replace")
    return f

dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dgram.bind("/run/systemd/journal/socket")
stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
stream.bind("/run/systemd/journal/stdout")
stream.listen(64)
for path in ("/run/systemd/journal/socket", "/run/systemd/journal/stdout"):
    os.chmod(path, 0o666)
sel.register(dgram, selectors.EVENT_READ, None)
sel.register(stream, selectors.EVENT_READ, None)
conns = {}  # connection -> [pending bytes, header lines still expected, name]

def emit(name, line):
    if len(line) > 3 and line[0] == "<" and line[2] == ">":
        line = line[3:]  # syslog level prefix
    out.write(f"{stamp()} {name}: {line}\n")

while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is dgram:
            data = dgram.recv(1 << 20)
            try:
                f = native(data)
            except Exception:
                f = {"MESSAGE": repr(data[:200])}
            name = f.get("SYSLOG_IDENTIFIER", "?")
            for line in f.get("MESSAGE", "").splitlines() or [""]:
                emit(name, line)
        elif s is stream:
            c, _ = stream.accept()
            conns[c] = [b"", 7, "?"]
            sel.register(c, selectors.EVENT_READ, None)
        else:
            st = conns[s]
            data = s.recv(65536)
            if not data:
                if st[0]:
                    emit(st[2], st[0].decode(errors="replace"))
                sel.unregister(s)
                s.close()
                del conns[s]
                continue
            st[0] += data
            while b"\n" in st[0]:
                line, st[0] = st[0].split(b"\n", 1)
                text = line.decode(errors="replace")
                if st[1] > 0:  # header: identifier, unit, priority, level prefix, 3 forward flags
                    if st[1] == 7:
                        st[2] = text
                    st[1] -= 1
                else:
                    emit(st[2], text)
EOF
python3 "$WORK/journal-catcher.py" "$LOGDIR/journal.log" </dev/null >"$LOGDIR/catcher.err" 2>&1 &
CATCHER_PID=$!
journal_ready() {
    kill -0 "$CATCHER_PID" 2>/dev/null || die "the journal stand-in exited: $(cat "$LOGDIR/catcher.err")"
    [[ -S /run/systemd/journal/socket && -S /run/systemd/journal/stdout ]]
}
wait_for 10 "the journal stand-in's sockets" journal_ready

# --- the user manager -------------------------------------------------------------------------
say "starting systemd --user for $TEST_USER (uid $T_UID) in cgroup $CG"
(
    echo "$BASHPID" >"$CG/cgroup.procs"
    if [[ -n $CG1 ]]; then echo "$BASHPID" >"$CG1/cgroup.procs"; fi
    exec setpriv --reuid="$T_UID" --regid="$T_GID" --init-groups \
        env -i HOME="$T_HOME" USER="$TEST_USER" LOGNAME="$TEST_USER" \
        XDG_RUNTIME_DIR="$RUNTIME" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
        "$SYSTEMD" --user --log-target=journal
) </dev/null >"$LOGDIR/manager.log" 2>&1 &
MGR_PID=$!

manager_state() {
    kill -0 "$MGR_PID" 2>/dev/null || die "systemd --user exited (see its output below)"
    MSTATE=$(uctl is-system-running 2>/dev/null) || true
    [[ $MSTATE == running || $MSTATE == degraded ]]
}
wait_for 30 "the user manager to be running" manager_state
[[ $MSTATE == running ]] || {
    uctl --no-pager --failed list-units || true
    die "the user manager is $MSTATE, not running"
}
say "user manager (pid $MGR_PID) is running: $(systemctl --version | head -n 1)"

INST=$(systemd-escape --path --template=bitcloud-mount@.service "$MNT")
UNIT_FILE=$T_HOME/.config/systemd/user/bitcloud-mount@.service

is_active() { [[ $(uctl is-active "$INST" 2>/dev/null) == active ]]; }
expect_state() {
    local s
    s=$(uctl is-active "$INST" 2>/dev/null) || true
    [[ $s == "$1" ]] || die "$INST is '$s', expected '$1'"
}
# Exactly one mount at $MNT, a bitcloud FUSE mount, answering statfs.
expect_mounted() {
    local m
    m=$(mounts_at "$MNT")
    [[ -n $m ]] || die "nothing mounted at $MNT"
    [[ $(wc -l <<<"$m") -eq 1 ]] || die "more than one mount at $MNT (stale mount left?): $m"
    [[ $m == "bitcloud fuse.bitcloud" || $m == "bitcloud fuse" ]] \
        || die "the mount at $MNT is '$m', not a bitcloud FUSE mount"
    as_user stat -f "$MNT" >/dev/null || die "the mount at $MNT does not answer statfs"
}
expect_unmounted() {
    local m
    m=$(mounts_at "$MNT")
    [[ -z $m ]] || die "still mounted at $MNT: $m"
    as_user stat "$MNT" >/dev/null || die "$MNT is not a plain directory again"
}
hash_of() { as_user sha256sum "$1" | cut -d' ' -f1; }
expect_hash() {
    local h
    h=$(hash_of "$1") || die "cannot read $1"
    [[ $h == "$2" ]] || die "$1 reads back with sha256 $h, expected $2"
}
# `bitcloud status --json`, and one of its fields printed as JSON (strings quoted).
status_json() { as_user "$BIN" --home "$BCHOME" status --json; }
json_field() { python3 -c 'import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print(json.dumps(v))' "$1"; }

# Test data, outside the mount: 3 MiB + 17 bytes of random (several blocks, a ragged tail).
head -c $((3 * 1024 * 1024 + 17)) /dev/urandom >"$WORK/payload.src"
head -c $((512 * 1024 + 5)) /dev/urandom >"$WORK/crash.src"
chmod 644 "$WORK/payload.src" "$WORK/crash.src"
PAYLOAD_SUM=$(sha256sum <"$WORK/payload.src" | cut -d' ' -f1)
CRASH_SUM=$(sha256sum <"$WORK/crash.src" | cut -d' ' -f1)

# --- 1. install -------------------------------------------------------------------------------
say "1. init, service install ~/cloud"
as_user "$BIN" --home "$BCHOME" init >"$LOGDIR/init.out" 2>&1 \
    || { cat "$LOGDIR/init.out"; die "bitcloud init failed"; }
say "   bitcloud init: exit 0"
# The unit does not inherit the test's environment: keep its node on loopback, no mDNS.
sed -i 's/^mdns = true/mdns = false/; s#^listen = \[\]#listen = ["/ip4/127.0.0.1/tcp/0"]#' "$BCHOME/config.toml"
grep -q '^mdns = false' "$BCHOME/config.toml" || die "could not turn mDNS off in $BCHOME/config.toml"
as_user "$BIN" --home "$BCHOME" service install "$MNT" >"$LOGDIR/install.out" 2>&1 \
    || { cat "$LOGDIR/install.out"; die "bitcloud service install failed"; }
sed 's/^/   | /' "$LOGDIR/install.out"
say "   service install: exit 0"
[[ -f $UNIT_FILE ]] || die "no unit file at $UNIT_FILE"
# service install quotes each path (systemd's quoting; these temp paths need no escaping).
grep -qxF "ExecStart=\"$BIN\" --home \"$BCHOME\" mount %f" "$UNIT_FILE" \
    || die "the unit's ExecStart does not run $BIN --home $BCHOME: $(grep ExecStart= "$UNIT_FILE")"
say "   unit file written, ExecStart=$BIN --home $BCHOME mount %f"
expect_state active
[[ $(uctl is-enabled "$INST" 2>/dev/null) == enabled ]] || die "$INST is not enabled"
say "   $INST: active, enabled"
expect_mounted
say "   $MNT: one bitcloud FUSE mount ($(mounts_at "$MNT"))"
PID1=$(prop "$INST" MainPID)
[[ $(readlink "/proc/$PID1/exe") == "$BIN" ]] || die "MainPID $PID1 is not $BIN"
as_user dd if="$WORK/payload.src" of="$MNT/payload.bin" bs=1M conv=fsync status=none \
    || die "writing $MNT/payload.bin failed"
as_user mkdir "$MNT/dir"
# shellcheck disable=SC2016 # $1 is expanded by the inner sh
as_user sh -c 'echo "hello from the user service" >"$1"' sh "$MNT/dir/note.txt"
expect_hash "$MNT/payload.bin" "$PAYLOAD_SUM"
say "   wrote payload.bin (3 MiB, fsync) and dir/note.txt; payload.bin reads back, sha256 ${PAYLOAD_SUM:0:16}..."
as_user "$BIN" --home "$BCHOME" status >"$LOGDIR/status.out" 2>&1 \
    || { cat "$LOGDIR/status.out"; die "bitcloud status failed"; }
grep -qF "$MNT" "$LOGDIR/status.out" \
    || { cat "$LOGDIR/status.out"; die "bitcloud status does not mention the mountpoint $MNT"; }
sed 's/^/   | /' "$LOGDIR/status.out"
json=$(status_json) || die "bitcloud status --json failed"
[[ $(json_field mounted <<<"$json") == true ]] || die "status --json: mounted is not true: $json"
[[ $(json_field pid <<<"$json") == "$PID1" ]] || die "status --json: pid is not $PID1: $json"
[[ $(json_field mountpoint <<<"$json") == "\"$MNT\"" ]] || die "status --json: mountpoint is not $MNT: $json"
[[ $(json_field files <<<"$json") -ge 2 ]] || die "status --json: fewer than 2 files: $json"
say "   bitcloud status / status --json: mounted, pid $PID1 (the unit's MainPID)"

# --- 2. clean stop and start ------------------------------------------------------------------
say "2. systemctl --user stop, then start"
uctl stop "$INST" || die "systemctl --user stop $INST failed"
expect_state inactive
result=$(prop "$INST" Result)
[[ $result == success ]] || die "after stop, Result=$result (expected success)"
# Result=success also covers death by SIGTERM; exit code 0 means bitcloud handled it.
code=$(prop "$INST" ExecMainCode) status=$(prop "$INST" ExecMainStatus)
[[ $code == 1 && $status == 0 ]] \
    || die "bitcloud did not exit 0 on SIGTERM (ExecMainCode=$code ExecMainStatus=$status; 1/0 expected)"
expect_unmounted
say "   stopped: inactive, Result=success, bitcloud exited 0 on SIGTERM, nothing mounted at $MNT"
json=$(status_json) || die "bitcloud status --json (not mounted) failed"
[[ $(json_field mounted <<<"$json") == false ]] || die "status --json says mounted after stop: $json"
say "   bitcloud status --json: mounted=false (the volume lock was released)"
uctl start "$INST" || die "systemctl --user start $INST failed"
expect_state active
expect_mounted
expect_hash "$MNT/payload.bin" "$PAYLOAD_SUM"
[[ $(as_user cat "$MNT/dir/note.txt") == "hello from the user service" ]] \
    || die "dir/note.txt lost or changed across the clean stop"
say "   started again: active, mounted, payload.bin same sha256, dir/note.txt intact"

# --- 3. crash recovery ------------------------------------------------------------------------
say "3. kill -9 of the MainPID, Restart=on-failure"
as_user dd if="$WORK/crash.src" of="$MNT/crash.bin" bs=64k conv=fsync status=none \
    || die "writing $MNT/crash.bin failed"
OLD_PID=$(prop "$INST" MainPID)
RESTARTS=$(prop "$INST" NRestarts)
[[ $OLD_PID -gt 0 ]] || die "no MainPID"
as_user kill -KILL "$OLD_PID"
say "   wrote crash.bin (512 KiB, fsync), then kill -9 $OLD_PID"
restarted() {
    local pid
    pid=$(prop "$INST" MainPID) || return 1
    [[ $pid -gt 0 && $pid -ne $OLD_PID ]] && is_active
}
wait_for 30 "$INST to come back with a new MainPID" restarted
NEW_PID=$(prop "$INST" MainPID)
n=$(prop "$INST" NRestarts)
((n > RESTARTS)) || die "NRestarts did not grow ($RESTARTS -> $n)"
say "   restarted by the manager: MainPID $OLD_PID -> $NEW_PID, NRestarts $RESTARTS -> $n"
expect_mounted
say "   $MNT: exactly one live bitcloud mount again (the dead one was detached)"
expect_hash "$MNT/crash.bin" "$CRASH_SUM"
expect_hash "$MNT/payload.bin" "$PAYLOAD_SUM"
[[ $(as_user cat "$MNT/dir/note.txt") == "hello from the user service" ]] || die "dir/note.txt lost after the crash"
# shellcheck disable=SC2016 # $1 is expanded by the inner sh
as_user sh -c 'echo after >"$1" && cat "$1"' sh "$MNT/after-crash.txt" >/dev/null \
    || die "cannot write to the mount after the restart"
say "   crash.bin and payload.bin intact (sha256), the mount takes writes"

# --- 4. uninstall -----------------------------------------------------------------------------
say "4. service uninstall ~/cloud"
as_user "$BIN" --home "$BCHOME" service uninstall "$MNT" >"$LOGDIR/uninstall.out" 2>&1 \
    || { cat "$LOGDIR/uninstall.out"; die "bitcloud service uninstall failed"; }
sed 's/^/   | /' "$LOGDIR/uninstall.out"
say "   service uninstall: exit 0"
expect_state inactive
[[ ! -e $UNIT_FILE ]] || die "the unit file $UNIT_FILE is still there"
[[ ! -e $T_HOME/.config/systemd/user/default.target.wants/$INST && ! -L $T_HOME/.config/systemd/user/default.target.wants/$INST ]] \
    || die "the instance is still enabled (default.target.wants/$INST)"
expect_unmounted
say "   inactive, disabled, unit file removed, nothing mounted at $MNT"
json=$(status_json) || die "bitcloud status --json after uninstall failed"
[[ $(json_field mounted <<<"$json") == false ]] || die "status --json says mounted after uninstall: $json"
say "   the volume is still there, not mounted ($(json_field files <<<"$json") files)"
