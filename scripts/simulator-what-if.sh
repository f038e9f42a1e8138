#!/usr/bin/env bash
# The simulator's what-if table (docs/simulator.md): Kimi K2 with INT4 experts behind an 8×H100
# coordinator, experts on (a) two 8×H100 nodes, (b) sixteen one-L40S nodes, (c) eight two-socket
# CPU servers, or (d) one 8×H100 node in region A plus eight CPU servers in region B; each in
# region A or B (the site figures below are round illustrative inputs, not a grid's measured
# ones). Writes the cluster files to docs/simulator/what-if/ and the table to stdout.
# Usage: [FARSIDE_BIN=PATH] scripts/simulator-what-if.sh [RATE] [DURATION] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-4}
duration=${2:-600}
seed=${3:-1}
strategies="memory,balanced:8,power:energy,power:cost,power:carbon"
if [ -n "${FARSIDE_BIN:-}" ]; then bin=$FARSIDE_BIN; else swift build -c release --product farside >&2; bin=.build/release/farside; fi
dir=docs/simulator/what-if
mkdir -p "$dir"
header() {  # REGION
  cat <<YAML
# Written by scripts/simulator-what-if.sh.
sites:
  A: {price_per_kwh: 0.07, carbon_per_kwh: 30, pue: 1.1}
  B: {price_per_kwh: 0.20, carbon_per_kwh: 450, pue: 1.4}
coordinator: {class: h100, gpus: 8, site: $1, kv_budget: 200GB, overhead_us: 300}
scheduler: {max_batch_tokens: 2048, max_seqs: 256, max_waiting: 1024}
nodes:
YAML
}
node() {  # ID COUNT CLASS GPUS MEMORY SITE LATENCY_US BANDWIDTH_GBS
  echo "  - {id: $1, count: $2, class: $3, gpus: $4, memory: $5, site: $6, link: {latency_us: $7, bandwidth_gbs: $8}, overhead_us: 30}"
}
for region in A B; do
  { header $region; node h100x8 2 h100 8 600GB $region 5 50; } > "$dir/h100x8-$region.yaml"
  { header $region; node l40s 16 l40s 1 44GB $region 10 25; } > "$dir/l40s-$region.yaml"
  { header $region; node cpu 8 cpu-2s 1 96GB $region 20 12.5; } > "$dir/cpu-$region.yaml"
done
{ header A; node h100x8 1 h100 8 600GB A 5 50; node cpu 8 cpu-2s 1 96GB B 40 12.5; } > "$dir/mixed-AB.yaml"
echo "Kimi K2, INT4 experts; Poisson $rate requests/s for $duration s (prompt exp:512, output exp:128), Zipf 0.3 routing, seed $seed."
echo
echo "| cluster | strategy | completed | out tok/s | \$/Mtok | gCO2/Mtok | J/tok | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | expert nodes used |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for c in h100x8-A h100x8-B l40s-A l40s-B cpu-A cpu-B mixed-AB; do
  "$bin" simulate --cluster "$dir/$c.yaml" --model kimi-k2 --rate "$rate" --duration "$duration" --zipf 0.3 \
    --strategies "$strategies" --seed "$seed" --csv \
    | awk -F, -v c="$c" 'NR > 1 { printf "| %s | %s | %s/%s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c, $1, $2, $2 + $3, $4, $8, $9, $6, $11, $12, $13, $14 }'
done
