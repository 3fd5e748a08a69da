#!/usr/bin/env bash
# Builds flotilla for an edge device with the size-optimised `edge` profile
# and copies it to dist/TARGET/. Installs the Rust target and the Debian
# cross toolchain it needs. Safe to run again; every target shares the one
# target directory.
#
#   cross/build.sh TARGET [--node-only]
#
# TARGET is one of
#   aarch64-unknown-linux-gnu      Pi 3/4/5 on a 64-bit OS
#   aarch64-unknown-linux-musl     the same, static: any distribution
#   armv7-unknown-linux-gnueabihf  Pi 2/3 and Zero 2 on 32-bit Raspberry Pi OS
#   x86_64-unknown-linux-musl      x86 edge boxes, static
#   x86_64-unknown-linux-gnu       this machine's own kind
# --node-only leaves the master out (no raft, no master store, no mimalloc):
# the binary a device that only runs pods needs.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
[ $# -ge 1 ] || usage
target=$1
shift
features=()
name=flotilla
for arg in "$@"; do
    case $arg in
        --node-only) features=(--no-default-features --features node); name=flotilla-node ;;
        *) echo "cross/build.sh: unknown option $arg" >&2; usage ;;
    esac
done

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "cross/build.sh: need root to run: $*" >&2; exit 1
    fi
}

pkgs=""
need() { command -v "$1" >/dev/null || pkgs="$pkgs $2"; }
case $target in
    aarch64-unknown-linux-gnu)
        need aarch64-linux-gnu-gcc "gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;;
    aarch64-unknown-linux-musl)
        # Rust's musl targets bring their own C library; the C parts of the
        # dependencies (ring, mimalloc) only need a compiler for the ISA.
        need aarch64-linux-gnu-gcc "gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
        export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
        export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc ;;
    armv7-unknown-linux-gnueabihf)
        need arm-linux-gnueabihf-gcc "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross" ;;
    x86_64-unknown-linux-musl)
        need musl-gcc musl-tools
        export CC_x86_64_unknown_linux_musl=musl-gcc ;;
    x86_64-unknown-linux-gnu) ;;
    *) echo "cross/build.sh: unknown target $target" >&2; usage ;;
esac
if [ -n "$pkgs" ]; then
    echo "cross/build.sh: installing Debian packages:$pkgs"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

started=$(date +%s)
cargo build -p flotilla --profile edge --target "$target" "${features[@]}"
mkdir -p "dist/$target"
cp "target/$target/edge/flotilla" "dist/$target/$name"
size=$(stat -c %s "dist/$target/$name")
echo "dist/$target/$name: $size bytes ($(awk -v s="$size" 'BEGIN{printf "%.1f", s/1e6}') MB), built in $(( $(date +%s) - started )) s"
