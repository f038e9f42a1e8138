#!/usr/bin/env bash
# How link round-trip time bounds decode: `farside serve` on the default model (SmolLM2-135M
# Q4_1, dense FFNs cut into 2 slices) with 2 expert nodes whose links (control and data) go
# through scripts/delay-relay.py adding 0, 0.2 or 1 ms each way — this kernel has no sch_netem
# for `tc netem` — against direct links. Nodes advertise the relay's port (`--advertise`).
# Decode at 1 stream and throughput at 16 streams (scripts/load.py). ROUNDS interleaved rounds,
# medians. Plaintext links (bench-links.sh measures CurveZMQ's cost). Loopback only.
# Usage: [FARSIDE_BIN=PATH] scripts/bench-latency.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
scripts/setup.sh >&2
if [ -n "${FARSIDE_BIN:-}" ]; then bin=$FARSIDE_BIN; else swift build -c release --product farside >&2; bin=.build/release/farside; fi
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
port=18433 control=18500
out=$(mktemp)
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
for round in $(seq "$rounds"); do
  for delay in direct 0 0.2 1; do
    "$bin" serve --model "$model" --port "$port" --nodes 2 --node-listen "tcp://127.0.0.1:$control" --insecure-links \
      --split-dense 2 --max-seqs 16 > /dev/null 2>&1 &
    server=$!
    pids+=("$server")
    for i in 1 2; do
      data=$((18600 + i)) relay=$((18700 + i)) ctl=$((18800 + i))
      if [ "$delay" = direct ]; then
        coord="tcp://127.0.0.1:$control" adv=()
      else
        .venv/bin/python scripts/delay-relay.py --listen "$relay" --target "$data" --delay-ms "$delay" 2>/dev/null &
        pids+=("$!")
        .venv/bin/python scripts/delay-relay.py --listen "$ctl" --target "$control" --delay-ms "$delay" 2>/dev/null &
        pids+=("$!")
        coord="tcp://127.0.0.1:$ctl" adv=(--advertise "tcp://127.0.0.1:$relay")
      fi
      "$bin" expert --listen "tcp://127.0.0.1:$data" "${adv[@]}" --coordinator "$coord" --model "$model" --node-id "n$i" \
        --insecure-links --split-dense 2 --whole-experts --quiet > /dev/null 2>&1 &
      pids+=("$!")
    done
    wait_ready "$server"
    for n in 1 16; do
      requests=$([ "$n" = 1 ] && echo 3 || echo 1)
      .venv/bin/python scripts/load.py --port "$port" --clients "$n" --requests "$requests" --max-tokens 48 \
        | .venv/bin/python -c "import json,sys; r=json.load(sys.stdin); r['delay']='$delay'; r['round']=$round; print(json.dumps(r))" | tee -a "$out"
    done
    cleanup
  done
done
.venv/bin/python - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    if r["errors"]:
        print(f"warning: delay {r['delay']} at {r['clients']} streams had {r['errors']} errors", file=sys.stderr)
print("| links | added round trip | 1 stream tok/s | TPOT p50 ms | 16 streams tok/s |")
print("|---|---:|---:|---:|---:|")
for d in ["direct", "0", "0.2", "1"]:
    one = [r for r in rows if r["delay"] == d and r["clients"] == 1]
    many = [r for r in rows if r["delay"] == d and r["clients"] == 16]
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    label = "direct" if d == "direct" else f"relay, {d} ms each way"
    rtt = "0" if d == "direct" else f"{2 * float(d):g} ms + relay"
    print(f"| {label} | {rtt} | {med(one, 'aggregate_tok_s'):.1f} | {med(one, 'tpot_p50_ms'):.1f} | {med(many, 'aggregate_tok_s'):.1f} |")
PY
rm -f "$out"
