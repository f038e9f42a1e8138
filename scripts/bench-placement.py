#!/usr/bin/env python3
"""Placement strategies under the same skewed load (issue 15's benchmark).

A Kimi-K2-shaped synthetic MoE (384 routed experts, top 8; `farside synth --preset k2
--router-skew S`) is served by `farside serve` with 3 expert nodes started by hand, each
declaring a different power profile. Per strategy: the server starts with it, streaming load
(scripts/load.py) warms the routing statistics, `farside cluster rebalance` places the experts
from them, then the same load is measured. Printed per strategy (one JSON line each, then a
Markdown table): throughput, TPOT p50/p99, the slowest node's busy time per engine step, and the
modelled energy, $ and gCO2 per million tokens over the measured window — with every node counted
(released nodes at idle) and with nodes that hold nothing counted as stopped.

Usage: scripts/bench-placement.py [--rounds N] [--duration S] [--clients C] [--skew S]
                                  [--memory-budgets big=400MiB,green=200MiB,small=200MiB]
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("FARSIDE_BIN", REPO / ".build/release/farside"))
MODEL = None  # models/synth-k2-skew-S, made by `farside synth` when missing
PY = REPO / ".venv/bin/python"

# Three different machines by their power and site: a big server, a mid one on a cheap green
# grid, a small one on an expensive coal-heavy grid. They all run on this VM's cores, so each
# declares watts and the same bandwidth (a hardware class would declare its own hardware's
# bandwidth, which these processes do not have; measuring it at each node's start on a loaded
# machine gave the planner a different speed per node and run).
PROFILES = {
    "big": ["--idle-watts", "200", "--busy-watts", "850", "--price-per-kwh", "0.20", "--carbon-per-kwh", "350", "--pue", "1.3"],
    "green": ["--idle-watts", "40", "--busy-watts", "150", "--price-per-kwh", "0.08", "--carbon-per-kwh", "30", "--pue", "1.1"],
    "small": ["--idle-watts", "15", "--busy-watts", "60", "--price-per-kwh", "0.35", "--carbon-per-kwh", "700", "--pue", "1.6"],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def farside(*args):
    r = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"farside {' '.join(args)}: {r.stderr}")
    return r.stdout


def status(url):
    return json.loads(farside("cluster", "status", "--json", "--url", url))


def load(port, clients, duration, max_tokens):
    r = subprocess.run([str(PY), str(REPO / "scripts/load.py"), "--port", str(port), "--clients", str(clients), "--requests", "0",
                        "--duration", str(duration), "--max-tokens", str(max_tokens), "--token-prompts", "8192",
                        "--prompt-tokens", str(ARGS.prompt_tokens)],
                       capture_output=True, text=True, timeout=duration * 4 + 300)
    if r.returncode != 0:
        sys.exit(f"load.py: {r.stderr}")
    return json.loads(r.stdout)


def steps(port):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    m = re.search(r"^farside_engine_steps (\S+)$", text, re.M)
    return float(m.group(1))


def run(strategy, args):
    listen = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen([str(BIN), "serve", "--model", str(MODEL), "--port", "0", "--nodes", "3", "--node-listen", listen,
                               "--insecure-links", "--placement", strategy, "--max-seqs", str(args.clients),
                               # Every request computes its whole prompt (the load repeats prompts).
                               "--no-prefix-cache"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    nodes = [subprocess.Popen([str(BIN), "expert", "--listen", "tcp://127.0.0.1:*", "--coordinator", listen, "--model", str(MODEL),
                               "--node-id", name, "--insecure-links", "--quiet", "--whole-experts", "--memory-bandwidth-gbs", "15",
                               *flags, *(["--memory-budget", BUDGETS[name]] if name in BUDGETS else [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, flags in PROFILES.items()]
    try:
        port = None
        for line in server.stdout:
            m = re.search(r"on http://[\d.]+:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            sys.exit("the server did not start")
        url = f"http://127.0.0.1:{port}"
        load(port, args.clients, args.warmup, args.max_tokens)
        farside("cluster", "rebalance", "--url", url)
        before, s0 = status(url), steps(port)
        out = load(port, args.clients, args.duration, args.max_tokens)
        after, s1 = status(url), steps(port)
        b = {n["id"]: n for n in before["nodes"]}
        per_node = {}
        for n in after["nodes"]:
            o = b[n["id"]]
            per_node[n["id"]] = {k: n[k] - o[k] for k in ["joules", "dollars", "grams_co2", "busy_seconds"]}
            per_node[n["id"]]["experts"] = n["experts"]
            per_node[n["id"]]["routed"] = n["routed_tokens"]
        tokens = after["generated_tokens"] - before["generated_tokens"]
        k = 1e6 / tokens
        held = [i for i, v in per_node.items() if v["experts"] > 0]
        return {
            "strategy": strategy,
            "tokens_per_s": out["aggregate_tok_s"],
            "tpot_p50_ms": out["tpot_p50_ms"], "tpot_p99_ms": out["tpot_p99_ms"], "errors": out.get("errors"),
            "experts": {i: v["experts"] for i, v in per_node.items()},
            "slowest_busy_ms_per_step": max(v["busy_seconds"] for v in per_node.values()) / (s1 - s0) * 1e3,
            # EPLB's measure: the busiest node's share of the routed tokens (the window's load
            # under the current placement), against an even split (1.0).
            "max_token_share": max(v["routed"] for v in per_node.values()) / (sum(v["routed"] for v in per_node.values()) / len(per_node)),
            # The planner's cost model on the recorded load (deterministic given the load).
            "predicted_slowest_ms_per_step": (after.get("predicted_slowest_node_step_seconds") or 0) * 1e3,
            "predicted_expert_step_ms": (after.get("predicted_expert_step_seconds") or 0) * 1e3,
            "joules_per_mtok": sum(v["joules"] for v in per_node.values()) * k,
            "dollars_per_mtok": sum(v["dollars"] for v in per_node.values()) * k,
            "grams_per_mtok": sum(v["grams_co2"] for v in per_node.values()) * k,
            "dollars_per_mtok_stopped": sum(per_node[i]["dollars"] for i in held) * k,
            "joules_per_mtok_stopped": sum(per_node[i]["joules"] for i in held) * k,
        }
    finally:
        server.terminate()
        server.wait(60)
        for n in nodes:
            n.terminate()
            n.wait(60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=15)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--skew", type=float, default=1.0)
    ap.add_argument("--memory-budgets", default="",
                    help="per-node --memory-budget, e.g. big=400MiB,green=200MiB,small=200MiB (default: none)")
    ap.add_argument("--strategies", default="memory,balanced:96,power:cost")
    args = ap.parse_args()
    global ARGS, MODEL, BUDGETS
    ARGS = args
    BUDGETS = dict(kv.split("=", 1) for kv in args.memory_budgets.split(",") if kv)
    unknown = set(BUDGETS) - set(PROFILES)
    if unknown:
        sys.exit(f"--memory-budgets: no node {', '.join(sorted(unknown))} (nodes: {', '.join(PROFILES)})")
    MODEL = REPO / f"models/synth-k2-skew-{args.skew:g}"
    if not (MODEL / "config.json").exists():
        farside("synth", "--arch", "kimi_k2", "--preset", "k2", "--router-skew", str(args.skew), "--out", str(MODEL), "--force")
    results = {s: [] for s in args.strategies.split(",")}
    for r in range(args.rounds):
        # Alternating within a round, so drift on this shared VM hits every strategy alike.
        for s in results:
            res = run(s, args)
            print(json.dumps({"round": r + 1, **res}), flush=True)
            results[s].append(res)
    med = lambda s, k: statistics.median(x[k] for x in results[s])
    base = args.strategies.split(",")[0]
    print()
    print("| strategy | tok/s | TPOT p50 / p99 ms | busiest node's tokens / mean | slowest node busy ms/step (measured) | slowest node ms/step (predicted) | J / Mtok | $ / Mtok | gCO2 / Mtok | $ / Mtok, empty nodes stopped |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in results:
        print(f"| {s} | {med(s, 'tokens_per_s'):.1f} | {med(s, 'tpot_p50_ms'):.1f} / {med(s, 'tpot_p99_ms'):.1f} | "
              f"{med(s, 'max_token_share'):.2f} | "
              f"{med(s, 'slowest_busy_ms_per_step'):.2f} ({med(s, 'slowest_busy_ms_per_step') / med(base, 'slowest_busy_ms_per_step'):.2f}×) | "
              f"{med(s, 'predicted_slowest_ms_per_step'):.2f} ({med(s, 'predicted_slowest_ms_per_step') / max(1e-12, med(base, 'predicted_slowest_ms_per_step')):.2f}×) | "
              f"{med(s, 'joules_per_mtok'):.0f} | {med(s, 'dollars_per_mtok'):.4f} ({med(s, 'dollars_per_mtok') / med(base, 'dollars_per_mtok'):.2f}×) | "
              f"{med(s, 'grams_per_mtok'):.1f} | {med(s, 'dollars_per_mtok_stopped'):.4f} "
              f"({med(s, 'dollars_per_mtok_stopped') / med(base, 'dollars_per_mtok_stopped'):.2f}×) |")


if __name__ == "__main__":
    main()
