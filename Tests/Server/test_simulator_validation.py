"""`farside simulate` against the live cluster (issue 17), short: a ~40 s Poisson trace replayed
through `farside serve --local-nodes 3` and simulated on the same 3 nodes (this machine's
calibrated profile, expert round trip and host sharing, the same placement) by
scripts/validate-simulator.py.

Every request must complete with exactly its tokens, and the live throughput, TPOT p50 and the
expert nodes' busy-time energy must lie within a factor of BOUND around the span of the
predictions: the claimed one (the three nodes on one host, costing the slow-down `calibrate`
measured there), nodes on machines of their own, and the nodes under processor sharing. The
bound is loose on purpose: the claimed prediction was 10-18% short of the live busy energy and
1-27% short of its TPOT p50 in the runs in BENCHMARKS.md ("Simulator validation against the
live cluster"), the calibration moves predictions by tens of percent from minute to minute, and
a timed run on a shared 2-core VM drifts by ±30%; so this catches a broken simulator (a cost
term lost, a unit slip, the wrong placement or trace: errors of several times), not a
regression of a few tens of percent. It passed in 50-55 s on the 2-core VM."""
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


def test_the_simulator_predicts_a_live_replay_within_the_bound(model, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "scripts/validate-simulator.py"), "--bin", str(BIN), "--model", str(model),
                        "--requests", "48", "--rate", "1.2", "--prompt-tokens", "16-192", "--decode-tokens", "8-64",
                        "--seed", "5", "--out", str(tmp_path), "--json"],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    live = out["measured"][0]
    assert live["errors"] == 0, live["error_samples"]
    assert live["wrong_length"] == 0, f"{live['wrong_length']} streams did not end with exactly their tokens and 'length'"
    assert live["completed"] == out["requests"] == 48
    assert out["predicted"]["completed"] == 48
    # calibrate measured how the three nodes sharing this machine slow each other (busy and
    # wall time), per step size ...
    sharing = out["profile"].get("hostSharing")
    assert sharing and sharing["nodes"] == 3 and [p["tokens"] for p in sharing["factors"]] == [1, 4, 16, 64, 256], sharing
    assert all(0 < p["factor"] < 100 and 0 < p["wallFactor"] < 100 for p in sharing["factors"]), sharing
    # ... with routes drawn by the routing the live round recorded.
    assert sharing.get("routing") == live["routing"], sharing
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


def test_calibrate_checks_its_routing_file_before_starting_nodes(model, tmp_path):
    """`calibrate --routing` takes a live run's statistics file of the model's shape; anything
    else is a clear error naming the flag or the file, and no profile is written."""
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
    assert not out.exists()
