#!/usr/bin/env bash
# The test command: installs what is needed, builds, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Tests run on the optimized build users run (-enable-testing keeps @testable imports working);
# the CLI is built first with the same flags: the CLI tests run it as a real process.
swift build -c release -Xswiftc -enable-testing --product farside
log=$(mktemp)
set +e
FARSIDE_BIN="$PWD/.build/release/farside" swift test -c release -Xswiftc -enable-testing --disable-swift-testing "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One plain summary line from XCTest's own count ("Executed N tests, with F failures").
summary=$(grep -E "Executed [0-9]+ tests?, with [0-9]+ failures?" "$log" | tail -1)
total=$(echo "$summary" | sed -E 's/.*Executed ([0-9]+) tests?.*/\1/')
failed=$(echo "$summary" | sed -E 's/.*with ([0-9]+) failures?.*/\1/')
rm -f "$log"
if [ -n "$summary" ]; then echo "tests: $((total - failed)) passed, $failed failed"; fi
exit "$status"
