#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this). Run as root on Linux with
# /dev/fuse: it installs what it needs (scripts/setup.sh), then runs
#   1. cargo fmt --check and cargo clippy --all-targets -D warnings
#   2. cargo nextest: unit tests, the model-based volume test, and mount-tests/ (real FUSE
#      mounts used with cp, tar, rsync, git, sqlite3, dd ...)
#   3. the Debian package: build, contents, systemd-analyze verify, install, remove
#   4. the systemd user unit, run by a real `systemd --user` as an unprivileged user: service
#      install, stop/start, restart after kill -9, uninstall (scripts/check-user-service.sh)
#   5. pjdfstest (the POSIX filesystem test suite) against a real bitcloud mount
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export CARGO_TERM_COLOR=never
# Every bitcloud started here keeps its node on loopback and off multicast (mDNS): CI may
# talk to 127.0.0.0/8 only. Tests that need other addresses make them in namespaces.
export BITCLOUD_NO_MDNS=1 BITCLOUD_LISTEN=/ip4/127.0.0.1/tcp/0

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo nextest run"
cargo nextest run --locked --no-fail-fast
echo "== packaging"
# The binary the mount-tests ran (nextest built it); a plain `cargo build` here would build
# libp2p and the rest a second time (dev-dependencies unify features differently).
test -x target/debug/bitcloud
BITCLOUD_BIN="$PWD/target/debug/bitcloud" bash scripts/check-packaging.sh
echo "== systemd user service"
BITCLOUD_BIN="$PWD/target/debug/bitcloud" bash scripts/check-user-service.sh
echo "== pjdfstest"
BITCLOUD_SKIP_SETUP=1 BITCLOUD_BIN="$PWD/target/debug/bitcloud" bash scripts/pjdfstest.sh
