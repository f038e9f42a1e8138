#!/usr/bin/env bash
# Makes .venv with the Python packages the server tests and benchmarks use (pinned in
# scripts/requirements-server.txt), fetched by pip. Idempotent: reinstalls only when the
# requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
req=scripts/requirements-server.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then exit 0; fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
