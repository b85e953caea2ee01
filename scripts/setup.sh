#!/usr/bin/env bash
# setup.sh — install what bitcloud's mount tests, pjdfstest and benchmarks need on a
# fresh Debian 12 machine. Idempotent and quick when everything is already present
# (apt is skipped entirely when every needed command/library exists).
#
# Run as root:   bash scripts/setup.sh
#
# Installs (Debian packages): fuse3 bindfs gocryptfs attr acl rsync sqlite3 git fio python3
#   libacl1-dev (pjdfstest links against libacl.so) build-essential (cc, to link Rust binaries)
#   procps (pgrep/ps used by the scripts) util-linux (mountpoint) systemd (systemd-analyze
#   verify of the unit) gzip
# Also: user `nobody`, user+group `tests` (pjdfstest switches to them),
#   and `user_allow_other` in /etc/fuse.conf.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: must run as root" >&2
    exit 1
fi

# command-or-file -> Debian package that provides it
declare -A NEED=(
    [fusermount3]=fuse3
    [bindfs]=bindfs
    [gocryptfs]=gocryptfs
    [getfattr]=attr
    [setfattr]=attr
    [setfacl]=acl
    [getfacl]=acl
    [rsync]=rsync
    [sqlite3]=sqlite3
    [git]=git
    [fio]=fio
    [python3]=python3
    [cc]=build-essential
    [pgrep]=procps
    [mountpoint]=util-linux
    [systemd-analyze]=systemd
    [gzip]=gzip
    [/usr/lib/x86_64-linux-gnu/libacl.so]=libacl1-dev
    [/usr/include/sys/acl.h]=libacl1-dev
)

missing=()
for what in "${!NEED[@]}"; do
    if [[ $what == /* ]]; then
        # a file path; accept any multiarch libdir for the library
        if [[ $what == *libacl.so ]]; then
            compgen -G "/usr/lib/*/libacl.so" >/dev/null || compgen -G "/usr/lib/libacl.so" >/dev/null \
                || missing+=("${NEED[$what]}")
        else
            [[ -e $what ]] || missing+=("${NEED[$what]}")
        fi
    else
        command -v "$what" >/dev/null 2>&1 || missing+=("${NEED[$what]}")
    fi
done

if ((${#missing[@]})); then
    # unique package names
    mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "setup.sh: installing: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
else
    echo "setup.sh: all packages present, skipping apt"
fi

# /dev/fuse must exist (it does on a normal kernel; containers may need it created)
if [[ ! -e /dev/fuse ]]; then
    modprobe fuse 2>/dev/null || true
    [[ -e /dev/fuse ]] || mknod -m 0666 /dev/fuse c 10 229
fi

# Users/groups for pjdfstest: it uses the user `nobody` with nobody's primary group,
# and the user `tests` with its primary group `tests`.
if ! getent passwd nobody >/dev/null; then
    getent group nogroup >/dev/null || groupadd --system nogroup
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        --gid nogroup nobody
fi
getent group tests >/dev/null || groupadd --system tests
if ! getent passwd tests >/dev/null; then
    useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin \
        --gid tests --comment "Dummy user for pjdfstest" tests
fi

# Let non-root users pass -o allow_other.
touch /etc/fuse.conf
if ! grep -qE '^[[:space:]]*user_allow_other[[:space:]]*$' /etc/fuse.conf; then
    echo "user_allow_other" >>/etc/fuse.conf
    echo "setup.sh: enabled user_allow_other in /etc/fuse.conf"
fi

echo "setup.sh: done"
