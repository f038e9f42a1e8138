"""`farside simulate` against the live cluster (issue 17), short: a ~40 s Poisson trace replayed
through `farside serve --local-nodes 3` and simulated on the same 3 nodes (this machine's
calibrated profile and expert round trip, the same placement) by scripts/validate-simulator.py.

Every request must complete with exactly its tokens, and the live throughput, TPOT p50 and the
expert nodes' busy-time energy must lie within a factor of BOUND around the bracket of the two
predictions (nodes on their own machines; the three nodes sharing this one). The bound is loose
on purpose (CI saw the own-hosts energy prediction at ×0.47 of the live run once): the busy-time energy is predicted 36% short on this machine (the
final run in BENCHMARKS.md, "Simulator validation against the live cluster", with the machine's
load), the calibration moves predictions by tens of percent from minute to minute, and a timed
run on a shared 2-core VM drifts by ±30%; so this catches a broken simulator (a cost term lost,
a unit slip, the wrong placement or trace: errors of several times), not a regression of a few
tens of percent. It passed in 50-55 s on the 2-core VM."""
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
    claimed = {c["metric"]: c for c in out["comparison"] if c["claimed"]}
    assert len(claimed) == 3, claimed
    for name, c in claimed.items():
        assert c["measured"] > 0 and c["predicted"] > 0 and c["predicted_shared_host"] > 0, c
        # The two predictions bracket the live run: nodes on machines of their own (no
        # contention) and the three nodes declared on one host (they split its cores). On 2 cores
        # the nodes overlap only partly, so the live figure lies between them (busy-time energy:
        # 137.5 J own hosts, 213.9 J measured, 360.5 J one host, BENCHMARKS.md), and the bound
        # widens that bracket by BOUND on each side.
        lo, hi = sorted([c["predicted"], c["predicted_shared_host"]])
        assert lo / BOUND <= c["measured"] <= hi * BOUND, (
            f"{name}: measured {c['measured']:.3f}, predicted {c['predicted']:.3f} (own hosts) and "
            f"{c['predicted_shared_host']:.3f} (one host), bound ×{BOUND:.1f} around them; "
            f"load average {out['loadavg_before']} -> {out['loadavg_after']}; results in {out['workdir']}")
