#!/usr/bin/env bash
# The test command: installs what is needed, builds, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Release build of the CLI first: the CLI tests run it as a real process.
swift build -c release --product farside
FARSIDE_BIN="$PWD/.build/release/farside" swift test "$@"
