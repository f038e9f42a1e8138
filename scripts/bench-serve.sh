#!/usr/bin/env bash
# Serving benchmark (issue: `farside serve`): aggregate generated tok/s, TTFT and TPOT p50/p99 at
# 1, 4, 16 and 64 concurrent streams (scripts/load.py: streaming /v1/completions with
# ignore_eos, each client sending REQUESTS requests back to back), in the same run for
#   - the default model (SmolLM2-135M Q4_1): `farside serve` in process, through 2 local expert
#     nodes (its dense FFNs cut into slices), and llama.cpp's llama-server (continuous batching,
#     -np slots = streams, 2 threads; built by scripts/build-llama-cpp.sh from the sources pip
#     fetches) on the same GGUF file;
#   - the ~1 GB synthetic DeepSeek-V3-shaped MoE (bf16, no tokenizer: prompts as token ids):
#     `farside serve` in process and through 2 local expert nodes.
# Also Farside's own prompt-processing rate on each model (`farside bench`, 128-token prompt),
# the ceiling of a compute-bound batched decode on this machine.
# Every (server, streams) pair is measured ROUNDS times, interleaved, and the median of each
# figure is reported: the machine drifts by +-30% over minutes. Prints the JSON line of every
# run, then a Markdown table of medians. Loopback only.
# Usage: scripts/bench-serve.sh [ROUNDS] [STREAMS...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
streams=("$@")
[ ${#streams[@]} -gt 0 ] || streams=(1 4 16 64)
scripts/setup.sh >&2
swift build -c release --product farside >&2
bin=.build/release/farside
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
moe=models/synth-deepseek_v3-1g
[ -f "$moe/config.json" ] || "$bin" synth --arch deepseek_v3 --preset 1g --dtype bf16 --out "$moe" >&2
moe_vocab=$(.venv/bin/python -c "import json; print(json.load(open('$moe/config.json'))['vocab_size'])")
peer_bin=$(scripts/build-llama-cpp.sh llama-server)
port=18431
out=$(mktemp)
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
run() {  # NAME STREAMS REQUESTS MAX_TOKENS LOAD_ARGS -- CMD...
  local name=$1 n=$2 requests=$3 max_tokens=$4 load_args=$5; shift 6
  "$@" > /dev/null 2>&1 &
  local pid=$!
  wait_ready "$pid"
  # shellcheck disable=SC2086
  .venv/bin/python scripts/load.py --port "$port" --clients "$n" --requests "$requests" --max-tokens "$max_tokens" --pid "$pid" $load_args \
    | .venv/bin/python -c "import json,sys; r=json.load(sys.stdin); r['server']='$name'; print(json.dumps(r))" | tee -a "$out"
  kill -TERM "$pid"; wait "$pid" || true
}
for round in $(seq "$rounds"); do
  for m in "$model" "$moe"; do
    "$bin" bench --model "$m" --prompt-tokens 128 --decode-tokens 1 --runs 3 \
      | .venv/bin/python -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'server': 'farside-bench', 'model': '$m', 'prefill_tok_s': r['prefill_tok_s']}))" | tee -a "$out"
  done
  for n in "${streams[@]}"; do
    run smollm2/farside "$n" 2 64 "" -- "$bin" serve --model "$model" --port "$port" --max-seqs "$n"
    run smollm2/farside-2-nodes "$n" 2 64 "" -- "$bin" serve --model "$model" --port "$port" --max-seqs "$n" --local-nodes 2
    run smollm2/llama-server "$n" 2 64 "" -- env LD_LIBRARY_PATH="$peer_bin" "$peer_bin/llama-server" -m "$model" \
      --port "$port" -np "$n" -c $((n * 512)) -t 2 --cont-batching
    run moe/farside "$n" 1 32 "--token-prompts $moe_vocab" -- "$bin" serve --model "$moe" --port "$port" --max-seqs "$n"
    run moe/farside-2-nodes "$n" 1 32 "--token-prompts $moe_vocab" -- "$bin" serve --model "$moe" --port "$port" --max-seqs "$n" --local-nodes 2
  done
done
.venv/bin/python - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else None
for r in rows:
    if r["server"] == "farside-bench":
        continue
    if r["errors"]:
        print(f"warning: {r['server']} at {r['clients']} streams had {r['errors']} errors: {r['error_samples']}", file=sys.stderr)
prefill = {}
for r in rows:
    if r["server"] == "farside-bench":
        prefill.setdefault(r["model"], []).append(r["prefill_tok_s"])
for m, xs in prefill.items():
    print(f"Farside prompt processing, {m}: median {med(xs):.1f} tok/s of {len(xs)} rounds {xs}")
print()
print("| server | streams | aggregate tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | peak RSS MiB | runs | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
keys = sorted({(r["server"], r["clients"]) for r in rows if r["server"] != "farside-bench"}, key=lambda k: (k[0].split("/")[0], k[1], k[0]))
for name, n in keys:
    rs = [r for r in rows if r["server"] == name and r["clients"] == n]
    f = lambda k: med([r[k] for r in rs if r.get(k) is not None])
    fmt = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"
    print(f"| {name} | {n} | {fmt(f('aggregate_tok_s'))} | {fmt(f('ttft_p50_ms'))} | {fmt(f('ttft_p99_ms'))} | "
          f"{fmt(f('tpot_p50_ms'), 2)} | {fmt(f('tpot_p99_ms'), 2)} | {fmt(f('server_peak_rss_mib'))} | {len(rs)} | {sum(r['errors'] for r in rs)} |")
PY
rm -f "$out"
