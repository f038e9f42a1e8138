#!/usr/bin/env bash
# The cost of encrypted node links: `farside serve --local-nodes 2` with CurveZMQ (the default)
# against the same with --insecure-links (plaintext), on the default model (SmolLM2-135M Q4_1,
# dense FFNs cut into slices on the nodes) and the ~1 GB synthetic DeepSeek-V3-shaped MoE, at 1
# stream (decode) and 16 streams (scripts/load.py, streaming /v1/completions, ignore_eos).
# ROUNDS interleaved rounds, medians reported with the per-round ratios. Loopback only.
# Usage: [FARSIDE_BIN=PATH] scripts/bench-links.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
scripts/setup.sh >&2
# FARSIDE_BIN: a farside binary already built (default: build .build/release/farside).
if [ -n "${FARSIDE_BIN:-}" ]; then bin=$FARSIDE_BIN; else swift build -c release --product farside >&2; bin=.build/release/farside; fi
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
moe=models/synth-deepseek_v3-1g
[ -f "$moe/config.json" ] || "$bin" synth --arch deepseek_v3 --preset 1g --dtype bf16 --out "$moe" >&2
moe_vocab=$(.venv/bin/python -c "import json; print(json.load(open('$moe/config.json'))['vocab_size'])")
port=18432
out=$(mktemp)
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
run() {  # NAME ROUND STREAMS REQUESTS MAX_TOKENS LOAD_ARGS -- CMD...
  local name=$1 round=$2 n=$3 requests=$4 max_tokens=$5 load_args=$6; shift 7
  "$@" > /dev/null 2>&1 &
  local pid=$!
  wait_ready "$pid"
  # shellcheck disable=SC2086
  .venv/bin/python scripts/load.py --port "$port" --clients "$n" --requests "$requests" --max-tokens "$max_tokens" $load_args \
    | .venv/bin/python -c "import json,sys; r=json.load(sys.stdin); r['server']='$name'; r['round']=$round; print(json.dumps(r))" | tee -a "$out"
  kill -TERM "$pid"; wait "$pid" || true
}
for round in $(seq "$rounds"); do
  for n in 1 16; do
    for links in curve plain; do
      extra=()
      [ "$links" = plain ] && extra=(--insecure-links)
      run "smollm2/$links" "$round" "$n" 2 64 "" -- "$bin" serve --model "$model" --port "$port" --max-seqs "$n" --local-nodes 2 "${extra[@]}"
      run "moe/$links" "$round" "$n" 1 32 "--token-prompts $moe_vocab" -- "$bin" serve --model "$moe" --port "$port" --max-seqs "$n" --local-nodes 2 "${extra[@]}"
    done
  done
done
.venv/bin/python - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bad = [r for r in rows if r["errors"]]
for r in bad:
    print(f"warning: {r['server']} at {r['clients']} streams had {r['errors']} errors", file=sys.stderr)
print("| model | streams | CurveZMQ tok/s | plaintext tok/s | ratio (median) | ratio per round |")
print("|---|---:|---:|---:|---:|---|")
for model in ["smollm2", "moe"]:
    for n in sorted({r["clients"] for r in rows}):
        get = lambda links: {r["round"]: r["aggregate_tok_s"] for r in rows if r["server"] == f"{model}/{links}" and r["clients"] == n}
        c, p = get("curve"), get("plain")
        ratios = [c[k] / p[k] for k in sorted(c) if k in p and p[k]]
        print(f"| {model} | {n} | {statistics.median(c.values()):.1f} | {statistics.median(p.values()):.1f} | "
              f"{statistics.median(ratios):.2f} | {', '.join(f'{x:.2f}' for x in ratios)} |")
PY
rm -f "$out"
