#!/usr/bin/env bash
# Cluster benchmark (issue: expert parallelism across processes) on the ~1 GB synthetic
# DeepSeek-V3-shaped MoE: decode tok/s in-process vs through 2 local expert nodes, the per-layer
# loopback round trip for 1, 8 and 64 tokens, bytes on the wire per decoded token, and prefill
# through the nodes with and without the two micro-batch overlap (ping-pong).
# This machine's memory bandwidth drifts by ±40% over minutes and differs between processes, so
# each round is one process that measures in process and through the nodes run by run, ABBA
# (`bench --alternate-in-process`): the ratio is taken per pair of runs seconds apart, and the
# median over every pair of every round is the figure reported.
# Usage: scripts/bench-cluster.sh [ROUNDS] [RUNS PER ROUND]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
runs=${2:-6}
scripts/setup.sh
swift build -c release --product farside >&2
bin=.build/release/farside
dir=models/synth-deepseek_v3-1g
[ -f "$dir/config.json" ] || "$bin" synth --arch deepseek_v3 --preset 1g --dtype bf16 --out "$dir" >&2
out=$(mktemp)
for i in $(seq "$rounds"); do
  "$bin" bench --model "$dir" --prompt-tokens 128 --decode-tokens 32 --runs "$runs" --local-nodes 2 --alternate-in-process | tee -a "$out"
  # Prompt as two micro-batches (ping-pong), against the default single batch.
  "$bin" bench --model "$dir" --prompt-tokens 128 --decode-tokens 1 --runs 3 --local-nodes 2 --micro-batches 2 | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
remote = [r for r in rows if r["micro_batches"] == 1]
split = [r for r in rows if r["micro_batches"] == 2]
med = lambda xs: statistics.median(xs)
pairs = [x for r in remote for x in r["decode_ratio_runs"]]
summary = {
    "rounds": len(remote),
    "pairs": len(pairs),
    "in_process_decode_tok_s": med([x for r in remote for x in r["in_process_decode_runs"]]),
    "local_nodes_2_decode_tok_s": med([x for r in remote for x in r["decode_runs"]]),
    "ratio_median_per_round": [r["decode_ratio_median"] for r in remote],
    "ratio_median": round(med(pairs), 3),
    "ratio_quartiles": [round(q, 3) for q in statistics.quantiles(pairs, n=4)],
    "in_process_prefill_tok_s": med([x for r in remote for x in r["in_process_prefill_runs"]]),
    "local_nodes_2_prefill_tok_s": med([x for r in remote for x in r["prefill_runs"]]),
    "local_nodes_2_prefill_two_micro_batches_tok_s": med([r["prefill_tok_s"] for r in split]),
    "prefill_ping_pong_gain_per_round": [round(b["prefill_tok_s"] / a["prefill_tok_s"], 3) for a, b in zip(remote, split)],
    "read_bandwidth_gb_s": med([r["read_bandwidth_gb_s"] for r in remote]),
    "decode_wire_bytes_per_token": med([r["decode_wire_bytes_per_token"] for r in remote]),
}
for k in ("dispatch", "wait", "last_round_trip", "last_compute", "last_transport", "combine"):
    summary[f"decode_step_{k}_p50_us"] = med([r[f"decode_step_{k}_p50_us"] for r in remote])
for s in (1, 8, 64):
    for p in ("p50", "p99"):
        summary[f"layer_rtt_{s}_{p}_us"] = med([r[f"layer_rtt_{s}_{p}_us"] for r in remote])
print(json.dumps(summary))
PY
rm -f "$out"
