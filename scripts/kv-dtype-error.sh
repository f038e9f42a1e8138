#!/usr/bin/env bash
# KV storage types (BENCHMARKS.md, "KV storage types"): bytes per token and the logit error of
# each --kv-dtype against f32, on the default model over scripts/kv-dtype-text.txt and on a
# synthetic MLA model with Kimi K2's attention widths (latent 512, rotary key 64;
# scripts/synth-mla-kv.json, written once to models/synth-mla-kv) over 256 seeded token ids.
# Usage: scripts/kv-dtype-error.sh   (after a release build; FARSIDE_BIN to use another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FARSIDE_BIN:-.build/release/farside}
if [ ! -f models/synth-mla-kv/config.json ]; then
  "$bin" synth --arch deepseek_v3 --config scripts/synth-mla-kv.json --dtype bf16 --seed 1 --out models/synth-mla-kv >&2
fi
FARSIDE_BIN=$bin python3 scripts/kv-dtype-error.py \
  models/SmolLM2-135M-Instruct.Q4_1.gguf --text scripts/kv-dtype-text.txt \
  models/synth-mla-kv --tokens 256
