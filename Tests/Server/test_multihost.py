"""Several hosts on one machine: Linux network namespaces joined by veth pairs to a bridge in a
namespace of their own, each host with its own address. The coordinator runs in one, each
expert node in its own; the coordinator reaches the nodes only through those links, and every
HTTP request is made from inside the coordinator's namespace. Needs root and iproute2 (the test
makes and removes its namespaces; nothing outside them is touched)."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from test_server import BIN, DEFAULT_MODEL, REPO, farside

PREFIX = f"fs{os.getpid() % 100000}"
NET = "10.77.0"
PYTHON = str(REPO / ".venv/bin/python")


def sh(*cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr}")
    return r


class Hosts:
    """Namespaces `PREFIX-NAME` with address NET.N on a bridge in `PREFIX-sw`."""

    def __init__(self, names):
        self.names = names
        self.addr = {n: f"{NET}.{i + 1}" for i, n in enumerate(names)}
        self.sw = f"{PREFIX}-sw"
        self.made = []
        try:
            sh("ip", "netns", "add", self.sw)
            self.made.append(self.sw)
            sh("ip", "-n", self.sw, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.sw, "link", "set", "br0", "up")
            for i, n in enumerate(names):
                ns = self.ns(n)
                sh("ip", "netns", "add", ns)
                self.made.append(ns)
                # The veth is made inside the bridge namespace, then one end moves to the host.
                sh("ip", "-n", self.sw, "link", "add", "name", f"p{i}", "type", "veth", "peer", "name", "eth0")
                sh("ip", "-n", self.sw, "link", "set", "eth0", "netns", ns)
                sh("ip", "-n", self.sw, "link", "set", f"p{i}", "master", "br0", "up")
                sh("ip", "-n", ns, "addr", "add", f"{self.addr[n]}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
        except Exception:
            self.remove()
            raise

    def ns(self, name):
        return f"{PREFIX}-{name}"

    def port(self, name):
        """The bridge-side interface of a host's link."""
        return f"p{self.names.index(name)}"

    def run(self, name, *cmd, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.ns(name), *cmd], **kw)

    def remove(self):
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            sh("ip", "netns", "del", ns, check=False)
        self.made = []


def can_make_namespaces():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    r = subprocess.run(["ip", "netns", "add", f"{PREFIX}-probe"], capture_output=True)
    subprocess.run(["ip", "netns", "del", f"{PREFIX}-probe"], capture_output=True)
    return r.returncode == 0


SNIFF = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
out = open(sys.argv[2], "wb", buffering=0)
end = time.time() + float(sys.argv[3])
print("sniffing", flush=True)
while time.time() < end:
    try:
        out.write(s.recv(65536))
    except socket.timeout:
        pass
out.close()
"""

# Streams a greedy chat answer; says "started" once 5 pieces arrived (the test cuts a link then),
# and prints the whole answer as JSON at the end.
CLIENT = r"""
import json, sys, urllib.request
body = json.dumps({"messages": [{"role": "user", "content": sys.argv[2]}], "max_tokens": int(sys.argv[3]),
                   "temperature": 0, "ignore_eos": True, "stream": True}).encode()
r = urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/v1/chat/completions", body, {"Content-Type": "application/json"}), timeout=300)
text, pieces = "", 0
for line in r:
    line = line.decode().strip()
    if not line.startswith("data: ") or line == "data: [DONE]":
        continue
    delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    text += delta
    pieces += 1
    if pieces == 5:
        print("started", flush=True)
if pieces < 5:
    print("started", flush=True)
print(json.dumps(text), flush=True)
"""


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Cluster:
    """A coordinator in `coord` and nodes in `n1..n3` (and a rogue node) over the namespaces."""

    def __init__(self, hosts, keys, secure, model, node_names=("n1", "n2", "n3")):
        self.hosts, self.model, self.logs = hosts, model, {}
        # The default model is dense: its FFNs, cut in one slice per node, are the nodes' experts.
        self.split = ["--split-dense", str(len(node_names))]
        c = hosts.addr["coord"]
        sec = ["--secret-key-file", f"{keys}/coordinator.key", "--allowed-nodes-file", f"{keys}/allowed"] if secure else ["--insecure-links"]
        self.coord_log = open(Path(keys, "coord.log"), "w+")
        self.procs = [hosts.run("coord", str(BIN), "serve", "--model", str(model), "--host", c, "--port", "8000",
                                "--nodes", str(len(node_names)), "--node-listen", f"tcp://{c}:5500", *self.split, *sec,
                                stdout=subprocess.DEVNULL, stderr=self.coord_log)]
        self.nodes = {}
        for n in node_names:
            self.start_node(n, keys, secure)
        self.url = f"http://{c}:8000"

    def start_node(self, n, keys, secure, key_name=None):
        sec = (["--secret-key-file", f"{keys}/{key_name or n}.key", "--coordinator-public-key", f"{keys}/coordinator.pub"]
               if secure else ["--insecure-links"])
        p = self.hosts.run(n, str(BIN), "expert", "--listen", f"tcp://{self.hosts.addr[n]}:5600",
                           "--coordinator", f"tcp://{self.hosts.addr['coord']}:5500", "--model", str(self.model),
                           "--node-id", n, "--quiet", *self.split, *sec, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        self.nodes[n] = p
        return p

    def log(self):
        self.coord_log.flush()
        return Path(self.coord_log.name).read_text()

    def ready(self):
        r = self.hosts.run("coord", PYTHON, "-c", "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/health', timeout=5)",
                           self.url, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.wait(30) == 0

    def complete(self, prompt, n):
        p = self.hosts.run("coord", PYTHON, "-c", CLIENT, self.url, prompt, str(n),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.coord_log.close()


@pytest.fixture(scope="module")
def hosts():
    if not can_make_namespaces():
        pytest.fail("this test needs root and `ip netns` (iproute2) to make network namespaces")
    h = Hosts(["coord", "n1", "n2", "n3", "rogue"])
    yield h
    h.remove()


@pytest.fixture(scope="module")
def keys():
    d = tempfile.mkdtemp()
    for name in ["coordinator", "n1", "n2", "n3", "rogue"]:
        farside("keys", "generate", "--out", d, "--name", name)
    Path(d, "allowed").write_text("".join(Path(d, f"{n}.pub").read_text() for n in ["n1", "n2", "n3"]))
    yield d
    shutil.rmtree(d, ignore_errors=True)


MODEL = DEFAULT_MODEL
# The mechanism field of a ZMTP 3 greeting: the name, NUL-padded to 20 bytes.
CURVE_GREETING = b"CURVE".ljust(20, b"\0")
NULL_GREETING = b"NULL".ljust(20, b"\0")
PROMPT = "Name three colors."


def in_process(n):
    """The chat answer `farside generate --chat` gives in process, greedy."""
    return json.loads(farside("generate", "--model", str(MODEL), "--chat", "--prompt", PROMPT,
                              "--max-tokens", str(n), "--ignore-eos", "--format", "json"))["text"]


def sniff(hosts, name, seconds, path):
    p = hosts.run("sw", PYTHON, "-c", SNIFF, hosts.port(name), path, str(seconds),
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "sniffing", p.stderr.read()
    return p


def started(client):
    """Waits until a `Cluster.complete` client has received the first pieces of its answer."""
    assert client.stdout.readline().strip() == "started", client.stderr.read()


def finish(client):
    """The answer a `Cluster.complete` client process printed."""
    out, err = client.communicate(timeout=300)
    assert client.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def stop_sniffing(sniffer, capture):
    sniffer.send_signal(signal.SIGTERM)
    sniffer.wait(30)
    return capture.read_bytes()


def test_three_nodes_in_three_namespaces(hosts, keys):
    """A chat request gets the same answer as in process through 3 nodes in 3 namespaces, over encrypted links; the
    rogue node (a key not on the allowlist) is refused and gets no work; a sniffer on a node's
    link from before it connects sees CURVE greetings and none of the text that the same traffic
    shows with --insecure-links (next test); cutting a node's link mid-generation loses no
    request and changes no token."""
    want = in_process(200)
    cap = Path(keys, "secure.pcap")
    s = sniff(hosts, "n1", 600, str(cap))
    c = Cluster(hosts, keys, secure=True, model=MODEL)
    try:
        wait_for(c.ready, 180, "the coordinator to serve")
        rogue = c.start_node("rogue", keys, secure=True)
        assert finish(c.complete(PROMPT, 200)) == want
        wire = stop_sniffing(s, cap)
        assert len(wire) > 100_000, f"the sniffer saw {len(wire)} bytes"
        addr = hosts.addr["n1"].encode()
        assert CURVE_GREETING in wire and NULL_GREETING not in wire
        # The node's connection id ("n1#PID-..."): long enough that random bytes never hold it.
        identity = f"n1#{c.nodes['n1'].pid}-".encode()
        assert identity not in wire and b"tcp://" + addr not in wire
        rogue_key = Path(keys, "rogue.pub").read_text().split()[0]
        wait_for(lambda: rogue_key in c.log(), 30, "the rogue node's refusal")
        log = c.log()
        assert "node rogue" not in log and "rogue=" not in log, log[-3000:]
        # Cut n2's link mid-generation: its slices move, the step is re-sent, same tokens.
        got = c.complete(PROMPT, 200)
        started(got)
        sh("ip", "-n", hosts.sw, "link", "set", hosts.port("n2"), "down")
        assert finish(got) == want
        wait_for(lambda: "node n2 declared dead" in c.log(), 30, "n2 to be declared dead")
        assert rogue.poll() is None  # still knocking, never let in
        print("coordinator log:\n" + c.log()[-2000:])
    finally:
        if s.poll() is None:
            s.kill()
        sh("ip", "-n", hosts.sw, "link", "set", hosts.port("n2"), "up", check=False)
        c.stop()


def test_the_sniffer_does_see_plaintext_links(hosts, keys):
    """The check above can fail: with --insecure-links the same sniffer sees the NULL mechanism,
    the node's connection id and its endpoint on the wire."""
    want = in_process(20)
    cap = Path(keys, "plain.pcap")
    s = sniff(hosts, "n1", 600, str(cap))
    c = Cluster(hosts, keys, secure=False, model=MODEL, node_names=("n1",))
    try:
        wait_for(c.ready, 180, "the coordinator to serve")
        assert finish(c.complete(PROMPT, 20)) == want
        wire = stop_sniffing(s, cap)
        assert NULL_GREETING in wire and f"n1#{c.nodes['n1'].pid}-".encode() in wire and b"tcp://" + hosts.addr["n1"].encode() in wire
    finally:
        if s.poll() is None:
            s.kill()
        c.stop()
