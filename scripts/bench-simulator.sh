#!/usr/bin/env bash
# Simulator speed (issue 17): one simulated hour of Poisson arrivals at 50 requests/s on the
# 64-node Kimi K2 cluster of docs/simulator/kimi-k2-64-nodes.yaml, memory placement only (one
# run), ROUNDS rounds; prints each round's wall time and events/s (`farside simulate --timing`).
# Usage: [FARSIDE_BIN=PATH] scripts/bench-simulator.sh [ROUNDS] [STRATEGIES]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
strategies=${2:-memory}
if [ -n "${FARSIDE_BIN:-}" ]; then bin=$FARSIDE_BIN; else swift build -c release --product farside >&2; bin=.build/release/farside; fi
for r in $(seq 1 "$rounds"); do
  start=$(date +%s.%N)
  "$bin" simulate --cluster docs/simulator/kimi-k2-64-nodes.yaml --model kimi-k2 --rate 50 --duration 3600 \
    --strategies "$strategies" --seed "$r" --timing > /dev/null 2> >(sed "s/^/round $r: /" >&2)
  end=$(date +%s.%N)
  echo "round $r: $(echo "$end - $start" | bc) s wall for the process"
done
