#!/usr/bin/env python3
"""Benchmark (b) of the long-context issue: time to first token of a repeated ~4,000-token
prompt on the default model (SmolLM2-135M-Instruct Q4_1), with
  - no prefix cache (`--no-prefix-cache`): the whole prompt is computed;
  - the prefix cache, second request (a RAM hit);
  - the disk tier after a restart: the server that ran the prompt is killed (SIGKILL) once its
    block files are written, a new one starts on the same `--kv-disk` directory, and the prompt
    is asked again (the block files are read back; they are in the OS page cache, as they are
    after a restart that is not a reboot).
Each round uses a new prompt (token ids) and a new temporary directory; the time to first token
is measured on a streaming /v1/completions request (request sent → first token chunk). Prints
one JSON line per measurement, then a Markdown table of medians. Loopback only.

Usage: scripts/bench-kv-disk-ttft.py [--bin PATH] [--rounds N] [--prompt-tokens N]
(benchmark a copy of the binary: a rebuild replaces .build/release/farside under a running server)."""
import argparse
import http.client
import json
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"


class Server:
    def __init__(self, binary, *args):
        self.proc = subprocess.Popen([binary, "serve", "--model", str(MODEL), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            m = re.search(r"on http://([\d.]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                return
        raise RuntimeError("server did not start")

    def ttft(self, prompt):
        """Seconds from sending a streaming request to its first token chunk."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        body = json.dumps({"prompt": prompt, "max_tokens": 1, "temperature": 0, "stream": True,
                           "stream_options": {"include_usage": True}})
        start = time.perf_counter()
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200, r.read()
        first, cached = None, None
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                cached = (chunk["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        conn.close()
        return first, cached

    def metric(self, name):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / ".build/release/farside"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=4000)
    a = ap.parse_args()
    rows = []

    def record(case, rnd, seconds, cached):
        r = {"case": case, "round": rnd, "ttft_s": round(seconds, 4), "cached_tokens": cached}
        print(json.dumps(r), flush=True)
        rows.append(r)

    for rnd in range(a.rounds):
        prompt = [(i * 7919 + rnd * 104729 + 13) % 48000 + 100 for i in range(a.prompt_tokens)]
        s = Server(a.bin, "--no-prefix-cache")
        record("no prefix cache", rnd, *s.ttft(prompt))
        s.stop()

        d = tempfile.mkdtemp(prefix="farside-bench-kv-disk-")
        try:
            s = Server(a.bin, "--kv-disk", d)
            record("prefix cache, first request", rnd, *s.ttft(prompt))
            record("prefix cache hit (RAM)", rnd, *s.ttft(prompt))
            blocks = (a.prompt_tokens - 1) // 16
            while s.metric("farside_kv_disk_writes") < blocks:
                time.sleep(0.1)
            s.stop(signal.SIGKILL)
            s = Server(a.bin, "--kv-disk", d)
            record("disk tier after SIGKILL + restart", rnd, *s.ttft(prompt))
            s.stop()
        finally:
            shutil.rmtree(d, ignore_errors=True)

    base = statistics.median(r["ttft_s"] for r in rows if r["case"] == "no prefix cache")
    print("\n| case | TTFT median (s) | runs (s) | cached tokens | speed-up vs no cache |\n|---|---|---|---|---|")
    for case in dict.fromkeys(r["case"] for r in rows):
        runs = [r["ttft_s"] for r in rows if r["case"] == case]
        med = statistics.median(runs)
        cached = sorted({r["cached_tokens"] for r in rows if r["case"] == case})
        print(f"| {case} | {med:.3f} | {', '.join(f'{x:.3f}' for x in runs)} | {', '.join(map(str, cached))} | {base / med:.1f}x |")


if __name__ == "__main__":
    main()
