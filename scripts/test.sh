#!/usr/bin/env bash
# Runs the whole test suite: unit tests, end-to-end tests with the real
# binary, and the aarch64 (glibc and musl) and armv7 nodes under
# qemu-user. Installs what it needs.
#
#   scripts/test.sh [--slow]
#
# --slow adds the two slow edge layers (tens of minutes, so not in CI):
# the Debian arm64 edge image (cross/image.sh) built and booted in
# qemu-system-aarch64, and a node of the previous release (built from this
# repository's history) beside this release's master and node.
set -euo pipefail
cd "$(dirname "$0")/.."

# The previous release's node for the mixed-version test: 0.1.0 as it was
# before this release added device classes and precompiled code.
previous=c5d398560f3b70bab350efba309aa9156ebb1e41

slow=0
for arg in "$@"; do
    case $arg in
        --slow) slow=1 ;;
        *) echo "scripts/test.sh: unknown option $arg (--slow adds the image boot and the previous release)" >&2; exit 2 ;;
    esac
done

scripts/setup.sh --cross
if [ $slow = 1 ]; then
    # The boot test's machine, its UEFI firmware, and mtools to write the card.
    pkgs=""
    command -v qemu-system-aarch64 >/dev/null || pkgs="$pkgs qemu-system-arm"
    [ -e /usr/share/qemu-efi-aarch64/QEMU_EFI.fd ] || pkgs="$pkgs qemu-efi-aarch64"
    command -v mcopy >/dev/null || pkgs="$pkgs mtools"
    if [ -n "$pkgs" ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs
    fi
fi

# One cargo run for all three: each target's crates fill the cores while
# the others' longest ones build.
echo "== building the aarch64 (glibc and static musl) and armv7 nodes (cross) =="
cargo build -p flotilla --no-default-features --features node --profile cross-test \
    --target aarch64-unknown-linux-gnu --target aarch64-unknown-linux-musl \
    --target armv7-unknown-linux-gnueabihf

echo "== running all tests =="
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast -- --include-ignored --skip edge_image_ --skip previous_release_ 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ $slow = 1 ]; then
    echo "== the previous release's node ($previous) =="
    if [ ! -x target/previous/debug/flotilla ] || [ "$(cat target/previous/commit 2>/dev/null)" != $previous ]; then
        git cat-file -e "$previous^{commit}" 2>/dev/null ||
            { echo "scripts/test.sh: commit $previous is not in this clone's history (a shallow clone?): fetch it, or run without --slow" >&2; exit 1; }
        rm -rf target/previous
        mkdir -p target/previous/src
        git archive "$previous" | tar -x -C target/previous/src
        cargo build --manifest-path target/previous/src/Cargo.toml --target-dir target/previous \
            -p flotilla --no-default-features --features node
        echo $previous > target/previous/commit
    fi
    set +e
    cargo test -p flotilla --test upgrade -- --ignored --nocapture previous_release_ 2>&1 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    echo "== the edge image: built and booted under emulation =="
    started=$(date +%s)
    cargo test -p flotilla --test image -- --ignored --nocapture edge_image_ 2>&1 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    echo "the edge image layer took $(( $(date +%s) - started )) s"
    set -e
fi
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
