#!/usr/bin/env bash
# Runs the whole test suite: unit tests, end-to-end tests with the real
# binary, and the aarch64 and armv7 nodes under qemu-user. Installs what it
# needs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --cross

for target in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    echo "== building the $target node (cross) =="
    cargo build -p flotilla --no-default-features --features node --target "$target"
done

echo "== running all tests =="
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast -- --include-ignored 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
