"""Running Farside as a service: systemd's notify protocol spoken by the real binary to a
datagram socket this test listens on (READY=1, WATCHDOG=1, STATUS=, STOPPING=1), SIGTERM draining
a coordinator and a node leaving gracefully, the units checked by `systemd-analyze verify`, and
the cluster config file (`--config`, `farside config check`)."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from test_server import BIN, DEFAULT_MODEL, FIXTURES, REPO, Server, complete_ids, farside


class NotifySocket:
    """A datagram socket standing in for systemd's: an abstract name or a path."""

    def __init__(self, abstract=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"farside-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.dir = tempfile.mkdtemp()
            path = os.path.join(self.dir, "notify")
            self.sock.bind(path)
            self.env = path
        self.messages = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self.lock:
                self.messages.append((time.monotonic(), data.decode()))

    def assignments(self):
        """Every KEY=VALUE line received, in order."""
        with self.lock:
            return [line for _, m in self.messages for line in m.split("\n") if line]

    def wait_for(self, key, timeout=120, count=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for a in self.assignments() if a == key) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"{key} x{count} not received; got {self.assignments()}")

    def close(self):
        self.sock.close()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("abstract", [True, False])
def test_serve_speaks_sd_notify_and_sigterm_drains(abstract):
    """READY=1 once serving (with a STATUS line), WATCHDOG=1 at half of WATCHDOG_USEC while idle
    and while generating, STOPPING=1 on SIGTERM; a request running at SIGTERM finishes; exit 0."""
    n = NotifySocket(abstract=abstract)
    try:
        s = Server("--local-nodes", "1", env={"NOTIFY_SOCKET": n.env, "WATCHDOG_USEC": "400000"})
        n.wait_for("READY=1")
        status = [a for a in n.assignments() if a.startswith("STATUS=")]
        assert any("loading" in a for a in status), status
        assert any("serving" in a for a in status), status
        n.wait_for("WATCHDOG=1", count=3, timeout=10)
        result = {}

        def run():
            result["r"] = s.request("POST", "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 40,
                                                                "ignore_eos": True})
        t = threading.Thread(target=run)
        t.start()
        time.sleep(1.0)
        pings = n.assignments().count("WATCHDOG=1")
        assert s.stop(signal.SIGTERM) == 0
        t.join(60)
        status_code, _, body = result["r"]
        assert status_code == 200 and json.loads(body)["usage"]["completion_tokens"] == 40
        lines = n.assignments()
        assert "STOPPING=1" in lines
        assert lines.index("STOPPING=1") > lines.index("READY=1")
        assert pings >= 3
        # The local node does not speak for the unit: one READY=1 only, the coordinator's.
        assert lines.count("READY=1") == 1
        assert all(a.split("=", 1)[1] == str(s.proc.pid) for a in lines if a.startswith("MAINPID="))
    finally:
        n.close()


def test_node_speaks_sd_notify_and_stops_cleanly_on_sigterm():
    """A node started on its own says READY=1 once it holds experts; on SIGTERM it says STOPPING=1,
    hands its experts back (the coordinator moves them to the other node, which loads them before
    routing switches), and exits 0 when the coordinator tells it to; a generation running
    meanwhile gets the same tokens as in process, as does the next one."""
    port = free_port()
    model = FIXTURES / "qwen3_moe"
    prompt = [5, 17, 3, 42, 8]
    want = json.loads(farside("generate", "--model", str(model), "--tokens", ",".join(map(str, prompt)),
                              "--max-tokens", "30", "--ignore-eos", "--format", "json"))["tokens"]
    n = NotifySocket()
    keys = tempfile.mkdtemp()
    for name in ["coordinator", "leaver"]:
        farside("keys", "generate", "--out", keys, "--name", name)
    node = subprocess.Popen([str(BIN), "expert", "--listen", "tcp://127.0.0.1:*", "--coordinator", f"tcp://127.0.0.1:{port}",
                             "--model", str(model), "--node-id", "leaver",
                             "--secret-key-file", f"{keys}/leaver.key", "--coordinator-public-key", f"{keys}/coordinator.pub"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NOTIFY_SOCKET": n.env, "WATCHDOG_USEC": "400000"})
    try:
        s = Server("--nodes", "1", "--local-nodes", "1", "--node-listen", f"tcp://127.0.0.1:{port}",
                   "--secret-key-file", f"{keys}/coordinator.key", "--allowed-nodes-file", f"{keys}/leaver.pub", model=model)
        try:
            n.wait_for("READY=1", timeout=60)
            assert any(a.startswith("STATUS=serving") for a in n.assignments()), n.assignments()
            n.wait_for("WATCHDOG=1", count=2, timeout=10)
            result = {}

            def run():
                result["r"] = complete_ids(s, prompt, 30)
            t = threading.Thread(target=run)
            t.start()
            time.sleep(0.3)
            start = time.monotonic()
            node.send_signal(signal.SIGTERM)
            assert node.wait(timeout=30) == 0
            assert time.monotonic() - start < 10
            t.join(120)
            assert result["r"][0] == want
            assert "STOPPING=1" in n.assignments()
            log = "".join(s.stderr_lines)
            assert "node leaver asks to leave" in log and "node leaver drained" in log, log[-3000:]
            assert "declared dead" not in log, log[-3000:]
            # Served by the remaining node alone, still the same tokens.
            status, _, body = s.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 30, "temperature": 0,
                                                                     "ignore_eos": True, "return_token_ids": True})
            assert status == 200, (body, "".join(l for l in s.stderr_lines if "coordinator" in l or "node" in l)[-6000:])
            assert json.loads(body)["choices"][0]["token_ids"] == want
        finally:
            assert s.stop() == 0
    finally:
        if node.poll() is None:
            node.kill()
        node.wait()
        n.close()
        shutil.rmtree(keys, ignore_errors=True)


def test_only_allowlisted_nodes_join_and_links_are_encrypted():
    """With keys, a node whose public key is not on the allowlist is refused by the coordinator's
    ZAP handler (logged) and never gets experts; a plaintext node cannot talk to it either; the
    allowlisted node serves, with the same tokens as in process."""
    port = free_port()
    model = FIXTURES / "qwen3_moe"
    prompt = [5, 17, 3, 42, 8]
    want = json.loads(farside("generate", "--model", str(model), "--tokens", ",".join(map(str, prompt)),
                              "--max-tokens", "10", "--ignore-eos", "--format", "json"))["tokens"]
    keys = tempfile.mkdtemp()
    for name in ["coordinator", "good", "stranger"]:
        farside("keys", "generate", "--out", keys, "--name", name)

    def node(name, *security):
        return subprocess.Popen([str(BIN), "expert", "--listen", "tcp://127.0.0.1:*", "--coordinator", f"tcp://127.0.0.1:{port}",
                                 "--model", str(model), "--node-id", name, *security],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs = [node("good", "--secret-key-file", f"{keys}/good.key", "--coordinator-public-key", f"{keys}/coordinator.pub")]
    try:
        s = Server("--nodes", "1", "--node-listen", f"tcp://127.0.0.1:{port}", "--secret-key-file", f"{keys}/coordinator.key",
                   "--allowed-nodes-file", f"{keys}/good.pub", model=model)
        try:
            stranger_key = Path(keys, "stranger.pub").read_text().split()[0]
            procs.append(node("stranger", "--secret-key-file", f"{keys}/stranger.key", "--coordinator-public-key", f"{keys}/coordinator.pub"))
            procs.append(node("plain", "--insecure-links"))
            deadline = time.time() + 30
            while stranger_key not in "".join(s.stderr_lines) and time.time() < deadline:
                time.sleep(0.2)
            log = "".join(s.stderr_lines)
            assert f"its public key {stranger_key} is not on the allowlist" in log, log[-3000:]
            time.sleep(2)
            log = "".join(s.stderr_lines)
            assert "node stranger registered" not in log and "node plain registered" not in log, log[-3000:]
            assert s.metrics()["farside_expert_nodes_known"] == 1
            assert complete_ids(s, prompt, 10)[0] == want
        finally:
            assert s.stop() == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        shutil.rmtree(keys, ignore_errors=True)


def test_remote_nodes_need_keys_or_insecure_links():
    r = subprocess.run([str(BIN), "serve", "--nodes", "1", "--node-listen", "tcp://127.0.0.1:5999"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--allowed-nodes-file" in r.stderr and "--insecure-links" in r.stderr
    r = subprocess.run([str(BIN), "expert", "--listen", "tcp://127.0.0.1:*", "--coordinator", "tcp://127.0.0.1:5999"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--coordinator-public-key" in r.stderr and "--insecure-links" in r.stderr
    with tempfile.TemporaryDirectory() as d:
        farside("keys", "generate", "--out", d, "--name", "x")
        os.chmod(f"{d}/x.key", 0o644)
        r = subprocess.run([str(BIN), "expert", "--listen", "tcp://127.0.0.1:*", "--coordinator", "tcp://127.0.0.1:5999",
                            "--secret-key-file", f"{d}/x.key", "--coordinator-public-key", f"{d}/x.pub"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "chmod 600" in r.stderr
        r = subprocess.run([str(BIN), "keys", "generate", "--out", d, "--name", "x"], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "--force" in r.stderr


def test_units_pass_systemd_analyze_verify(tmp_path):
    """Both units (the template instantiated) load without a warning in systemd-analyze verify,
    pointed at this build's binary."""
    units = REPO / "deploy/systemd"
    for name, instance in [("farside-coordinator.service", "farside-coordinator.service"),
                           ("farside-expert@.service", "farside-expert@node1.service")]:
        text = (units / name).read_text().replace("/usr/local/bin/farside", str(BIN))
        (tmp_path / instance).write_text(text)
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / instance)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", (instance, r.stdout, r.stderr)
        sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--man=no", str(tmp_path / instance)],
                             capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", sec.stdout)
        assert m and float(m.group(1)) <= 2.0, sec.stdout[-2000:]
        print(instance, "exposure", m.group(1))


def test_a_broken_unit_is_caught_by_verify(tmp_path):
    """The check above can fail: a misspelt key is reported."""
    text = (REPO / "deploy/systemd/farside-coordinator.service").read_text().replace("/usr/local/bin/farside", str(BIN))
    (tmp_path / "bad.service").write_text(text.replace("NoNewPrivileges=", "NoNewPrivilege="))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "bad.service")],
                       capture_output=True, text=True, timeout=60)
    assert "NoNewPrivilege" in r.stdout + r.stderr


# --- the cluster config file -------------------------------------------------------------------

def write(tmp_path, text, name="farside.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def check(path):
    return subprocess.run([str(BIN), "config", "check", str(path)], capture_output=True, text=True, timeout=60)


def test_example_config_checks():
    """deploy/farside.yaml, the annotated example, is valid once its model and key files exist."""
    with tempfile.TemporaryDirectory() as d:
        for name in ["coordinator", "node1"]:
            farside("keys", "generate", "--out", d, "--name", name)
        Path(d, "allowed-nodes").write_text(Path(d, "node1.pub").read_text())
        text = (REPO / "deploy/farside.yaml").read_text().replace(
            "/var/lib/farside/models/SmolLM2-135M-Instruct.Q4_1.gguf", str(DEFAULT_MODEL)).replace("/etc/farside/keys", d)
        p = Path(d) / "farside.yaml"
        p.write_text(text)
        r = check(p)
        assert r.returncode == 0, r.stderr
        assert "ok (coordinator, node)" in r.stdout


@pytest.mark.parametrize("text,words", [
    ("coordinator:\n  model: [unclosed\n", ["farside.yaml:3", "from line 2", "not valid YAML"]),
    ("coordinator:\n  http:\n    prot: 8000\n", ["farside.yaml:3", "unknown key 'coordinator.http.prot'", "port"]),
    ("cordinator:\n  model: x\n", ["farside.yaml:1", "unknown key 'cordinator'"]),
    ("coordinator:\n  http:\n    port: eighty\n", ["farside.yaml:3", "'coordinator.http.port' must be an integer", "'eighty'"]),
    ("coordinator:\n  kv:\n    prefix_cache: maybe\n", ["farside.yaml:3", "true or false"]),
    ("coordinator:\n  model: /no/such/model.gguf\n", ["farside.yaml:2", "'coordinator.model'", "/no/such/model.gguf", "does not exist"]),
    ("coordinator:\n  kv:\n    block_size: 0\n", ["farside.yaml:3", "'coordinator.kv.block_size'", "--kv-block-size must be in 1...4096"]),
    ("coordinator:\n  kv:\n    disk_budget: lots\n", ["farside.yaml:3", "'coordinator.kv.disk_budget'", "size"]),
    ("coordinator:\n  kv:\n    disk: /tmp/kv\n    prefix_cache: false\n", ["farside.yaml:3", "'coordinator.kv.disk'", "needs the prefix cache"]),
    ("node:\n  memory_budget: 1e30GiB\n", ["farside.yaml:2", "'node.memory_budget'"]),
    ("node:\n  coordinator: http://x\n", ["farside.yaml:2", "ZeroMQ endpoint"]),
    ("coordinator:\n  http:\n    port: 1\n    port: 2\n", ["farside.yaml:", "appears twice"]),
    ("- a\n- b\n", ["farside.yaml:1", "mapping"]),
])
def test_config_check_names_the_problem_and_serve_refuses_with_the_same_message(tmp_path, text, words):
    p = write(tmp_path, text)
    r = check(p)
    assert r.returncode == 1, r.stdout
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    command = "expert" if text.startswith("node") else "serve"
    extra = ["--listen", "tcp://127.0.0.1:*", "--coordinator", "tcp://127.0.0.1:1"] if command == "expert" else []
    started = subprocess.run([str(BIN), command, "--config", str(p), *extra], capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    assert started.stderr.strip() == r.stderr.strip()


def test_serve_needs_its_section(tmp_path):
    p = write(tmp_path, f"node:\n  model: {DEFAULT_MODEL}\n")
    r = subprocess.run([str(BIN), "serve", "--config", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no 'coordinator:' section" in r.stderr


def test_flags_override_the_config_file(tmp_path):
    """The file's port is overridden by --port 0; its served_model_name is used."""
    p = write(tmp_path, f"coordinator:\n  model: {DEFAULT_MODEL}\n  served_model_name: from-the-file\n"
                        f"  http:\n    port: 1\n  kv:\n    budget: 64MiB\n")
    s = Server("--config", str(p), "--port", "0")
    try:
        assert s.port != 1
        assert s.client().models.list().data[0].id == "from-the-file"
    finally:
        assert s.stop() == 0


def test_installer_stages_and_removes_everything(tmp_path):
    """scripts/install.sh into a staging root (DESTDIR): binary, both units pointing at it, the
    example config; the units there pass verify; --uninstall --purge removes them all."""
    env = {**os.environ, "DESTDIR": str(tmp_path)}
    r = subprocess.run(["scripts/install.sh", "--binary", str(BIN), "--prefix", "/opt/fs"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    binary = tmp_path / "opt/fs/bin/farside"
    assert binary.exists() and os.access(binary, os.X_OK)
    for unit in ["farside-coordinator.service", "farside-expert@.service"]:
        text = (tmp_path / "etc/systemd/system" / unit).read_text()
        assert "ExecStart=/opt/fs/bin/farside " in text
    assert (tmp_path / "etc/farside/farside.yaml").read_text() == (REPO / "deploy/farside.yaml").read_text()
    r = subprocess.run(["scripts/install.sh", "--uninstall", "--purge", "--prefix", "/opt/fs"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not binary.exists() and not (tmp_path / "etc/systemd/system/farside-coordinator.service").exists()
    assert not (tmp_path / "etc/farside").exists()
