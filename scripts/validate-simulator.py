#!/usr/bin/env python3
"""The simulator against the live cluster (issue 17): one trace replayed through `farside serve`
with 3 local expert nodes, and the same trace through `farside simulate` with a cluster file of
the same 3 nodes, this machine's calibrated profile and the same placement strategy.

1. The trace: Vidur's CSV (`arrived_at,num_prefill_tokens,num_decode_tokens`), given (--trace)
   or generated (Poisson arrivals, uniform lengths, seeded; written next to the results).
2. Calibration (unless --profile gives one): a calibration trace, generated like the trace but
   with another seed (--calibration-requests, --calibration-seed), replayed live as below with
   `farside serve --step-log`; then `farside simulate calibrate --local-nodes 3 --model M
   --routing LOAD --step-log LOG` measures this machine (the bf16 GEMV's weight-read rate, bf16
   GEMM FLOP/s, one MoE layer's round trip through 3 local nodes, the nodes' busy and wall time
   over the roofline's when they share the machine, with routes drawn by the routing the
   calibration replay recorded) and fits the nodes' busy time per step size and the per-step
   overhead to the logged steps (--no-step-log: the probes' figures alone) into a profile.
   Nothing of the validated trace's replays feeds the prediction.
3. Live: `farside serve --local-nodes 3 --placement S --no-prefix-cache` on the model (a
   synthetic Kimi-K2-shaped MoE made by `farside synth` when missing: 384 routed experts top 8,
   so the nodes compute routed experts). Each request is sent at its arrival time (one thread
   each) as `num_prefill_tokens` token ids with `max_tokens = num_decode_tokens`, `ignore_eos`,
   streaming one chunk per token. Before and after the replay the script reads
   `/admin/cluster` (each node's busy seconds, from its heartbeats) and `/metrics` (the
   engine's steps and step seconds); during it, `/admin/cluster/load` (the routing statistics,
   every window).
4. Simulated: `farside simulate --trace T --routing LOAD --strategies S` with the cluster file
   (`coordinator` and 3 `nodes` with `profile_file: PROFILE`, the server's scheduler limits and
   KV budget, the nodes' `link: {latency_us}` half the calibrated expert round trip, the
   coordinator's `overhead_us` the calibrated step overhead); and again with `host: this-vm`
   on the nodes. They do share this machine: calibrate measures how much longer the 3 nodes
   compute a layer than the roofline says (the profile's `hostSharing`, per step size), and
   with it the one-host prediction is the claimed one and the machine-each one is shown beside
   it (a profile without it: the machine-each one claimed, processor sharing shown).
5. Compared, predicted against measured: generated tokens/s over the replay (from trace time 0
   to the last token), TPOT p50 (per request (last token - first token) / (tokens - 1),
   nearest-rank median), and busy-time energy of the expert nodes: Σ busy seconds × (busy W -
   idle W) × PUE of the profile (`EnergyModel`'s busy part; the idle part is the same window ×
   idle W on both sides). Also shown, not claimed: TTFT p50, the engine's busy seconds, steps.

Prints one JSON object per round (measured) and the simulated one, then a Markdown table of
predicted vs measured (median over rounds) with the relative errors, and the machine load.

Loopback only. Benchmark a copy of the binary (a rebuild replaces .build/release/farside under
a running server): FARSIDE_BIN=/tmp/farside-sim or --bin.

Usage: scripts/validate-simulator.py [--bin PATH] [--model DIR] [--trace CSV | --requests N
       --rate R --prompt-tokens A-B --decode-tokens A-B --seed S] [--profile JSON |
       --calibration-requests N --calibration-seed S --no-step-log] [--rounds N]
       [--placement memory] [--out DIR] [--json]
(With --trace, the calibration trace is still generated from --rate and the length flags.)
"""
import argparse
import csv
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
# How far the machine's one-token step time may move between calibration and replay before the
# comparison is flagged as measuring the machine (main's summary "drifted").
DRIFT = 0.15
COLUMNS = ["arrived_at", "num_prefill_tokens", "num_decode_tokens"]


def fail(message):
    sys.exit(f"validate-simulator: {message}")


# ---------------------------------------------------------------- the trace


def span(text, flag):
    """'A-B' (or 'N') as an inclusive range of positive integers."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not m:
        fail(f"{flag} '{text}' is not N or A-B (positive integers)")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if lo < 1 or hi < lo:
        fail(f"{flag} '{text}': need 1 <= A <= B")
    return lo, hi


def generate_trace(requests, rate, prompt, decode, seed):
    """Poisson arrivals at `rate` per second, lengths uniform over the given ranges."""
    rng = random.Random(seed)
    t, rows = 0.0, []
    for _ in range(requests):
        t += rng.expovariate(rate)
        rows.append((round(t, 6), rng.randint(*prompt), rng.randint(*decode)))
    return rows


def read_trace(path, max_positions):
    """Vidur's CSV: a header naming the three columns (any order, others ignored) or none."""
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    except OSError as e:
        fail(f"--trace {path}: {e.strerror}")
    index = [0, 1, 2]
    first = [f.strip() for f in lines[0].split(",")] if lines else []
    if first and not re.fullmatch(r"[-+.\deE]+", first[0]):
        missing = [c for c in COLUMNS if c not in first]
        if missing:
            fail(f"--trace {path}: the header has no '{missing[0]}' column")
        index = [first.index(c) for c in COLUMNS]
        lines = lines[1:]
    rows, last = [], 0.0
    for n, line in enumerate(lines, 1):
        f = [x.strip() for x in line.split(",")]
        try:
            at, p, d = float(f[index[0]]), int(f[index[1]]), int(f[index[2]])
        except (ValueError, IndexError):
            fail(f"--trace {path}: data line {n} '{line}' is not seconds,prompt tokens,decode tokens")
        if not (at >= last and at < 1e6) or p < 1 or d < 1:
            fail(f"--trace {path}: data line {n}: arrivals must not go back in time and lengths must be >= 1")
        if p + d > max_positions:
            fail(f"--trace {path}: data line {n}: {p} + {d} tokens exceed the model's {max_positions} positions")
        rows.append((at, p, d))
        last = at
    if not rows:
        fail(f"--trace {path}: no requests")
    return rows


def write_trace(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows)


def prompt_ids(i, n, vocab):
    """Distinct token ids per request (no shared prefix), clear of the special ids at the ends."""
    rng = random.Random(1_000_003 * (i + 1))
    return [rng.randrange(5, vocab - 5) for _ in range(n)]


# ---------------------------------------------------------------- the live cluster


def http_get(port, path):
    c = http.client.HTTPConnection(HOST, port, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {r.status}: {body[:200]}")
    return body


def metric(text, name):
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class Server:
    """`farside serve --local-nodes 3` on a free port; stops it (SIGTERM) on close."""

    def __init__(self, binary, model, args, log):
        self.log = open(log, "w")
        self.p = subprocess.Popen([binary, "serve", "--model", str(model), "--host", HOST, "--port", "0", *args],
                                  stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = None
        deadline = time.time() + 300
        for line in self.p.stdout:
            m = re.search(r"on http://[\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
            if time.time() > deadline:
                break
        if self.port is None:
            self.close()
            fail(f"the server did not start; its log: {log}")
        threading.Thread(target=self.p.stdout.read, daemon=True).start()
        while time.time() < deadline:
            try:
                if json.loads(http_get(self.port, "/health")).get("status") == "ok":
                    nodes = json.loads(http_get(self.port, "/admin/cluster"))["nodes"]
                    if len(nodes) == 3 and all(n["state"] == "serving" and n["experts"] > 0 for n in nodes):
                        return
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.2)
        self.close()
        fail(f"the server did not report 3 serving nodes holding experts; its log: {log}")

    def close(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def stream(port, prompt, n):
    """One streaming completion; returns (send time, token times, finish reason)."""
    body = json.dumps({"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True, "stream": True,
                       "return_token_ids": True})
    conn = http.client.HTTPConnection(HOST, port, timeout=3600)
    sent = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    times, finish = [], None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[6:])
        if "choices" not in chunk:
            raise RuntimeError(f"the stream carried an error: {chunk}")
        for c in chunk["choices"]:
            k = len(c.get("token_ids") or [])
            if k:
                t = time.perf_counter()
                times += [t] * k
            finish = c.get("finish_reason") or finish
    conn.close()
    return sent, times, finish


def replay(port, rows, vocab, loads):
    """Sends every request at its arrival time; returns per request (arrival, sent, token times,
    finish, error), times in seconds from trace time 0. Appends routing statistics to `loads`
    every statistics window while it runs."""
    prompts = [prompt_ids(i, p, vocab) for i, (_, p, _) in enumerate(rows)]
    results = [None] * len(rows)
    t0 = time.perf_counter() + 0.5

    def one(i):
        at, _, d = rows[i]
        try:
            sent, times, finish = stream(port, prompts[i], d)
            results[i] = (at, sent - t0, [t - t0 for t in times], finish, None)
        except Exception as e:  # every failure is counted and reported
            results[i] = (at, None, [], None, str(e)[:300])

    done = threading.Event()

    def sample_load():
        while not done.wait(55):
            loads.append(json.loads(http_get(port, "/admin/cluster/load")))

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    threads = []
    for i, (at, _, _) in enumerate(rows):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one, args=(i,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    done.set()
    loads.append(json.loads(http_get(port, "/admin/cluster/load")))
    return results


def nearest_rank(xs, p):
    """The simulator's percentile (`Simulation.percentile`): nearest rank of the sorted values."""
    if not xs:
        return 0.0
    xs = sorted(xs)
    k = -(-p * len(xs) // 100)
    return xs[min(max(int(k), 1), len(xs)) - 1]


def live_round(args, rows, vocab, workdir, r, step_log=None):
    """One replay through a fresh server; with `step_log`, the server logs its steps there, and
    the file keeps the replay's steps only (its warm-up's are cut)."""
    raw_log = step_log.with_suffix(".all.csv") if step_log else None
    server = Server(args.bin, args.model, ["--local-nodes", "3", "--placement", args.placement, "--no-prefix-cache",
                                           "--max-seqs", str(args.max_seqs), "--max-batch-tokens", str(args.max_batch_tokens),
                                           "--kv-budget", args.kv_budget, *(["--step-log", str(raw_log)] if raw_log else [])],
                    workdir / f"serve-{r}.log")
    try:
        # Warm-up (page faults, first allocations), outside the measured window.
        for i in range(3):
            stream(server.port, prompt_ids(10_000 + i, 32, vocab), 8)
        time.sleep(1.5)  # a heartbeat from every node (0.5 s apart) with the warm-up's busy time
        warm_lines = len(raw_log.read_text().splitlines()) if raw_log else 0
        before = json.loads(http_get(server.port, "/admin/cluster"))
        m0 = http_get(server.port, "/metrics")
        loads = []
        results = replay(server.port, rows, vocab, loads)
        time.sleep(1.5)
        after = json.loads(http_get(server.port, "/admin/cluster"))
        m1 = http_get(server.port, "/metrics")
    finally:
        server.close()
    if raw_log:
        lines = raw_log.read_text().splitlines()
        step_log.write_text("\n".join(lines[:2] + lines[warm_lines:]) + "\n")
    errors = [x[4] for x in results if x[4]]
    short = [i for i, (x, row) in enumerate(zip(results, rows)) if not x[4] and (len(x[2]) != row[2] or x[3] != "length")]
    b = {n["id"]: n["busy_seconds"] for n in before["nodes"]}
    busy = {n["id"]: n["busy_seconds"] - b.get(n["id"], 0) for n in after["nodes"]}
    ends = [x[2][-1] for x in results if x[2]]
    window = max(max(ends), rows[-1][0]) if ends else 0
    tokens = sum(len(x[2]) for x in results)
    tpots = [(x[2][-1] - x[2][0]) / (len(x[2]) - 1) for x in results if len(x[2]) > 1]
    ttfts = [x[2][0] - x[0] for x in results if x[2]]
    load = merge_loads(loads)
    load_path = workdir / f"routing-{r}.json"
    load_path.write_text(json.dumps(load))
    return {
        "round": r, "requests": len(rows), "completed": len(rows) - len(errors) - len(short), "errors": len(errors),
        "error_samples": errors[:3], "wrong_length": len(short), "window_s": window, "generated_tokens": tokens,
        "out_tok_s": tokens / window if window else 0,
        "tpot_p50_ms": nearest_rank(tpots, 50) * 1e3, "tpot_p99_ms": nearest_rank(tpots, 99) * 1e3,
        "ttft_p50_ms": nearest_rank(ttfts, 50) * 1e3, "ttft_p99_ms": nearest_rank(ttfts, 99) * 1e3,
        "node_busy_s": busy, "busy_energy_j": None,
        "steps": metric(m1, "farside_engine_steps") - metric(m0, "farside_engine_steps"),
        "engine_busy_s": (metric(m1, "farside_engine_step_seconds") or 0) - (metric(m0, "farside_engine_step_seconds") or 0),
        "routing": str(load_path),
    }


def one_token_step_ms(step_log):
    """The mean engine time (step plus gap) of a step log's one-token steps, ms; None without."""
    times = []
    for line in Path(step_log).read_text().splitlines()[2:]:
        f = line.split(",")
        if f[0] == "1":
            times.append(float(f[4]) + float(f[7]))
    return statistics.mean(times) * 1e3 if times else None


def merge_loads(loads):
    """The routing statistics sampled during the replay, added up (shares are what the simulator uses)."""
    out = dict(loads[-1])
    out["tokens"] = [[sum(l["tokens"][i][e] for l in loads) for e in range(len(row))] for i, row in enumerate(out["tokens"])]
    out["window_seconds"] = sum(l["window_seconds"] for l in loads)
    return out


def busy_energy(busy_seconds, profile):
    """EnergyModel's busy part: the joules above idle of `busy_seconds` busy."""
    return busy_seconds * (profile["busyWatts"] - profile["idleWatts"]) * profile["pue"]


# ---------------------------------------------------------------- the simulator


def cluster_file(path, profile_path, profile, args, shared_host):
    host = ", host: this-vm" if shared_host else ""
    # One way is half the measured round trip's fixed cost (`calibrate --local-nodes 3`).
    rtt = profile.get("linkRoundTripSeconds")
    link = f", link: {{latency_us: {rtt / 2 * 1e6:.1f}}}" if rtt else ""
    # What a one-token step costs beyond the roofline (`calibrate --model`), per step.
    step = profile.get("stepOverheadSeconds") if args.step_overhead else None
    overhead = f", overhead_us: {step * 1e6:.1f}" if step else ""
    # How the live steps scatter (`calibrate --step-log`), for the coordinator's steps.
    j = profile.get("stepJitter") if args.jitter else None
    jitter = f", jitter: {{sigma: {j['sigma']:.4f}, autocorrelation: {j['autocorrelation']:.4f}}}" if j else ""
    path.write_text(
        "# The live run's cluster: coordinator and 3 local expert nodes, all on this machine.\n"
        f"coordinator: {{profile_file: {profile_path}, kv_budget: {args.kv_budget}{overhead}{jitter}}}\n"
        "nodes:\n"
        f"  - {{id: local, count: 3, profile_file: {profile_path}{host}{link}}}\n"
        f"scheduler: {{max_batch_tokens: {args.max_batch_tokens}, max_seqs: {args.max_seqs}, max_waiting: 256}}\n")


def simulate(args, trace, cluster, routing):
    r = subprocess.run([args.bin, "simulate", "--cluster", str(cluster), "--model", str(Path(args.model) / "config.json"),
                        "--experts", "bf16", "--trace", str(trace), "--routing", str(routing),
                        "--strategies", args.placement, "--json"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        fail(f"farside simulate: {r.stderr.strip()}")
    res = json.loads(r.stdout)["results"][0]
    nodes = res["nodes"][1:]
    return {
        "requests": res["requests"], "completed": res["completed"], "window_s": res["simulated_seconds"],
        "generated_tokens": res["output_tokens"], "out_tok_s": res["output_tokens_per_second"],
        "tpot_p50_ms": res["tpot_p50"] * 1e3, "tpot_p99_ms": res["tpot_p99"] * 1e3,
        "ttft_p50_ms": res["ttft_p50"] * 1e3, "ttft_p99_ms": res["ttft_p99"] * 1e3,
        "node_busy_s": {n["id"]: n["busy_seconds"] for n in nodes},
        "busy_energy_j": None, "steps": res["steps"], "engine_busy_s": res["step_seconds"],
    }


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("FARSIDE_BIN", str(REPO / ".build/release/farside")))
    ap.add_argument("--model", default=str(REPO / "models/synth-k2-skew-1"),
                    help="a MoE checkpoint directory (made with `farside synth --preset k2 --router-skew 1` when missing)")
    ap.add_argument("--trace", help="a Vidur CSV trace (default: generated)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rate", type=float, default=1.6, help="generated trace: requests per second (Poisson)")
    ap.add_argument("--prompt-tokens", default="16-256", help="generated trace: prompt lengths, uniform A-B")
    ap.add_argument("--decode-tokens", default="16-96", help="generated trace: output lengths, uniform A-B")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--calibration-requests", type=int, help="requests in the calibration replay (default: a third of --requests, at least 16)")
    ap.add_argument("--calibration-seed", type=int, help="its trace's seed (default: --seed + 1)")
    ap.add_argument("--step-log", action=argparse.BooleanOptionalAction, default=True,
                    help="fit the nodes' busy time and the step overhead to the calibration replay's step log")
    ap.add_argument("--profile", help="a `farside simulate calibrate` profile (default: calibrate now)")
    ap.add_argument("--placement", default="memory")
    ap.add_argument("--max-seqs", type=int, default=64)
    ap.add_argument("--max-batch-tokens", type=int, default=512)
    ap.add_argument("--kv-budget", default="1GiB")
    ap.add_argument("--rounds", type=int, default=1, help="live replays (the simulation is deterministic)")
    ap.add_argument("--out", help="directory for the trace, profile, cluster file, logs and results (default: a new temporary one)")
    ap.add_argument("--step-overhead", action=argparse.BooleanOptionalAction, default=True,
                    help="give the coordinator the calibrated per-step overhead (stepOverheadSeconds)")
    ap.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=True,
                    help="scatter the simulated steps as the calibration replay's one-token steps did (stepJitter)")
    ap.add_argument("--json", action="store_true", help="print only the final JSON summary")
    args = ap.parse_args()
    if not Path(args.bin).exists():
        fail(f"no binary at {args.bin} (build with `swift build -c release`, then copy it and pass --bin)")
    if not (1 <= args.rounds <= 20 and 1 <= args.max_seqs <= 1024 and 1 <= args.max_batch_tokens <= 65536):
        fail("--rounds must be in 1...20, --max-seqs in 1...1024, --max-batch-tokens in 1...65536")
    if not re.fullmatch(r"\d+(\.\d+)?(GiB|MiB|GB|MB)", args.kv_budget):
        fail(f"--kv-budget '{args.kv_budget}' is not a size such as 1GiB or 512MiB")
    if not re.fullmatch(r"memory|balanced(:\d+)?|power(:(energy|cost|carbon))?", args.placement):
        fail(f"--placement '{args.placement}' is not memory, balanced[:R] or power[:energy|cost|carbon]")
    model = Path(args.model)
    if not (model / "config.json").exists():
        if model != REPO / "models/synth-k2-skew-1":
            fail(f"--model {model}: no config.json there")
        subprocess.run([args.bin, "synth", "--arch", "kimi_k2", "--preset", "k2", "--router-skew", "1", "--out", str(model), "--force"],
                       check=True, stdout=subprocess.DEVNULL)
    config = json.loads((model / "config.json").read_text())
    vocab, max_positions = int(config["vocab_size"]), int(config.get("max_position_embeddings", 4096))
    workdir = Path(args.out or tempfile.mkdtemp(prefix="farside-validate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    if args.trace:
        rows = read_trace(args.trace, max_positions)
    else:
        if not (1 <= args.requests <= 100_000 and 0 < args.rate <= 1000):
            fail("--requests must be in 1...100000 and --rate in (0, 1000]")
        rows = generate_trace(args.requests, args.rate, span(args.prompt_tokens, "--prompt-tokens"),
                              span(args.decode_tokens, "--decode-tokens"), args.seed)
        if max(p + d for _, p, d in rows) > max_positions:
            fail(f"--prompt-tokens plus --decode-tokens exceed the model's {max_positions} positions")
    trace = workdir / "trace.csv"
    write_trace(rows, trace)
    say(f"trace: {len(rows)} requests over {rows[-1][0]:.1f} s, {sum(r[1] for r in rows)} prompt and "
        f"{sum(r[2] for r in rows)} decode tokens -> {trace}")

    def read_profile(path):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            fail(f"--profile {path}: {e}")

    profile_path = Path(args.profile) if args.profile else workdir / "profile.json"
    if args.profile:
        read_profile(profile_path)  # a bad file fails before the live rounds, not after
    uptime_before = Path("/proc/loadavg").read_text().split()[:3]
    calibration = None
    if not args.profile:
        # Calibration: another trace of the same kind replayed live with a step log, then the
        # probes, their routes drawn by the routing it recorded (the router's skew changes how
        # the nodes' threads share work), and the fit to its steps.
        n = args.calibration_requests or max(len(rows) // 3, 16)
        if not 1 <= n <= 100_000:
            fail("--calibration-requests must be in 1...100000")
        cal_rows = generate_trace(n, args.rate, span(args.prompt_tokens, "--prompt-tokens"), span(args.decode_tokens, "--decode-tokens"),
                                  args.seed + 1 if args.calibration_seed is None else args.calibration_seed)
        if max(p + d for _, p, d in cal_rows) > max_positions:
            fail(f"--prompt-tokens plus --decode-tokens exceed the model's {max_positions} positions")
        write_trace(cal_rows, workdir / "calibration-trace.csv")
        step_log = workdir / "steps-calibration.csv"
        calibration = live_round(args, cal_rows, vocab, workdir, "calibration", step_log if args.step_log else None)
        say(json.dumps({"calibration": calibration}))
        c = subprocess.run([args.bin, "simulate", "calibrate", "--out", str(profile_path), "--local-nodes", "3", "--model", str(model),
                            "--routing", calibration["routing"], *(["--step-log", str(step_log)] if args.step_log else [])],
                           capture_output=True, text=True, timeout=600)
        if c.returncode != 0:
            fail(f"farside simulate calibrate: {c.stderr.strip()}")
        say(c.stdout.strip())
    measured = []
    for r in range(args.rounds):
        # Logged too (not fitted): where each live step's time went, to set beside the calibration's.
        m = live_round(args, rows, vocab, workdir, r + 1, workdir / f"steps-{r + 1}.csv")
        say(json.dumps({"measured": m}))
        measured.append(m)
    uptime_after = Path("/proc/loadavg").read_text().split()[:3]
    # The machine's speed between the calibration and the replays: their one-token steps' mean
    # engine time (same kind of trace, so the same work). A VM's speed drifts; past DRIFT the
    # comparison measures the machine, not the simulator, and says so.
    drift = None
    if calibration and args.step_log:
        cal_ms = one_token_step_ms(workdir / "steps-calibration.csv")
        live_ms = [one_token_step_ms(workdir / f"steps-{m['round']}.csv") for m in measured]
        if cal_ms and all(live_ms):
            drift = {"calibration_ms": cal_ms, "rounds_ms": live_ms, "ratio": statistics.median(live_ms) / cal_ms}
    profile = read_profile(profile_path)
    for m in measured:
        m["busy_energy_j"] = busy_energy(sum(m["node_busy_s"].values()), profile)
    clusters = {}
    for shared in (True, False):
        clusters[shared] = workdir / ("cluster-shared-host.yaml" if shared else "cluster-own-hosts.yaml")
        cluster_file(clusters[shared], profile_path.resolve(), profile, args, shared)
    if profile.get("hostSharing"):
        # Processor sharing, the model the measurement replaces, shown beside it: the same
        # profile without the measurement, the nodes on one host.
        plain = workdir / "profile-without-sharing.json"
        plain.write_text(json.dumps({k: v for k, v in profile.items() if k != "hostSharing"}, indent=1))
        clusters["processor-sharing"] = workdir / "cluster-processor-sharing.yaml"
        cluster_file(clusters["processor-sharing"], plain.resolve(), profile, args, True)

    # The calibration replay's routing statistics drive the simulation (with a --profile given,
    # the first round's).
    routing = calibration["routing"] if calibration else measured[0]["routing"]
    sims = {}
    for shared, cluster in clusters.items():
        sims[shared] = simulate(args, trace, cluster, routing)
        sims[shared]["busy_energy_j"] = busy_energy(sum(sims[shared]["node_busy_s"].values()), profile)
        say(json.dumps({"predicted": sims[shared], "cluster": str(cluster)}))
    # The three nodes do share this machine: with the sharing `calibrate` measured (the profile's
    # hostSharing) the claimed prediction declares them on one host, which then costs their work
    # the measured factor; the other declares a machine each (no sharing at all). A profile
    # without the measurement (one written by an older calibrate) keeps the machine-each
    # prediction as the claimed one, beside processor sharing on one host.
    measured_sharing = bool(profile.get("hostSharing"))
    sim, alt = (sims[True], sims[False]) if measured_sharing else (sims[False], sims[True])
    ps = sims.get("processor-sharing")
    alt_label = ("the nodes declared on machines of their own" if measured_sharing
                 else "the nodes declared on one host (processor sharing)")
    claimed_label = ("the nodes on one host, sharing measured by calibrate" if measured_sharing
                     else "the nodes declared on machines of their own")

    med = lambda k: statistics.median(m[k] for m in measured)
    rows_out = []
    for key, label, claimed in [("out_tok_s", "generated tokens/s", True), ("tpot_p50_ms", "TPOT p50 (ms)", True),
                                ("busy_energy_j", "busy-time energy of the expert nodes (J)", True),
                                ("tpot_p99_ms", "TPOT p99 (ms)", False), ("ttft_p50_ms", "TTFT p50 (ms)", False),
                                ("engine_busy_s", "engine busy (s)", False), ("steps", "engine steps", False),
                                ("window_s", "window (s)", False)]:
        live, pred = med(key), sim[key]
        rows_out.append({"metric": label, "claimed": claimed, "predicted": pred, "measured": live,
                         "error": (pred - live) / live if live else None,
                         "predicted_alternative": alt[key], "error_alternative": (alt[key] - live) / live if live else None,
                         "predicted_processor_sharing": ps[key] if ps else None,
                         "error_processor_sharing": (ps[key] - live) / live if ps and live else None})
    summary = {"trace": str(trace), "requests": len(rows), "profile": profile, "rounds": len(measured), "calibration": calibration,
               "drift": drift, "drifted": bool(drift and abs(drift["ratio"] - 1) > DRIFT),
               "completed": [m["completed"] for m in measured], "loadavg_before": uptime_before, "loadavg_after": uptime_after,
               "comparison": rows_out, "measured": measured, "predicted": sim, "predicted_alternative": alt,
               "predicted_processor_sharing": ps,
               "predicted_label": claimed_label, "alternative_label": alt_label, "workdir": str(workdir)}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.json:
        print(json.dumps(summary))
        return
    print(f"\n{len(rows)} requests over {rows[-1][0]:.0f} s; {len(measured)} live round(s), completed "
          f"{', '.join(str(m['completed']) for m in measured)} of {len(rows)}; load average before {' '.join(uptime_before)}, "
          f"after {' '.join(uptime_after)}; results in {workdir}\n")
    extra = " predicted, one host under processor sharing | error |" if ps else ""
    if drift:
        print(f"one-token steps: {drift['calibration_ms']:.2f} ms in the calibration replay, "
              f"{', '.join(f'{x:.2f}' for x in drift['rounds_ms'])} ms in the replay(s): ratio {drift['ratio']:.2f}"
              + (f" -- the machine's speed moved by more than {DRIFT:.0%} between them: this comparison measures the machine, not the simulator"
                 if summary["drifted"] else "") + "\n")
    print(f"| metric | measured (median) | predicted ({claimed_label}) | error | predicted, {alt_label} | error |{extra}")
    print("|---|---|---|---|---|---|" + ("---|---|" if ps else ""))
    pct = lambda e: f"{e * 100:+.1f}%" if e is not None else "-"
    for r in rows_out:
        more = f" {r['predicted_processor_sharing']:.2f} | {pct(r['error_processor_sharing'])} |" if ps else ""
        print(f"| {r['metric']}{'' if r['claimed'] else ' (not claimed)'} | {r['measured']:.2f} | {r['predicted']:.2f} | "
              f"{pct(r['error'])} | {r['predicted_alternative']:.2f} | {pct(r['error_alternative'])} |{more}")


if __name__ == "__main__":
    main()
