#!/usr/bin/env bash
# INT4 experts benchmark (issue: native INT4 experts): the ~1 GB bf16 synthetic DeepSeek-V3-shaped
# MoE of bench-engine.sh and the same model after `farside quantize` (routed experts in
# compressed-tensors INT4, group 32; the rest bf16): weight bytes, prefill and decode tok/s and the
# decode roofline for each (`farside bench`, median of RUNS runs, the two models alternating), and
# the INT4 model's logit error against bf16 over a 64-token prompt.
# Usage: scripts/bench-int4.sh [RUNS]   (JSON lines on stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bin=${FARSIDE_BIN:-.build/release/farside}
mkdir -p models
bf16=models/synth-deepseek_v3-1g
int4=models/synth-deepseek_v3-1g-int4
[ -f "$bf16/config.json" ] || "$bin" synth --arch deepseek_v3 --preset 1g --dtype bf16 --out "$bf16" >&2
[ -f "$int4/config.json" ] || "$bin" quantize --model "$bf16" --out "$int4" >&2
du -sb "$bf16" "$int4" | awk '{print "{\"dir\": \"" $2 "\", \"bytes_on_disk\": " $1 "}"}'
for _ in $(seq "$runs"); do
  for dir in "$bf16" "$int4"; do
    "$bin" bench --model "$dir" --prompt-tokens 128 --decode-tokens 32 --runs 1
  done
done
tokens=$(python3 -c 'import random; r = random.Random(7); print(",".join(str(r.randrange(1000)) for _ in range(64)))')
"$bin" logits --model "$bf16" --tokens "$tokens" --all-positions > /tmp/farside-bench-int4-bf16.json
"$bin" logits --model "$int4" --tokens "$tokens" --all-positions > /tmp/farside-bench-int4-int4.json
python3 - <<'PY'
import json, math
a = json.load(open("/tmp/farside-bench-int4-bf16.json"))["logits"]
b = json.load(open("/tmp/farside-bench-int4-int4.json"))["logits"]
diff = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
flat = [x for r in a for x in r]
mean = sum(flat) / len(flat)
std = math.sqrt(sum((x - mean) ** 2 for x in flat) / len(flat))
agree = sum(max(range(len(ra)), key=ra.__getitem__) == max(range(len(rb)), key=rb.__getitem__) for ra, rb in zip(a, b))
print(json.dumps({"positions": len(a), "logit_max_abs_error": max(diff), "logit_mean_abs_error": sum(diff) / len(diff),
                  "bf16_logit_std": std, "argmax_agreement": agree / len(a)}))
PY
