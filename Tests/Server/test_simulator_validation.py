"""`farside simulate` against the live cluster (issue 17), short: a ~40 s Poisson trace replayed
through `farside serve --local-nodes 3` and simulated on the same 3 nodes (this machine's
calibrated profile, expert round trip and host sharing, the same placement) by
scripts/validate-simulator.py.

Every request must complete with exactly its tokens, and the live throughput, TPOT p50 and the
expert nodes' busy-time energy must lie within a factor of BOUND around the span of the
predictions: the claimed one (the three nodes on one host, costing the slow-down `calibrate`
measured there), nodes on machines of their own, and the nodes under processor sharing. The
bound is loose on purpose: on a 3-minute trace the claimed prediction came within 1-8% of the
live TPOT p50 and busy energy in BENCHMARKS.md ("Simulator validation against the live
cluster"), but a shared 2-core VM drifts by ±30% and once ran a whole calibration replay at half
speed (the prediction then follows it; the script flags such a run), and this short run sees
few steps of each size; so this catches a broken simulator (a cost
term lost, a unit slip, the wrong placement or trace: errors of several times), not a
regression of a few tens of percent. Before the replay, a calibration replay of 32 requests (a
trace of another seed) logs its steps (`serve --step-log`), which calibrate fits the nodes' busy
time and the step overhead to; the test checks that log against the server's own counters."""
import json
import os
import subprocess
import sys

import pytest

from test_server import BIN, REPO

BOUND = 2.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A Kimi-K2-shaped synthetic MoE (384 routed experts, top 8, skewed routing): the nodes
    compute routed experts as on the real model."""
    shipped = REPO / "models/synth-k2-skew-1"
    if (shipped / "config.json").exists():
        return shipped
    out = tmp_path_factory.mktemp("synth") / "synth-k2-skew-1"
    subprocess.run([str(BIN), "synth", "--arch", "kimi_k2", "--preset", "k2", "--router-skew", "1", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL, timeout=600)
    return out


def validate(model, out_dir):
    r = subprocess.run([sys.executable, str(REPO / "scripts/validate-simulator.py"), "--bin", str(BIN), "--model", str(model),
                        "--requests", "48", "--rate", "1.2", "--prompt-tokens", "16-192", "--decode-tokens", "8-64",
                        "--seed", "5", "--calibration-requests", "32", "--out", str(out_dir), "--json"],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_simulator_predicts_a_live_replay_within_the_bound(model, tmp_path):
    out = validate(model, tmp_path)
    if out["drifted"]:
        # The machine's speed moved by more than 15% between the calibration replay and the
        # validated one (a shared VM's slow minute): measured again once, and the bound holds
        # on that run whatever it shows.
        tmp_path = tmp_path / "again"
        out = validate(model, tmp_path)
    live = out["measured"][0]
    assert live["errors"] == 0, live["error_samples"]
    assert live["wrong_length"] == 0, f"{live['wrong_length']} streams did not end with exactly their tokens and 'length'"
    assert live["completed"] == out["requests"] == 48
    assert out["predicted"]["completed"] == 48
    # The calibration replay (another trace of the same kind) completed, and its step log holds
    # every step of it, with the compute the nodes' heartbeats reported.
    cal = out["calibration"]
    assert cal["errors"] == 0 and cal["wrong_length"] == 0 and cal["completed"] == cal["requests"] == 32, cal
    log = (tmp_path / "steps-calibration.csv").read_text().splitlines()
    assert log[0] == "# farside-step-log-v1 nodes=3", log[:2]
    steps = [[float(x) for x in line.split(",")] for line in log[2:]]
    assert len(steps) == cal["steps"], (len(steps), cal["steps"])
    assert sum(s[0] for s in steps) >= sum(1 for _ in steps) and all(s[5] > 0 for s in steps)
    logged, beats = sum(s[6] for s in steps), sum(cal["node_busy_s"].values())
    assert abs(logged - beats) <= 0.05 * beats, (logged, beats)
    # The machine's speed between calibration and replay is reported (one-token steps' time).
    assert out["drift"] and 0 < out["drift"]["ratio"] < 100 and out["drifted"] == (abs(out["drift"]["ratio"] - 1) > 0.15), out["drift"]
    # calibrate measured how the three nodes sharing this machine slow each other (busy and
    # wall time), per step size, fitted to the logged steps where they hold enough of a size ...
    sharing = out["profile"].get("hostSharing")
    tokens = [p["tokens"] for p in sharing["factors"]] if sharing else []
    assert sharing and sharing["nodes"] == 3 and len(tokens) >= 2 and tokens == sorted(set(tokens)) and tokens[0] >= 1, sharing
    assert all(0 < p["factor"] < 100 and 0 < p["wallFactor"] < 100 for p in sharing["factors"]), sharing
    assert sharing.get("stepLog") == str(tmp_path / "steps-calibration.csv"), sharing
    # ... with routes drawn by the routing the calibration replay recorded.
    assert sharing.get("routing") == cal["routing"], sharing
    claimed = {c["metric"]: c for c in out["comparison"] if c["claimed"]}
    assert len(claimed) == 3, claimed
    assert all(c["predicted_processor_sharing"] is not None for c in claimed.values()), claimed
    for name, c in claimed.items():
        predictions = [c[k] for k in ("predicted", "predicted_alternative", "predicted_processor_sharing") if c.get(k) is not None]
        assert c["measured"] > 0 and all(p > 0 for p in predictions), c
        # The live figure lies near the claimed prediction or between the machine-each one (no
        # contention) and processor sharing on one host (full contention); the bound widens that
        # span by BOUND on each side.
        lo, hi = min(predictions), max(predictions)
        assert lo / BOUND <= c["measured"] <= hi * BOUND, (
            f"{name}: measured {c['measured']:.3f}, predicted {c['predicted']:.3f} ({out['predicted_label']}), "
            f"{c['predicted_alternative']:.3f} ({out['alternative_label']}), processor sharing {c.get('predicted_processor_sharing')}; "
            f"bound ×{BOUND:.1f} around them; load average {out['loadavg_before']} -> {out['loadavg_after']}; results in {out['workdir']}")


def test_calibrate_checks_its_routing_file_and_step_log_before_starting_nodes(model, tmp_path):
    """`calibrate --routing` takes a live run's statistics file of the model's shape, and
    `--step-log` a step log of a server with as many nodes; anything else is a clear error naming
    the flag or the file (and line), and no profile is written."""
    out = tmp_path / "profile.json"
    base = [str(BIN), "simulate", "calibrate", "--out", str(out)]
    r = subprocess.run(base + ["--routing", str(tmp_path / "load.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--routing" in r.stderr and "--local-nodes" in r.stderr, r.stderr
    missing = tmp_path / "missing.json"
    r = subprocess.run(base + ["--local-nodes", "3", "--model", str(model), "--routing", str(missing)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and str(missing) in r.stderr, r.stderr
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "farside-routing-load-v1", "window_seconds": 1, "layers": [1], "experts": 4,
                                 "tokens": [[1, 2, 3, 4]]}))
    r = subprocess.run(base + ["--local-nodes", "3", "--model", str(model), "--routing", str(wrong)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and str(wrong) in r.stderr, r.stderr
    r = subprocess.run(base + ["--step-log", str(tmp_path / "steps.csv")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--step-log" in r.stderr and "--local-nodes" in r.stderr, r.stderr
    head = "# farside-step-log-v1 nodes=3\ntokens,sequences,positions,kv_tokens,seconds,layer_steps,node_compute_seconds,gap_seconds\n"
    for text, needle in [(head + "1,1,17,16,0.002,3,0.001,0\n1,1,17\n", ":4: 3 fields"),
                         (head.replace("nodes=3", "nodes=2") + "1,1,17,16,0.002,3,0.001,0\n", "2 expert nodes"),
                         ("not a step log\n", ":1: not a step log")]:
        bad = tmp_path / "steps.csv"
        bad.write_text(text)
        r = subprocess.run(base + ["--local-nodes", "3", "--model", str(model), "--step-log", str(bad)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and str(bad) in r.stderr and needle in r.stderr, (needle, r.stderr)
    assert not out.exists()


def test_serve_refuses_a_step_log_it_cannot_write_before_loading(tmp_path):
    """`serve --step-log` opens its file before the model loads: a path that cannot be written
    fails at once, naming it."""
    bad = tmp_path / "no-such-dir" / "steps.csv"
    r = subprocess.run([str(BIN), "serve", "--port", "0", "--local-nodes", "2", "--step-log", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and str(bad) in r.stderr and "cannot open" in r.stderr, r.stderr
