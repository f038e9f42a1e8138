#!/usr/bin/env bash
# Installs what Farside needs on a fresh Debian machine of this project's kind (Swift 6 is part
# of the machine image at /opt/swift). Idempotent; safe to run on every invocation.
set -euo pipefail
# systemd: systemd-analyze for the unit tests; iproute2: `ip netns` for the multi-host test.
need_apt=(libzmq3-dev pkg-config python3 python3-pip python3-venv systemd iproute2)
command -v swift >/dev/null 2>&1 || { echo "error: swift is not on PATH (expected the Swift 6 toolchain at /opt/swift)" >&2; exit 1; }
if [ ${#need_apt[@]} -gt 0 ]; then
  if ! dpkg -s "${need_apt[@]}" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}"
  fi
fi
# The default model (SmolLM2-135M-Instruct Q4_1 GGUF) into models/.
"$(dirname "$0")/fetch-default-model.sh"
# The Python side of the tests (the real `openai` client against `farside serve`) in .venv.
"$(dirname "$0")/setup-venv.sh"
