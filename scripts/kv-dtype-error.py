#!/usr/bin/env python3
"""The error each `--kv-dtype` adds against f32, and its KV bytes per token (BENCHMARKS.md,
"KV storage types"). For every model given, runs `farside logits --all-positions` once per dtype
over the same input and compares each position's logits with f32's: the largest |difference|,
the same over the largest |f32 logit|, the median over positions of each position's largest
|difference| (a MoE model's largest is where a router choice flips), the mean KL divergence KL(p_f32 || p_dtype) of the
next-token distributions, how often the top token agrees, and, for text, the perplexity of the
text's own next tokens. Bytes per token are the engine's (`farside bench --kv-dtype`).

Usage: scripts/kv-dtype-error.py MODEL [--text FILE | --tokens N] [MODEL ...]
Needs the release binary (FARSIDE_BIN, default .build/release/farside); pure Python."""
import json
import math
import os
import subprocess
import sys
from array import array
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = os.environ.get("FARSIDE_BIN", str(REPO / ".build/release/farside"))
DTYPES = ["f32", "f16", "bf16", "q8_0"]


def logit_rows(model, ids, dtype):
    """Yields each position's logits (array of floats), parsed as `farside logits` streams them."""
    cmd = [BIN, "logits", "--model", model, "--all-positions", "--kv-dtype", dtype,
           "--tokens", ",".join(map(str, ids))]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    buf = p.stdout.read(len('{"logits": ['))
    assert buf == '{"logits": [', buf
    rest = ""
    while True:
        chunk = p.stdout.read(1 << 20)
        rest += chunk
        while True:
            start = rest.find("[")
            end = rest.find("]", start + 1)
            if start < 0 or end < 0:
                break
            yield array("f", map(float, rest[start + 1:end].split(", ")))
            rest = rest[end + 1:]
        if not chunk:
            break
    assert p.wait() == 0, f"{cmd[:8]} failed"


def log_softmax(row):
    m = max(row)
    s = math.log(sum(math.exp(v - m) for v in row))
    return [v - m - s for v in row]


def main(argv):
    jobs, i = [], 0
    while i < len(argv):
        model, inp = argv[i], ("tokens", 256)
        i += 1
        if i + 1 < len(argv) and argv[i] in ("--text", "--tokens"):
            inp = (argv[i][2:], argv[i + 1])
            i += 2
        jobs.append((model, inp))
    for model, (kind, value) in jobs:
        if kind == "text":
            text = Path(value).read_text()
            ids = json.loads(subprocess.check_output([BIN, "tokenize", "--model", model, "--text", text]))["tokens"]
        else:
            vocab = 4096
            s = 12345
            ids = []
            for _ in range(int(value)):
                s = (s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
                ids.append((s >> 33) % vocab)
        print(f"## {model}: {len(ids)} positions ({'text ' + value if kind == 'text' else 'seeded token ids'})")
        print("| dtype | KV bytes/token | max abs logit diff | relative to max abs logit | median per-position max diff | mean KL (nats) | top-1 agreement | perplexity |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        ref, ref_lsm, ref_max = [], [], 0.0
        for dtype in DTYPES:
            bench = json.loads(subprocess.check_output([BIN, "bench", "--model", model, "--kv-dtype", dtype, "--runs", "1",
                                                        "--prompt-tokens", "8", "--decode-tokens", "1"]))
            worst, kl, agree, nll, per_position = 0.0, 0.0, 0, 0.0, []
            for pos, row in enumerate(logit_rows(model, ids, dtype)):
                lsm = log_softmax(row)
                if dtype == "f32":
                    ref.append(row)
                    ref_lsm.append(lsm)
                    ref_max = max(ref_max, max(map(abs, row)))
                else:
                    r = ref[pos]
                    per_position.append(max(abs(a - b) for a, b in zip(row, r)))
                    worst = max(worst, per_position[-1])
                    kl += sum(math.exp(a) * (a - b) for a, b in zip(ref_lsm[pos], lsm))
                    agree += max(range(len(row)), key=row.__getitem__) == max(range(len(r)), key=r.__getitem__)
                if pos + 1 < len(ids):
                    nll -= lsm[ids[pos + 1]]
            n = len(ids)
            ppl = f"{math.exp(nll / (n - 1)):.4f}" if kind == "text" else "-"
            if dtype == "f32":
                print(f"| f32 | {bench['kv_bytes_per_token']} | 0 | 0 | 0 | 0 | {n}/{n} | {ppl} |")
            else:
                median = sorted(per_position)[len(per_position) // 2]
                print(f"| {dtype} | {bench['kv_bytes_per_token']} | {worst:.3g} | {worst / ref_max:.2g} | {median:.3g} | {kl / n:.3g} | {agree}/{n} | {ppl} |")
            sys.stdout.flush()
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
