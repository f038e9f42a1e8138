#!/usr/bin/env bash
# The main job: sets up, builds, and generates from the default model.
# Until the real default model lands, that is a seeded synthetic DeepSeek-V3-shaped MoE,
# served by a local cluster: this process as coordinator and two expert-node processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product farside
bin=.build/release/farside
model=models/synth-deepseek-v3-tiny
if [ ! -f "$model/config.json" ]; then
  "$bin" synth --arch deepseek_v3 --preset tiny --out "$model"
fi
# Routed experts run on two expert-node processes on loopback.
"$bin" generate --model "$model" --tokens 1,2,3,4 --max-tokens 24 --temperature 0.8 --top-p 0.95 --seed 7 --local-nodes 2 "$@"
