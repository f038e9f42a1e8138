#!/usr/bin/env bash
# Serving benchmark: aggregate generated tok/s, TTFT and TPOT at 1, 4, 16 and 64 concurrent
# streams (scripts/load.py: streaming /v1/completions, 64 new tokens each with ignore_eos,
# each client sending REQUESTS requests), for `farside serve` on the default model in process
# and through 2 local expert nodes, and for llama.cpp's llama-server (continuous batching, -np
# slots = streams, built by scripts/build-llama-cpp.sh from the sources pip fetches) on the same
# file, driven by the same load script and prompts in the same run. Prints one JSON line per
# (server, streams). Loopback only.
# Usage: scripts/bench-serve.sh [REQUESTS] [STREAMS...]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-2}
shift || true
streams=("${@:-1 4 16 64}")
read -r -a streams <<< "${streams[*]}"
scripts/setup.sh >&2
swift build -c release --product farside >&2
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
peer_bin=$(scripts/build-llama-cpp.sh llama-server)
port=18431
wait_ready() {
  for _ in $(seq 1 600); do
    .venv/bin/python -c "import http.client; c = http.client.HTTPConnection('127.0.0.1', $port, timeout=1); c.request('GET', '/health'); assert c.getresponse().status == 200" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "server on $port did not become ready" >&2; return 1
}
run() {  # NAME STREAMS CMD...
  local name=$1 n=$2; shift 2
  "$@" > /dev/null 2>&1 &
  local pid=$!
  wait_ready
  .venv/bin/python scripts/load.py --port "$port" --clients "$n" --requests "$requests" --max-tokens 64 --pid "$pid" \
    | .venv/bin/python -c "import json,sys; r=json.load(sys.stdin); r['server']='$name'; print(json.dumps(r))"
  kill -TERM "$pid"; wait "$pid" || true
}
for n in "${streams[@]}"; do
  run farside "$n" .build/release/farside serve --model "$model" --port "$port" --max-seqs "$n"
  run farside-2-nodes "$n" .build/release/farside serve --model "$model" --port "$port" --max-seqs "$n" --local-nodes 2
  run llama-server "$n" env LD_LIBRARY_PATH="$peer_bin" "$peer_bin/llama-server" -m "$model" --port "$port" -np "$n" -c $((n * 512)) -t 2 --cont-batching
done
