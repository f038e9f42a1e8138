#!/usr/bin/env bash
# Default-model benchmark (issue: a real model end to end): SmolLM2-135M-Instruct Q4_1 on 2
# threads, prompt (512 tokens) and decode (64 tokens from an empty context, as llama-bench's
# tg64) tokens/s, in process and through 2 local expert nodes, beside llama.cpp's llama-bench on
# the same file. The peer is built here from the llama.cpp that PyPI's llama-cpp-python sdist
# vendors, fetched with pip (scripts/build-llama-cpp.sh; never committed, kept under .build/peer). Farside and llama.cpp alternate within each
# of ROUNDS rounds (this machine's memory bandwidth drifts by tens of percent over minutes), so
# every ratio is taken within a round; medians over rounds are printed as Markdown, with the
# peak RSS of each process as GNU time reports it.
# Usage: scripts/bench-smollm2.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
scripts/setup.sh
swift build -c release --product farside >&2
bin=.build/release/farside
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
peer_bin=$(scripts/build-llama-cpp.sh llama-bench)
peer=.build/peer
out=$(mktemp)
# gtime FILE CMD...: runs CMD with its stdout in FILE; prints CMD's peak RSS in KiB (GNU time).
gtime() { local f=$1; shift; /usr/bin/time -f '%M' -o "$out.rss" "$@" > "$f"; cat "$out.rss"; }
for i in $(seq "$rounds"); do
  for n in 0 2; do
    "$bin" bench --model "$model" --prompt-tokens 512 --decode-tokens 1 --runs 3 --local-nodes "$n" > "$out.p"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({"who":"farside","nodes":int(sys.argv[2]),"pp":r["prefill_tok_s"],"round":int(sys.argv[3])}))' "$out.p" "$n" "$i" >> "$out"
    "$bin" bench --model "$model" --prompt-tokens 1 --decode-tokens 64 --runs 3 --local-nodes "$n" > "$out.d"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({"who":"farside","nodes":int(sys.argv[2]),"tg":r["decode_tok_s"],"round":int(sys.argv[3])}))' "$out.d" "$n" "$i" >> "$out"
  done
  rss=$(gtime "$out.l" env LD_LIBRARY_PATH="$peer_bin" "$peer_bin/llama-bench" -m "$model" -t 2 -p 512 -n 64 -r 3 -o json)
  python3 -c '
import json, sys
rows = json.load(open(sys.argv[1]))
pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
print(json.dumps({"who": "llama.cpp", "pp": pp, "tg": tg, "rss_kb": int(sys.argv[2]), "round": int(sys.argv[3])}))' "$out.l" "$rss" "$i" >> "$out"
  echo "round $i done" >&2
done
# Peak RSS of what a user runs (farside bench also allocates 512 MiB to measure bandwidth): a
# ~500-token prompt and 64 new tokens; with nodes, the coordinator's RSS.
long=$(python3 -c 'print(" ".join(["The quick brown fox jumps over the lazy dog."] * 50))')
for n in 0 2; do
  rss=$(gtime /dev/null "$bin" generate --model "$model" --prompt "$long" --max-tokens 64 --ignore-eos --local-nodes "$n")
  echo "{\"who\": \"farside\", \"nodes\": $n, \"rss_kb\": $rss, \"round\": 0}" >> "$out"
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds = int(sys.argv[2])
med = statistics.median
def get(r, who, key, nodes=None):
    for x in rows:
        if x["round"] == r and x["who"] == who and key in x and (nodes is None or x.get("nodes") == nodes):
            return x[key]
peer_pp = [get(r, "llama.cpp", "pp") for r in range(1, rounds + 1)]
peer_tg = [get(r, "llama.cpp", "tg") for r in range(1, rounds + 1)]
print(f"| SmolLM2-135M-Instruct Q4_1, 2 threads, median of {rounds} rounds | prompt 512 tok/s | decode tg64 tok/s | prompt vs llama.cpp | decode vs llama.cpp | peak RSS |")
print("|---|---:|---:|---:|---:|---:|")
print(f"| llama.cpp llama-bench (llama-cpp-python 0.3.36's vendored llama.cpp) | {med(peer_pp):.1f} | {med(peer_tg):.1f} | 1.00x | 1.00x | {med([x['rss_kb'] for x in rows if x['who']=='llama.cpp'])/1024:.0f} MiB |")
for n, label in [(0, "Farside in process"), (2, "Farside, 2 local expert nodes (dense FFN slices)")]:
    pp = [get(r, "farside", "pp", n) for r in range(1, rounds + 1)]
    tg = [get(r, "farside", "tg", n) for r in range(1, rounds + 1)]
    rp = med([a / b for a, b in zip(pp, peer_pp)])
    rt = med([a / b for a, b in zip(tg, peer_tg)])
    rss = med([x["rss_kb"] for x in rows if x["who"] == "farside" and x.get("nodes") == n and "rss_kb" in x]) / 1024
    print(f"| {label} | {med(pp):.1f} | {med(tg):.1f} | {rp:.2f}x | {rt:.2f}x | {rss:.0f} MiB{' (coordinator)' if n else ''} |")
PY
rm -f "$out" "$out".*
