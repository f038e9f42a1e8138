#!/usr/bin/env bash
# Long-context benchmark (issue 19): prompt tok/s at 4k and 16k tokens and decode tok/s at depth
# 0, 4k and 16k on the default model (SmolLM2-135M-Instruct Q4_1, 2 threads, f16 KV rows on both
# sides: llama.cpp's default cache type), beside llama.cpp's llama-bench on the same file (the
# peer built by scripts/build-llama-cpp.sh; best of -fa 0 and -fa 1 per column); then decode at
# depth on a synthetic Kimi-K2-shaped MLA model (scripts/synth-mla-long.json; Farside only: it
# is a Hugging Face checkpoint, which llama-bench cannot load). Each of ROUNDS rounds runs every
# measurement once, Farside then llama.cpp, so ratios are taken within a round (this machine's
# memory bandwidth drifts by tens of percent over minutes); the medians over rounds are printed
# as Markdown with the decode roofline at depth: (weight bytes + KV bytes read per token, at the
# mean depth of the decoded tokens) over the read bandwidth `farside bench` measures.
#
# Usage: scripts/bench-long-context.sh [ROUNDS]
#   FARSIDE=path     the binary to measure (default: .build/release/farside, built here)
#   BEFORE=path      also measure this binary (e.g. main's) as "before"
#   PROMPTS="4096 16384"  DEPTHS="4096 16384"  MLA_DEPTHS="32768"   (empty MLA_DEPTHS: skip)
# Prompts and depths beyond the model's context (8192 for SmolLM2) run with `--context`, as
# llama-bench runs them (RoPE past the trained length; a speed figure, not a quality one).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
prompts=${PROMPTS-4096 16384}
depths=${DEPTHS-4096 16384}
mla_depths=${MLA_DEPTHS-32768}
if [ -z "${FARSIDE:-}" ]; then
  swift build -c release --product farside >&2
  FARSIDE=.build/release/farside
fi
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$model" ] || scripts/fetch-default-model.sh >&2
peer_bin=$(scripts/build-llama-cpp.sh llama-bench)
mla=.build/synth-mla-long
[ -f "$mla/config.json" ] || "$FARSIDE" synth --arch kimi_k2 --config scripts/synth-mla-long.json --dtype bf16 --seed 1 --out "$mla" --force >&2
out=$(mktemp)
echo "machine load before: $(uptime)" >&2
# fs WHO ROUND KIND N ARGS...: one `farside bench` run, appended as a JSON row.
fs() {
  local who=$1 bin=$2 round=$3; shift 3
  "$bin" bench "$@" --runs 1 > "$out.j"
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
depth = r["prompt_tokens"] + r["decode_tokens"] / 2
kv = r["kv_bytes_per_token"] * depth
roof = r["read_bandwidth_gb_s"] * 1e9 / (r["decode_weight_bytes_per_token"] + kv)
print(json.dumps({"who": sys.argv[2], "round": int(sys.argv[3]), "model": r["model"], "p": r["prompt_tokens"],
                  "pp": r["prefill_tok_s"], "tg": r["decode_tok_s"], "roof": roof, "bw": r["read_bandwidth_gb_s"],
                  "wbytes": r["decode_weight_bytes_per_token"], "kvbytes": kv}))' "$out.j" "$who" "$round" >> "$out"
}
# ctx N: the --context flag a run of N positions needs on the default model.
ctx() { [ "$1" -gt 8192 ] && echo "--context $(( $1 + 64 ))" || true; }
for i in $(seq "$rounds"); do
  for who in new ${BEFORE:+before}; do
    bin=$FARSIDE; [ "$who" = before ] && bin=$BEFORE
    for p in $prompts; do
      # shellcheck disable=SC2046
      fs "$who" "$bin" "$i" --model "$model" --kv-dtype f16 --prompt-tokens "$p" --decode-tokens 16 $(ctx "$p")
    done
    for d in $depths; do
      case " $prompts " in *" $d "*) continue ;; esac  # measured with the prompt of that length
      # shellcheck disable=SC2046
      fs "$who" "$bin" "$i" --model "$model" --kv-dtype f16 --prompt-tokens "$d" --decode-tokens 16 $(ctx "$d")
    done
    fs "$who" "$bin" "$i" --model "$model" --kv-dtype f16 --prompt-tokens 1 --decode-tokens 64
    [ "$who" = new ] || continue  # "before" on the default model only
    for d in $mla_depths; do fs "$who" "$bin" "$i" --model "$mla" --kv-dtype f16 --prompt-tokens "$d" --decode-tokens 8; done
  done
  pl=$(echo "$prompts" | tr ' ' ','); dl=$(echo "0 $depths" | tr ' ' ',')
  LD_LIBRARY_PATH="$peer_bin" "$peer_bin/llama-bench" -m "$model" -t 2 -p "$pl" -n 0 -fa 0,1 -r 1 -o json > "$out.lp"
  LD_LIBRARY_PATH="$peer_bin" "$peer_bin/llama-bench" -m "$model" -t 2 -p 0 -n 16 -d "$dl" -fa 0,1 -r 1 -o json > "$out.ld"
  python3 -c '
import json, sys
rows = json.load(open(sys.argv[1])) + json.load(open(sys.argv[2]))
best = {}
for r in rows:
    key = ("pp", r["n_prompt"]) if r["n_prompt"] > 0 else ("tg", r["n_depth"])
    best[key] = max(best.get(key, 0), r["avg_ts"])
for (kind, n), v in best.items():
    print(json.dumps({"who": "llama.cpp", "round": int(sys.argv[3]), "kind": kind, "n": n, "v": v}))' "$out.lp" "$out.ld" "$i" >> "$out"
  echo "round $i done; load: $(uptime)" >&2
done
echo "machine load after: $(uptime)" >&2
python3 - "$out" "$rounds" "$prompts" "$depths" "$mla_depths" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds = range(1, int(sys.argv[2]) + 1)
prompts = [int(x) for x in sys.argv[3].split()]
depths = [int(x) for x in sys.argv[4].split()]
mla_depths = [int(x) for x in sys.argv[5].split()]
med = statistics.median
def fs(who, r, p, model="SmolLM2"):
    for x in rows:
        if x["who"] == who and x["round"] == r and x.get("p") == p and (model in x["model"]) == True:
            return x
def peer(r, kind, n):
    for x in rows:
        if x["who"] == "llama.cpp" and x["round"] == r and x["kind"] == kind and x["n"] == n:
            return x["v"]
whos = [w for w in ["before", "new"] if any(x["who"] == w for x in rows)]
cols = [("pp", p, f"prompt {p} tok/s") for p in prompts] + [("tg", d, f"decode, depth {d}") for d in [0] + depths]
def value(who, r, kind, n):
    if who == "llama.cpp": return peer(r, kind, n)
    x = fs(who, r, 1 if (kind == "tg" and n == 0) else n)
    return x and x[kind]
print(f"| median of {len(rounds)} rounds | " + " | ".join(c[2] for c in cols) + " |")
print("|---|" + "---:|" * len(cols))
print("| llama.cpp llama-bench, best of -fa 0 / -fa 1 | " + " | ".join(f"{med([value('llama.cpp', r, k, n) for r in rounds]):.1f}" for k, n, _ in cols) + " |")
for who in whos:
    cells = []
    for k, n, _ in cols:
        v = [value(who, r, k, n) for r in rounds]
        ratio = med([a / value("llama.cpp", r, k, n) for a, r in zip(v, rounds)])
        cells.append(f"{med(v):.1f} ({ratio:.2f}x)")
    print(f"| Farside {who} | " + " | ".join(cells) + " |")
print()
for r in rounds:
    print(f"- round {r}: " + "; ".join(f"{lbl}: " + ", ".join(f"{w} {value(w, r, k, n):.1f}" for w in whos + ['llama.cpp']) for k, n, lbl in cols))
print()
print("| decode roofline at depth (Farside new) | weights MB | KV MB per token | read GB/s | roofline tok/s | measured tok/s | fraction |")
print("|---|---:|---:|---:|---:|---:|---:|")
for d in [0] + depths:
    xs = [fs("new", r, 1 if d == 0 else d) for r in rounds]
    print(f"| SmolLM2 f16 KV, depth {d} | {med([x['wbytes'] for x in xs])/1e6:.1f} | {med([x['kvbytes'] for x in xs])/1e6:.1f} | "
          f"{med([x['bw'] for x in xs]):.1f} | {med([x['roof'] for x in xs]):.1f} | {med([x['tg'] for x in xs]):.2f} | {med([x['tg']/x['roof'] for x in xs]):.2f} |")
for d in mla_depths:
    xs = [fs("new", r, d, model="mla") for r in rounds]
    print(f"| synthetic K2-shaped MLA f16 KV, depth {d} (prompt {med([x['pp'] for x in xs]):.1f} tok/s) | {med([x['wbytes'] for x in xs])/1e6:.1f} | "
          f"{med([x['kvbytes'] for x in xs])/1e6:.1f} | {med([x['bw'] for x in xs]):.1f} | {med([x['roof'] for x in xs]):.1f} | "
          f"{med([x['tg'] for x in xs]):.2f} | {med([x['tg']/x['roof'] for x in xs]):.2f} |")
PY
rm -f "$out" "$out".*
