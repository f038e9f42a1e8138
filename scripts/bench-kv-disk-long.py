#!/usr/bin/env python3
"""Benchmark (a) of the long-context issue: one long context on a synthetic model with Kimi K2's
attention shape (61 MLA layers, kv_lora_rank 512 + qk_rope_head_dim 64, YaRN; everything else
narrow: scripts/synth-k2-long-kv.json), KV stored as bf16 (70,272 bytes per position, as K2's),
served with an unlimited KV budget (RAM) against `--kv-budget 256MiB --kv-disk DIR`, where the
sequence does not fit and streams its KV from a file one layer at a time.

For each case and round: a streaming /v1/completions request of PROMPT token ids and DECODE new
tokens (ignore_eos); prefill tok/s = prompt / time to first token, decode tok/s = tokens after the
first / time after the first; peak RSS = the server's VmHWM after the request. Prints one JSON
line per run, then a Markdown table of medians. Loopback only.

Usage: scripts/bench-kv-disk-long.py [--bin PATH] [--rounds N] [--prompt-tokens N] [--decode-tokens N]
                                    [--model DIR --config JSON]
The 64k-token run: --prompt-tokens 65536 --model /tmp/farside-synth-k2-64k-kv --config
scripts/synth-k2-64k-kv.json (4 of K2's MLA layers, so that a 64k prefill takes minutes, not hours).
(benchmark a copy of the binary: a rebuild replaces .build/release/farside under a running server)."""
import argparse
import http.client
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start(binary, model, args):
    p = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", "--kv-dtype", "bf16", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        m = re.search(r"on http://([\d.]+):(\d+)", line)
        if m:
            return p, m.group(1), int(m.group(2))
    raise RuntimeError("server did not start")


def run(host, port, prompt, n):
    conn = http.client.HTTPConnection(host, port, timeout=3600)
    body = json.dumps({"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True, "stream": True,
                       "return_token_ids": True})  # a synthetic model has no tokenizer: no text, one chunk per token id
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    times = []
    for raw in r:
        line = raw.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:]).get("choices"):
            times.append(time.perf_counter() - t0)
    conn.close()
    return times


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / ".build/release/farside"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=4096)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--model", default="/tmp/farside-synth-k2-long-kv")
    ap.add_argument("--config", default=str(REPO / "scripts/synth-k2-long-kv.json"),
                    help="synth config for --model when it does not exist yet (the 64k run: scripts/synth-k2-64k-kv.json)")
    a = ap.parse_args()
    if not (Path(a.model) / "config.json").exists():
        subprocess.run([a.bin, "synth", "--arch", "kimi_k2", "--config", a.config,
                        "--dtype", "bf16", "--out", a.model], check=True, stdout=subprocess.DEVNULL)
    rows = []
    for rnd in range(a.rounds):
        prompt = [(i * 7919 + rnd * 104729 + 13) % 4000 + 50 for i in range(a.prompt_tokens)]
        for case in ["unlimited (RAM, --kv-budget 2GiB)", "--kv-budget 256MiB + --kv-disk"]:
            d = tempfile.mkdtemp(prefix="farside-bench-long-")
            args = ["--kv-budget", "2GiB"] if case.startswith("unlimited") else ["--kv-budget", "256MiB", "--kv-disk", d]
            p, host, port = start(a.bin, a.model, args)
            try:
                times = run(host, port, prompt, a.decode_tokens)
                rss = peak_rss_mib(p.pid)
            finally:
                p.terminate()
                p.wait()
                shutil.rmtree(d, ignore_errors=True)
            r = {"case": case, "round": rnd, "prefill_tok_s": round(a.prompt_tokens / times[0], 2),
                 "decode_tok_s": round((len(times) - 1) / (times[-1] - times[0]), 2), "peak_rss_mib": round(rss, 1),
                 "tokens": len(times)}
            print(json.dumps(r), flush=True)
            rows.append(r)
    print("\n| case | prefill tok/s | decode tok/s | peak RSS (MiB) |\n|---|---|---|---|")
    for case in dict.fromkeys(r["case"] for r in rows):
        sel = [r for r in rows if r["case"] == case]
        med = {k: statistics.median(r[k] for r in sel) for k in ["prefill_tok_s", "decode_tok_s", "peak_rss_mib"]}
        print(f"| {case} | {med['prefill_tok_s']:.1f} | {med['decode_tok_s']:.2f} | {med['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
