#!/usr/bin/env bash
# Builds a Debian package of bitcloud from this repository with dpkg-deb (no extra tools):
# the release binary, the mount(8) helper link, the systemd user unit, bash/zsh/fish completions and the man page,
# all generated from the clap definitions of the binary being packaged.
#
#   packaging/build-deb.sh [OUT_DIR]      -> OUT_DIR/bitcloud_<version>_<arch>.deb (default target/debian)
#
# Environment: BITCLOUD_BIN to package an already-built binary instead of `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/debian}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
if [[ -z ${BITCLOUD_BIN:-} ]]; then
    cargo build --release --locked --bin bitcloud
    BITCLOUD_BIN=target/release/bitcloud
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -Dm755 "$BITCLOUD_BIN" "$stage/usr/bin/bitcloud"
strip --strip-debug "$stage/usr/bin/bitcloud" 2>/dev/null || true
# mount(8) runs /sbin/mount.fuse.bitcloud for `mount -t fuse.bitcloud` and fstab lines.
mkdir -p "$stage/usr/sbin"
ln -s ../bin/bitcloud "$stage/usr/sbin/mount.fuse.bitcloud"
install -Dm644 packaging/systemd/bitcloud-mount@.service "$stage/usr/lib/systemd/user/bitcloud-mount@.service"
install -Dm644 packaging/systemd/bitcloud-node.service "$stage/usr/lib/systemd/user/bitcloud-node.service"
mkdir -p "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
    "$stage/usr/share/fish/vendor_completions.d" "$stage/usr/share/man/man1" "$stage/usr/share/doc/bitcloud"
"$BITCLOUD_BIN" completions bash >"$stage/usr/share/bash-completion/completions/bitcloud"
"$BITCLOUD_BIN" completions zsh >"$stage/usr/share/zsh/vendor-completions/_bitcloud"
"$BITCLOUD_BIN" completions fish >"$stage/usr/share/fish/vendor_completions.d/bitcloud.fish"
"$BITCLOUD_BIN" manpage | gzip -9n >"$stage/usr/share/man/man1/bitcloud.1.gz"
cp README.md "$stage/usr/share/doc/bitcloud/README.md"
cat >"$stage/usr/share/doc/bitcloud/copyright" <<'TXT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: bitcloud
License: MIT OR Apache-2.0
TXT
installed_kb=$(du -sk "$stage" | cut -f1)
mkdir -p "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<TXT
Package: bitcloud
Version: $version
Architecture: $arch
Maintainer: bitcloud developers <bitcloud@localhost>
Depends: fuse3, libc6 (>= 2.34)
Section: utils
Priority: optional
Installed-Size: $installed_kb
Description: encrypted virtual hard disk backed by a pool of machines
 bitcloud mounts a volume whose blocks are hashed (BLAKE3), encrypted (age) and
 erasure-coded (Reed-Solomon); the disk under it only ever holds ciphertext.
 Run "bitcloud init", then "bitcloud mount ~/cloud" or "bitcloud service install".
TXT
mkdir -p "$out"
deb="$out/bitcloud_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
