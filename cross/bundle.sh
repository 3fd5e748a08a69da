#!/usr/bin/env bash
# Packs flotilla for an edge target: dist/flotilla-VERSION-TARGET.tar.gz
# (the binary, the systemd units, install.sh and uninstall.sh) and
# dist/flotilla_VERSION_ARCH.deb (the binary in /usr/bin, the same units).
#
#   cross/bundle.sh TARGET [--node-only] [--binary PATH] [--out DIR] [--fast]
#
# The binary is dist/TARGET/flotilla (or flotilla-node with --node-only),
# built by cross/build.sh when missing; --binary packs another one. The
# packages go to --out [dist]. --fast compresses little (for tests of
# large debug builds).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
[ $# -ge 1 ] || usage
target=$1
shift
node_only=()
binary=""
out=dist
gzip_level=9
deb_compression=(-Zxz)
while [ $# -gt 0 ]; do
    case $1 in
        --node-only) node_only=(--node-only); shift ;;
        --binary) [ $# -ge 2 ] || usage; binary=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --fast) gzip_level=1; deb_compression=(-Zgzip -z1); shift ;;
        *) echo "cross/bundle.sh: unknown option $1" >&2; usage ;;
    esac
done
case $target in
    x86_64-*) arch=amd64 ;;
    aarch64-*) arch=arm64 ;;
    armv7-*) arch=armhf ;;
    *) echo "cross/bundle.sh: unknown target $target" >&2; usage ;;
esac
if [ -z "$binary" ]; then
    name=flotilla
    [ ${#node_only[@]} -gt 0 ] && name=flotilla-node
    binary=dist/$target/$name
    [ -x "$binary" ] || cross/build.sh "$target" "${node_only[@]}"
fi
[ -x "$binary" ] || { echo "cross/bundle.sh: $binary is not an executable" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "cross/bundle.sh: needs dpkg-deb (Debian's dpkg)" >&2; exit 1; }

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "cross/bundle.sh: no version in Cargo.toml" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The tarball: what install.sh needs beside it.
dir=flotilla-$version-$target
mkdir -p "$work/$dir/bin" "$work/$dir/systemd"
install -m 0755 "$binary" "$work/$dir/bin/flotilla"
install -m 0644 cross/systemd/*.service "$work/$dir/systemd/"
install -m 0755 cross/install.sh cross/uninstall.sh "$work/$dir/"
tar -C "$work" --owner=0 --group=0 -cf - "$dir" | gzip "-$gzip_level" > "$out/$dir.tar.gz"

# The .deb: the binary in /usr/bin and the units, enabled by no one until
# the operator writes /etc/flotilla/ROLE.env and enables one.
deb=$work/deb
mkdir -p "$deb/DEBIAN" "$deb/usr/bin" "$deb/lib/systemd/system" "$deb/usr/share/doc/flotilla"
install -m 0755 "$binary" "$deb/usr/bin/flotilla"
for unit in cross/systemd/*.service; do
    sed 's#@BINDIR@#/usr/bin#g' "$unit" > "$deb/lib/systemd/system/$(basename "$unit")"
    chmod 0644 "$deb/lib/systemd/system/$(basename "$unit")"
done
cat > "$deb/usr/share/doc/flotilla/README.Debian" <<'DOC'
To run a node: write /etc/flotilla/node.env (mode 0600) with
  FLOTILLA_NODE_ARGS=--master 10.0.0.1:7443 --name pi-1
  FLOTILLA_TOKEN=<a token from `flotilla token create`>
then `systemctl enable --now flotilla-node`. For a master, write
/etc/flotilla/master.env with FLOTILLA_MASTER_ARGS=--listen 0.0.0.0:7443
and enable flotilla-master. State is kept in /var/lib/flotilla.
DOC
size=$(du -sk "$deb/usr" "$deb/lib" | awk '{s+=$1} END {print s}')
cat > "$deb/DEBIAN/control" <<CONTROL
Package: flotilla
Version: $version
Architecture: $arch
Maintainer: Flotilla <flotilla@localhost>
Installed-Size: $size
Section: admin
Priority: optional
Description: orchestrator for WebAssembly workloads on edge devices
 One binary: a master that keeps the cluster's state, a node agent that
 runs WebAssembly pods in wasmtime, and the kubectl-like client.
CONTROL
cat > "$deb/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
POSTINST
cat > "$deb/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl disable --now flotilla-node.service flotilla-master.service 2>/dev/null || true
fi
PRERM
chmod 0755 "$deb/DEBIAN/postinst" "$deb/DEBIAN/prerm"
dpkg-deb "${deb_compression[@]}" --root-owner-group --build "$deb" "$out/flotilla_${version}_$arch.deb" >/dev/null
echo "$out/$dir.tar.gz"
echo "$out/flotilla_${version}_$arch.deb"
