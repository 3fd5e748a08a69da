#!/usr/bin/env bash
# Installs what building Flotilla needs beyond the Rust toolchain: the Wasm
# targets for the sample workloads. With --cross (what the tests use), also
# rustfmt and clippy, iproute2 and nftables for the chaos tests (network
# namespaces, packet loss), curl, the aarch64 (glibc and static musl) and
# armv7 cross toolchains, qemu-user for the ARM tests and libfaketime for
# the certificate tests. Safe to run again.
set -euo pipefail

cross=0
[ "${1:-}" = "--cross" ] && cross=1

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "setup: need root to run: $*" >&2; exit 1
    fi
}

targets="wasm32-wasip2 wasm32-wasip1"
[ $cross = 1 ] && targets="$targets aarch64-unknown-linux-gnu aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf"
installed=$(rustup target list --installed 2>/dev/null || true)
missing=""
for t in $targets; do
    grep -qx "$t" <<<"$installed" || missing="$missing $t"
done
if [ -n "$missing" ]; then
    echo "setup: adding Rust targets:$missing"
    rustup target add $missing
fi
pkgs=""
if [ $cross = 1 ]; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
    command -v ip >/dev/null || pkgs="$pkgs iproute2"
    command -v nft >/dev/null || pkgs="$pkgs nftables"
    # curl: the TLS host-port test speaks HTTP/2 over TLS through it.
    command -v curl >/dev/null || pkgs="$pkgs curl"
    command -v aarch64-linux-gnu-gcc >/dev/null || pkgs="$pkgs gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
    command -v arm-linux-gnueabihf-gcc >/dev/null || pkgs="$pkgs gcc-arm-linux-gnueabihf libc6-dev-armhf-cross"
    command -v qemu-aarch64 >/dev/null || pkgs="$pkgs qemu-user"
    # libfaketime: the certificate tests run processes with a faked wall clock.
    [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || pkgs="$pkgs faketime"
fi
if [ -n "$pkgs" ]; then
    echo "setup: installing Debian packages:$pkgs"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs
fi
