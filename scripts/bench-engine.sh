#!/usr/bin/env bash
# Engine benchmark (issue: inference engine core): prefill and decode tokens/s on both cores for
# a ~1 GB synthetic DeepSeek-V3-shaped MoE and a ~1 GB dense Llama (bf16), median of RUNS runs,
# with the decode roofline = measured copy bandwidth / weight bytes one decode step reads.
# Usage: scripts/bench-engine.sh [RUNS]   (results as JSON lines on stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
scripts/setup.sh
swift build -c release --product farside >&2
bin=.build/release/farside
mkdir -p models
for arch in deepseek_v3 llama; do
  dir=models/synth-$arch-1g
  [ -f "$dir/config.json" ] || "$bin" synth --arch "$arch" --preset 1g --dtype bf16 --out "$dir" >&2
  "$bin" bench --model "$dir" --prompt-tokens 128 --decode-tokens 32 --runs "$runs"
done
