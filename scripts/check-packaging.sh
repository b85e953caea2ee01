#!/usr/bin/env bash
# Checks the packaging end to end, as root on Debian: builds the .deb, lists and checks its
# contents, verifies the systemd unit with systemd-analyze, installs the package, runs the
# installed binary and man page, and removes the package again.
#
#   scripts/check-packaging.sh            (BITCLOUD_BIN=path to package a built binary)
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "check-packaging: $*" >&2; exit 1; }

deb=$(packaging/build-deb.sh target/debian | tail -1)
echo "== built $deb"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/bitcloud "./usr/sbin/mount.fuse.bitcloud -> ../bin/bitcloud" ./usr/lib/systemd/user/bitcloud-mount@.service \
         ./usr/lib/systemd/user/bitcloud-node.service \
         ./usr/share/bash-completion/completions/bitcloud ./usr/share/zsh/vendor-completions/_bitcloud \
         ./usr/share/fish/vendor_completions.d/bitcloud.fish ./usr/share/man/man1/bitcloud.1.gz; do
    grep -qF " $f" <<<"$contents" || fail "$f missing from the package"
done
dpkg-deb -f "$deb" Depends | grep -q fuse3 || fail "package does not depend on fuse3"
echo "$contents" | awk '{ print "   " $1, $6 }'

echo "== install"
if dpkg -s bitcloud >/dev/null 2>&1; then dpkg -r bitcloud >/dev/null; fi
trap 'dpkg -r bitcloud >/dev/null 2>&1 || true' EXIT
apt-get install -y -qq "./$deb" >/dev/null || dpkg -i "$deb"
/usr/bin/bitcloud --version
man -l /usr/share/man/man1/bitcloud.1.gz 2>/dev/null | grep -q "Exit status" \
    || zcat /usr/share/man/man1/bitcloud.1.gz | grep -q "Exit status" || fail "man page lacks the exit status"
bash -c 'source /usr/share/bash-completion/completions/bitcloud && complete -p bitcloud' >/dev/null \
    || fail "bash completion does not load"

echo "== mount(8) through the installed helper"
mt=$(mktemp -d)
/usr/bin/bitcloud --home "$mt/home" init >/dev/null
mkdir "$mt/m"
mount -t fuse.bitcloud pkgtest "$mt/m" -o "home=$mt/home" || fail "mount -t fuse.bitcloud failed"
grep -q "^pkgtest $mt/m fuse.bitcloud " /proc/self/mounts || { umount "$mt/m"; fail "not in /proc/mounts as fuse.bitcloud"; }
echo through-mount8 >"$mt/m/f"
/usr/bin/bitcloud --home "$mt/home" umount "$mt/m" >/dev/null || fail "umount failed"
rm -rf "$mt"

echo "== systemd-analyze verify"
unitdir=$(mktemp -d)
cp /usr/lib/systemd/user/bitcloud-mount@.service "$unitdir/bitcloud-mount@home-user-cloud.service"
systemd-analyze verify --man=no "$unitdir/bitcloud-mount@home-user-cloud.service" \
    || fail "systemd-analyze verify failed"
cp /usr/lib/systemd/user/bitcloud-node.service "$unitdir/"
systemd-analyze verify --man=no "$unitdir/bitcloud-node.service" \
    || fail "systemd-analyze verify of the node unit failed"
rm -rf "$unitdir"

dpkg -r bitcloud >/dev/null
[[ ! -e /usr/bin/bitcloud ]] || fail "dpkg -r left /usr/bin/bitcloud behind"
echo "check-packaging: ok"
