#!/usr/bin/env bash
# Cluster benchmark (issue: expert parallelism across processes) on the ~1 GB synthetic
# DeepSeek-V3-shaped MoE: decode tok/s in-process vs through 2 local expert nodes, measured
# alternately in ROUNDS rounds (this machine's bandwidth drifts by ±40% over minutes, so the
# ratio is taken within each round and the median reported), the per-layer loopback round
# trip for 1, 8 and 64 tokens, bytes on the wire per decoded token, and prefill through the
# nodes with and without the two micro-batch overlap (ping-pong).
# Usage: scripts/bench-cluster.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
scripts/setup.sh
swift build -c release --product farside >&2
bin=.build/release/farside
dir=models/synth-deepseek_v3-1g
[ -f "$dir/config.json" ] || "$bin" synth --arch deepseek_v3 --preset 1g --dtype bf16 --out "$dir" >&2
out=$(mktemp)
for i in $(seq "$rounds"); do
  for n in 0 2; do
    "$bin" bench --model "$dir" --prompt-tokens 128 --decode-tokens 32 --runs 3 --local-nodes "$n" | tee -a "$out"
  done
  # Prompt as two micro-batches (ping-pong), against the default single batch.
  "$bin" bench --model "$dir" --prompt-tokens 128 --decode-tokens 1 --runs 3 --local-nodes 2 --micro-batches 2 | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
local = [r for r in rows if "local_nodes" not in r]
remote = [r for r in rows if "local_nodes" in r and r["micro_batches"] == 1]
split = [r for r in rows if "local_nodes" in r and r["micro_batches"] == 2]
med = lambda xs: statistics.median(xs)
ratios = [b["decode_tok_s"] / a["decode_tok_s"] for a, b in zip(local, remote)]
summary = {
    "rounds": len(ratios),
    "in_process_decode_tok_s": med([r["decode_tok_s"] for r in local]),
    "local_nodes_2_decode_tok_s": med([r["decode_tok_s"] for r in remote]),
    "ratio_per_round": [round(x, 3) for x in ratios],
    "ratio_median": round(med(ratios), 3),
    "in_process_prefill_tok_s": med([r["prefill_tok_s"] for r in local]),
    "local_nodes_2_prefill_tok_s": med([r["prefill_tok_s"] for r in remote]),
    "local_nodes_2_prefill_two_micro_batches_tok_s": med([r["prefill_tok_s"] for r in split]),
    "prefill_ping_pong_gain_per_round": [round(b["prefill_tok_s"] / a["prefill_tok_s"], 3) for a, b in zip(remote, split)],
    "in_process_fraction_of_read_roofline": med([r["decode_fraction_of_roofline"] for r in local]),
    "decode_wire_bytes_per_token": med([r["decode_wire_bytes_per_token"] for r in remote]),
}
for s in (1, 8, 64):
    for p in ("p50", "p99"):
        summary[f"layer_rtt_{s}_{p}_us"] = med([r[f"layer_rtt_{s}_{p}_us"] for r in remote])
print(json.dumps(summary))
PY
rm -f "$out"
