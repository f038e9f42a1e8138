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
# XCTest's own count ("Executed N tests, with F failures").
summary=$(grep -E "Executed [0-9]+ tests?, with [0-9]+ failures?" "$log" | tail -1 || true)
total=$(echo "$summary" | sed -E 's/.*Executed ([0-9]+) tests?.*/\1/')
failed=$(echo "$summary" | sed -E 's/.*with ([0-9]+) failures?.*/\1/')
if [ -z "$summary" ]; then total=0; failed=0; [ "$status" -eq 0 ] && status=1; fi
# The HTTP service through the real `openai` client (Tests/Server, pytest in .venv).
set +e
FARSIDE_BIN="$PWD/.build/release/farside" .venv/bin/python -m pytest -q -p no:cacheprovider Tests/Server 2>&1 | tee "$log"
py_status=${PIPESTATUS[0]}
set -e
# pytest's last line: "N failed, M passed, K errors in T s".
py_line=$(grep -E "^=*.* in [0-9.]+s" "$log" | tail -1 || true)
py_passed=$(echo "$py_line" | grep -Eo "[0-9]+ passed" | cut -d' ' -f1 || true)
py_failed=$(echo "$py_line" | { grep -Eo "[0-9]+ (failed|errors?)" || true; } | awk '{s += $1} END {print s + 0}')
rm -f "$log"
if [ "$py_status" -ne 0 ]; then status=$py_status; fi
# A short coverage-guided fuzz run of each parser and decoder (scripts/fuzz.sh, libFuzzer with
# AddressSanitizer): one pass or failure per target. FARSIDE_FUZZ_SECONDS=0 skips it.
fuzz_seconds=${FARSIDE_FUZZ_SECONDS:-20}
fuzz_passed=0 fuzz_failed=0
if [ "$fuzz_seconds" -gt 0 ]; then
  fuzz_results=$(mktemp)
  set +e
  FUZZ_RESULTS="$fuzz_results" scripts/fuzz.sh "$fuzz_seconds"
  fuzz_status=$?
  set -e
  fuzz_passed=$(grep -c " ok$" "$fuzz_results" || true)
  fuzz_failed=$(grep -c " failed$" "$fuzz_results" || true)
  rm -f "$fuzz_results"
  # A build failure runs no target: count it as one failure.
  if [ "$fuzz_status" -ne 0 ]; then status=$fuzz_status; [ "$fuzz_failed" -eq 0 ] && fuzz_failed=1; fi
fi
echo "tests: $((total - failed + ${py_passed:-0} + fuzz_passed)) passed, $((failed + py_failed + fuzz_failed)) failed"
exit "$status"
