#!/usr/bin/env python3
"""Streaming load against an OpenAI-compatible server (Farside's or llama.cpp's llama-server).

N clients each stream /v1/completions requests back to back (fixed prompts, `max_tokens`
tokens with ignore_eos) until --requests per client are done or --duration seconds have
passed. Prints one JSON object: aggregate generated tokens/s, time to first token and time per
output token percentiles, errors, and (with --pid) the server's peak RSS.

Only loopback targets: the host must be 127.0.0.1 or localhost.
"""
import argparse
import http.client
import json
import statistics
import sys
import threading
import time

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it moves, in simple words.",
    "List some facts about the planet Mars and its two moons.",
    "Describe a busy market in a coastal town early in the morning.",
    "What makes bread rise? Explain the chemistry for a curious child.",
    "Give advice to someone who is learning to play the piano as an adult.",
    "Summarize the water cycle and why it matters for farming.",
    "Tell me about the history of the printing press and its effects on Europe.",
]


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def peak_rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def token_prompts(vocab, length=0):
    """Prompts as token ids (for a model without a tokenizer), as long as the text ones or
    `length` tokens each."""
    return [[(i * 31 + k * 17) % (vocab - 10) + 5 for k in range(length or 14 + 2 * i)] for i in range(len(PROMPTS))]


def stream_one(host, port, prompt, max_tokens, model):
    """One streaming request; returns (ttft, token_times) or raises. A chunk with text or a
    token id is a token (return_token_ids: Farside sends every token, even one without text)."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True}
    if model:
        body["model"] = model
    conn = http.client.HTTPConnection(host, port, timeout=300)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    times = []
    done = False
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        obj = json.loads(data)
        if "error" in obj:
            raise RuntimeError(f"stream error: {obj['error']}")
        for c in obj.get("choices") or []:
            if c.get("text") or c.get("token_ids"):
                times.append(time.perf_counter())
    conn.close()
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    if not times:
        raise RuntimeError("no tokens")
    return times[0] - start, times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=1, help="requests per client (0: until --duration)")
    ap.add_argument("--duration", type=float, default=0, help="seconds to keep sending (0: no limit)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", default=None)
    ap.add_argument("--pid", type=int, default=None, help="the server's pid, for its peak RSS")
    ap.add_argument("--token-prompts", type=int, default=0, metavar="VOCAB",
                    help="send prompts as token ids below VOCAB (a model without a tokenizer)")
    ap.add_argument("--prompt-tokens", type=int, default=0, help="with --token-prompts: prompts of this many tokens")
    a = ap.parse_args()
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("load.py sends traffic to loopback only")
    if a.requests == 0 and a.duration <= 0:
        sys.exit("give --requests N or --duration S: the loop must be bounded")
    lock = threading.Lock()
    ttfts, tpots, errors = [], [], []
    tokens = [0]
    first_start, last_end = [None], [None]
    stop_at = time.perf_counter() + a.duration if a.duration > 0 else None
    prompts = token_prompts(a.token_prompts, a.prompt_tokens) if a.token_prompts > 10 else PROMPTS

    def client(i):
        n = 0
        while (a.requests == 0 or n < a.requests) and (stop_at is None or time.perf_counter() < stop_at):
            prompt = prompts[(i + n) % len(prompts)]
            try:
                ttft, times = stream_one(a.host, a.port, prompt, a.max_tokens, a.model)
                with lock:
                    ttfts.append(ttft)
                    if len(times) > 1:
                        tpots.append((times[-1] - times[0]) / (len(times) - 1))
                    tokens[0] += len(times)
                    last_end[0] = max(last_end[0] or 0, times[-1])
            except Exception as e:  # every failure is counted and reported
                with lock:
                    errors.append(str(e)[:200])
            n += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = (last_end[0] or time.perf_counter()) - t0
    out = {
        "clients": a.clients, "requests": len(ttfts), "errors": len(errors), "error_samples": errors[:3],
        "generated_tokens": tokens[0], "wall_s": round(wall, 3),
        "aggregate_tok_s": round(tokens[0] / wall, 2) if wall > 0 else None,
        "ttft_p50_ms": round(percentile(ttfts, 50) * 1e3, 1) if ttfts else None,
        "ttft_p99_ms": round(percentile(ttfts, 99) * 1e3, 1) if ttfts else None,
        "tpot_p50_ms": round(percentile(tpots, 50) * 1e3, 2) if tpots else None,
        "tpot_p99_ms": round(percentile(tpots, 99) * 1e3, 2) if tpots else None,
    }
    if a.pid:
        out["server_peak_rss_mib"] = round((peak_rss_kib(a.pid) or 0) / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
