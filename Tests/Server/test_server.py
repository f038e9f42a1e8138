"""`farside serve` through the real `openai` client and raw HTTP: a real server process on
loopback, the default model (SmolLM2-135M-Instruct Q4_1, fetched by scripts/setup.sh) and the
tiny fixture models. Run by scripts/test.sh in the venv scripts/setup.sh makes."""
import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("FARSIDE_BIN", REPO / ".build/release/farside"))
DEFAULT_MODEL = REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURES = REPO / "Tests/Fixtures"


class Server:
    """A `farside serve` process on a free loopback port, stopped with SIGTERM."""

    def __init__(self, *args, model=DEFAULT_MODEL, env=None):
        cmd = [str(BIN), "serve", "--model", str(model), "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.stderr_lines = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        deadline = time.time() + 180
        line = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"on http://([\d.]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
        else:
            line = ""
        if not getattr(self, "port", None):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {''.join(self.stderr_lines)[-2000:]}")
        self.url = f"http://{self.host}:{self.port}"
        self.model = None

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def client(self, **kw):
        kw.setdefault("api_key", "none")
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0, timeout=120, **kw)

    def request(self, method, path, body=None, headers=None, raw=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        payload = r.read()
        conn.close()
        return r.status, dict(r.getheaders()), payload

    def metrics(self):
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def farside(*args):
    r = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def server():
    s = Server("--max-batch-tokens", "64")
    s.model = s.client().models.list().data[0].id
    yield s
    assert s.stop() == 0


# --- the OpenAI client -------------------------------------------------------------------------

def test_models_lists_the_served_model(server):
    models = server.client().models.list().data
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct.Q4_1"]
    assert server.client().models.retrieve(server.model).id == server.model


def test_chat_completion_answers_with_usage(server):
    r = server.client().chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_greedy_chat_equals_farside_generate(server):
    q = "Name three colors."
    r = server.client().chat.completions.create(model=server.model, messages=[{"role": "user", "content": q}],
                                                max_tokens=20, temperature=0)
    alone = json.loads(farside("generate", "--chat", "--prompt", q, "--max-tokens", "20", "--format", "json",
                               "--model", str(DEFAULT_MODEL)))
    assert r.choices[0].message.content == alone["text"]


def test_streaming_chat_matches_non_streaming_and_reports_usage(server):
    c = server.client()
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
    whole = c.chat.completions.create(model=server.model, messages=msgs, max_tokens=16, temperature=0)
    chunks = list(c.chat.completions.create(model=server.model, messages=msgs, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_text_completion_from_text_and_token_ids(server):
    c = server.client()
    r = c.completions.create(model=server.model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    ids = json.loads(farside("tokenize", "--text", "The capital of France is", "--model", str(DEFAULT_MODEL)))["tokens"]
    r2 = c.completions.create(model=server.model, prompt=ids, max_tokens=8, temperature=0)
    assert r2.choices[0].text == r.choices[0].text
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=server.model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert streamed == r.choices[0].text


def test_streamed_token_ids_equal_the_whole_answer(server):
    """return_token_ids while streaming: one chunk per generated token, carrying its id."""
    body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    status, _, whole = server.request("POST", "/v1/completions", body)
    assert status == 200
    want = json.loads(whole)["choices"][0]["token_ids"]
    status, _, raw = server.request("POST", "/v1/completions", {**body, "stream": True})
    assert status == 200
    chunks = [json.loads(line[5:]) for line in raw.decode().split("\n\n") if line.startswith("data: {")]
    ids = [i for ch in chunks for c in ch["choices"] for i in c.get("token_ids", [])]
    assert len(want) == 12 and ids == want


def test_stop_strings_cut_the_text(server):
    c = server.client()
    full = c.completions.create(model=server.model, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0).choices[0].text
    assert "6" in full, full
    stop = full[full.index("6"):full.index("6") + 1]
    r = c.completions.create(model=server.model, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=server.model, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[stop], stream=True) if ch.choices)
    assert streamed == r.choices[0].text


def test_same_seed_same_text(server):
    c = server.client()
    kw = dict(model=server.model, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=20,
              temperature=1.0, top_p=0.95)
    a = c.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = c.chat.completions.create(seed=1234, **kw).choices[0].message.content
    others = {c.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert a == b
    assert len(others | {a}) > 1, "different seeds should not all give the same text"


def test_logprobs(server):
    r = server.client().chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0,
        logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) >= 1
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert item.top_logprobs[0].token == item.token
        assert abs(item.top_logprobs[0].logprob - item.logprob) < 1e-6


# --- errors ------------------------------------------------------------------------------------

def error_of(status_body):
    status, headers, body = status_body
    e = json.loads(body)["error"]
    assert set(e) >= {"message", "type", "param", "code"}
    return status, e, headers


@pytest.mark.parametrize("body,param", [
    (b'{"model": "x", "messages": [', None),
    (b'[1, 2]', None),
    (b'', None),
    (json.dumps({"messages": "hello"}).encode(), "messages"),
    (json.dumps({"messages": []}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(), "messages[0].role"),
    (json.dumps({"messages": [{"role": "user"}]}).encode(), "messages[0].content"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), "messages[0].content"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}).encode(), "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}).encode(), "top_p"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 3}).encode(), "n"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}).encode(), "stop"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}).encode(), "stream"),
])
def test_bad_chat_requests_get_400_naming_the_field(server, body, param):
    status, e, _ = error_of(server.request("POST", "/v1/chat/completions", raw=body))
    assert status == 400, e
    assert e["type"] == "invalid_request_error"
    assert e["param"] == param, e


def test_max_tokens_beyond_the_context_is_400(server):
    for field in ("max_tokens", "max_completion_tokens"):
        status, e, _ = error_of(server.request("POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "hi"}], field: 10**15}))
        assert status == 400 and e["code"] == "context_length_exceeded" and e["param"] == field, e
    status, e, _ = error_of(server.request("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2**70}))
    assert status == 400 and e["param"] == "max_tokens", e


def test_prompt_longer_than_the_context_is_400(server):
    status, e, _ = error_of(server.request("POST", "/v1/completions", {"prompt": [1] * 9000, "max_tokens": 1}))
    assert status == 400 and e["code"] == "context_length_exceeded"


def test_unknown_model_and_route_are_404(server):
    status, e, _ = error_of(server.request("POST", "/v1/chat/completions",
                                           {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}))
    assert status == 404 and e["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("gpt-9")
    status, e, _ = error_of(server.request("GET", "/v2/nothing"))
    assert status == 404


def test_body_over_the_limit_is_413(server):
    big = b'{"prompt": "' + b"a" * (10 << 20) + b'"}'
    status, e, _ = error_of(server.request("POST", "/v1/completions", raw=big))
    assert status == 413


def test_slow_client_does_not_block_the_others(server):
    s = socket.create_connection((server.host, server.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro")
    try:
        r = server.client().completions.create(model=server.model, prompt="Hi", max_tokens=3)
        assert r.usage.completion_tokens >= 1
    finally:
        s.close()


def test_health_and_metrics(server):
    status, _, body = server.request("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    m = server.metrics()
    assert m['farside_requests_total{status="200"}'] >= 1
    assert m["farside_generation_tokens_total"] > 0
    assert "farside_time_to_first_token_seconds_count" in m
    assert "farside_kv_cache_bytes" in m and "farside_running_sequences" in m


def test_openapi_document_is_served(server):
    status, headers, body = server.request("GET", "/openapi.yaml")
    assert status == 200 and b"/v1/chat/completions" in body


def test_cancelled_stream_frees_its_sequence(server):
    before = server.metrics().get("farside_requests_cancelled_total", 0)
    stream = server.client().completions.create(model=server.model, prompt="Count:", max_tokens=4000, temperature=0,
                                                extra_body={"ignore_eos": True}, stream=True)
    it = iter(stream)
    next(it)
    next(it)
    stream.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        m = server.metrics()
        if m["farside_running_sequences"] == 0 and m.get("farside_requests_cancelled_total", 0) > before:
            break
        time.sleep(0.2)
    m = server.metrics()
    assert m["farside_running_sequences"] == 0
    assert m["farside_requests_cancelled_total"] > before


def test_sigterm_cancels_what_outlasts_the_drain_timeout():
    """A request that would run for minutes does not hold the shutdown past --drain-timeout."""
    s = Server("--drain-timeout", "2")
    result = {}

    def run():
        result["r"] = s.request("POST", "/v1/completions", {"prompt": "Count:", "max_tokens": 4000, "ignore_eos": True})
    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.0)
    start = time.time()
    assert s.stop(signal.SIGTERM, timeout=30) == 0
    assert time.time() - start < 20
    t.join(30)
    status, _, body = result["r"]
    answer = json.loads(body)
    assert status == 200 and answer["usage"]["completion_tokens"] < 4000
    # Cut short by the server, not ended by the model: vLLM's "abort".
    assert answer["choices"][0]["finish_reason"] == "abort"


def test_sigterm_while_waiting_for_nodes_ends_the_server():
    """Before it serves (here: waiting for an expert node that never comes) SIGTERM ends the
    server at once, instead of being lost until the wait gives up."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    p = subprocess.Popen([str(BIN), "serve", "--model", str(FIXTURES / "qwen3_moe"), "--port", "0", "--nodes", "1",
                          "--insecure-links", "--node-listen", f"tcp://127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        seen = ""
        while "waiting for 1 expert node" not in seen and time.time() < deadline:
            seen += p.stderr.readline()
        assert "waiting for 1 expert node" in seen
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == -signal.SIGTERM
    finally:
        p.kill()
        p.wait()


def test_api_key():
    s = Server("--api-key", "sekret")
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        status, e, _ = error_of(s.request("GET", "/v1/models"))
        assert status == 401
        assert s.client(api_key="sekret").models.list().data
        assert s.request("GET", "/health")[0] == 200
    finally:
        assert s.stop() == 0


def test_full_queue_is_503_with_retry_after():
    s = Server("--max-seqs", "1", "--max-waiting", "1")
    try:
        def long_request():
            return s.request("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 300, "ignore_eos": True})
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: long_request(), range(6)))
        statuses = sorted(r[0] for r in results)
        assert 200 in statuses and 503 in statuses, statuses
        for status, headers, body in results:
            if status == 503:
                assert "Retry-After" in headers or "retry-after" in headers
                assert json.loads(body)["error"]["code"] == "overloaded"
    finally:
        assert s.stop() == 0


# --- batch invariance --------------------------------------------------------------------------

def prompts16(vocab_text):
    words = vocab_text.split()
    out = []
    for i in range(16):
        n = [3, 9, 17, 40, 70, 5, 25, 90][i % 8]
        out.append(" ".join(words[(i * 7 + k) % len(words)] for k in range(n)))
    return out


TEXT = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
        "in the old town square near the river where boats carry spices silk and tea from distant ports")


def alone_tokens(model, prompt, n):
    out = json.loads(farside("generate", "--model", str(model), "--prompt", prompt, "--max-tokens", str(n),
                             "--ignore-eos", "--format", "json"))
    return out["tokens"]


def complete_ids(server, p, n):
    """Greedy token ids and their log-probabilities (exact JSON text of the floats)."""
    status, _, body = server.request("POST", "/v1/completions", {
        "prompt": p, "max_tokens": n, "temperature": 0, "ignore_eos": True, "return_token_ids": True, "logprobs": 0})
    assert status == 200, body
    choice = json.loads(body, parse_float=str)["choices"][0]
    return choice["token_ids"], choice["logprobs"]["token_logprobs"]


def concurrent_tokens(server, prompts, n):
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda p: complete_ids(server, p, n), prompts))


@pytest.mark.parametrize("nodes", [0, 2])
def test_16_concurrent_prompts_equal_each_alone(nodes):
    prompts = prompts16(TEXT)
    n = 12
    want = [alone_tokens(DEFAULT_MODEL, p, n) for p in prompts]
    s = Server("--local-nodes", str(nodes), "--max-batch-tokens", "64", "--no-prefix-cache")
    try:
        got = concurrent_tokens(s, prompts, n)
        # The same prompts one at a time: the logits' bits must not depend on the crowd.
        single = [complete_ids(s, p, n) for p in prompts]
    finally:
        assert s.stop() == 0
    for i, ((ids, lps), w, (ids1, lps1)) in enumerate(zip(got, want, single)):
        assert ids == w, f"prompt {i} ({len(prompts[i].split())} words) differs in a crowd"
        assert ids1 == w
        assert lps == lps1, f"prompt {i}: log-probabilities differ between a crowd and alone"


def test_killed_node_loses_no_request():
    model = FIXTURES / "deepseek_v3"
    ids = [[(i * 13 + k * 7) % 200 + 3 for k in range([4, 11, 23, 37][i % 4])] for i in range(16)]
    n = 24
    want = []
    for p in ids:
        out = json.loads(farside("generate", "--model", str(model), "--tokens", ",".join(map(str, p)),
                                 "--max-tokens", str(n), "--ignore-eos", "--format", "json"))
        want.append(out["tokens"])
    s = Server("--local-nodes", "2", "--max-batch-tokens", "32", "--node-timeout", "0.5", model=model)
    try:
        children = subprocess.run(["pgrep", "-P", str(s.proc.pid), "-f", "farside expert"], capture_output=True, text=True)
        node_pids = [int(x) for x in children.stdout.split()]
        assert len(node_pids) == 2, children.stdout

        def one(p):
            return complete_ids(s, p, n)[0]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, p) for p in ids]
            time.sleep(0.3)
            os.kill(node_pids[0], signal.SIGKILL)
            got = [f.result() for f in futures]
    finally:
        assert s.stop() == 0
    assert got == want


def test_sigterm_drains_running_requests_and_stops_nodes():
    s = Server("--local-nodes", "2")
    children = subprocess.run(["pgrep", "-P", str(s.proc.pid), "-f", "farside expert"], capture_output=True, text=True)
    node_pids = [int(x) for x in children.stdout.split()]
    assert len(node_pids) == 2
    result = {}

    def run():
        result["r"] = s.request("POST", "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 40,
                                                            "ignore_eos": True})
    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.0)
    assert s.stop(signal.SIGTERM) == 0
    t.join(60)
    status, _, body = result["r"]
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 40
    for pid in node_pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_64_streaming_clients_for_60_seconds():
    """The acceptance load: 64 concurrent streaming clients for 60 s on loopback (bounded loop),
    zero errors, and memory that stays bounded; the peak RSS is printed for the record."""
    s = Server("--max-seqs", "64")
    try:
        out = subprocess.run([".venv/bin/python", "scripts/load.py", "--port", str(s.port), "--clients", "64",
                              "--requests", "0", "--duration", "60", "--max-tokens", "24", "--pid", str(s.proc.pid)],
                             capture_output=True, text=True, timeout=900, cwd=REPO)
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        print("load:", out.stdout.strip())
        assert r["errors"] == 0, r["error_samples"]
        assert r["requests"] >= 64
        # Weights (~100 MB mapped), 64 small KV caches and the server itself: far below 1 GiB.
        assert r["server_peak_rss_mib"] < 1024, r
        m = s.metrics()
        assert m["farside_running_sequences"] == 0 and m["farside_waiting_requests"] == 0
    finally:
        assert s.stop() == 0


def test_schemathesis_finds_no_server_error():
    """A fuzz pass over the served OpenAPI document: no request schemathesis generates (valid or
    not) gets a 5xx or breaks the connection."""
    s = Server("--default-max-tokens", "4")
    try:
        out = subprocess.run([".venv/bin/schemathesis", "run", f"{s.url}/openapi.yaml", "--checks", "not_a_server_error",
                              "-n", "20", "--request-timeout", "60", "--generation-deterministic"],
                             capture_output=True, text=True, timeout=900, cwd=REPO)
        summary = out.stdout[-3000:]
        print(summary)
        assert out.returncode == 0, summary
        assert s.proc.poll() is None, "the server died under fuzzing"
    finally:
        assert s.stop() == 0


def test_node_started_elsewhere_serves_the_experts():
    """`--nodes 1 --node-listen ENDPOINT`: an expert node started by hand registers, gets every
    routed expert, and the server's tokens equal farside generate in process. A second node
    started while the server runs registers with it, gets a share of the experts, and the
    tokens stay the same."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = FIXTURES / "qwen3_moe"
    prompt = [5, 17, 3, 42, 8]
    want = json.loads(farside("generate", "--model", str(model), "--tokens", ",".join(map(str, prompt)),
                              "--max-tokens", "10", "--ignore-eos", "--format", "json"))["tokens"]
    def start_node(name):
        return subprocess.Popen([str(BIN), "expert", "--insecure-links", "--listen", "tcp://127.0.0.1:*", "--coordinator", f"tcp://127.0.0.1:{port}",
                                 "--model", str(model), "--node-id", name, "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = [start_node("by-hand")]
    try:
        s = Server("--nodes", "1", "--insecure-links", "--node-listen", f"tcp://127.0.0.1:{port}", model=model)
        try:
            assert complete_ids(s, prompt, 10)[0] == want
            assert s.metrics()["farside_expert_nodes_alive"] == 1
            nodes.append(start_node("joined-later"))
            deadline = time.time() + 60
            while s.metrics()["farside_expert_nodes_alive"] < 2 and time.time() < deadline:
                time.sleep(0.2)
            assert s.metrics()["farside_expert_nodes_alive"] == 2
            placed = re.compile(r"placement epoch \d+: .*joined-later=[1-9]")
            while not placed.search("".join(s.stderr_lines)) and time.time() < deadline:
                time.sleep(0.2)
            log = "".join(s.stderr_lines)
            assert "node joined-later registered" in log
            # The rebalance gave the new node experts: its share appears in the placement line.
            assert placed.search(log), log[-2000:]
            assert complete_ids(s, prompt, 10)[0] == want
        finally:
            assert s.stop() == 0
    finally:
        for node in nodes:
            node.kill()
            node.wait()


# --- paged KV cache and prefix cache -----------------------------------------------------------

def generate_ids(ids, n):
    out = json.loads(farside("generate", "--model", str(DEFAULT_MODEL), "--tokens", ",".join(map(str, ids)),
                             "--max-tokens", str(n), "--ignore-eos", "--format", "json"))
    return out["tokens"]


def complete_token_ids(server, ids, n):
    status, _, body = server.request("POST", "/v1/completions", {
        "prompt": ids, "max_tokens": n, "temperature": 0, "ignore_eos": True, "return_token_ids": True})
    assert status == 200, body
    r = json.loads(body)
    return r["choices"][0]["token_ids"], r["usage"]


def test_prefix_cache_prefills_only_what_a_long_shared_prefix_leaves():
    """A second request sharing a 2,000-token prefix with a first one computes only its own
    tail (usage.prompt_tokens_details.cached_tokens), answers as `farside generate` does, and the
    metrics count the cached tokens and blocks."""
    doc = [(i * 7919 + 13) % 48000 + 100 for i in range(2000)]
    first, second = doc + [1000, 1001, 1002], doc + [2000, 2001, 2002, 2003]
    s = Server("--max-batch-tokens", "512", "--kv-block-size", "16")
    try:
        ids1, u1 = complete_token_ids(s, first, 6)
        assert u1["prompt_tokens_details"]["cached_tokens"] == 0
        ids2, u2 = complete_token_ids(s, second, 6)
        assert u2["prompt_tokens"] == len(second)
        assert u2["prompt_tokens_details"]["cached_tokens"] == len(doc), "the shared prefix is not computed again"
        m = s.metrics()
        assert m["farside_prefix_cache_cached_tokens"] >= len(doc)
        assert 0.3 < m["farside_prefix_cache_hit_rate"] < 0.6  # 2000 of 2003 + 2004 prompt tokens
        assert m["farside_kv_cache_blocks_cached"] >= len(doc) // 16
        assert m["farside_kv_cache_blocks_total"] > m["farside_kv_cache_blocks_used"]
    finally:
        assert s.stop() == 0
    assert ids1 == generate_ids(first, 6)
    assert ids2 == generate_ids(second, 6), "a prefix hit gives the tokens of computing the prefix again"


def test_sequences_sharing_a_cached_block_stay_independent():
    """Two requests at once share the partly filled last block a finished request left cached;
    each copies it before writing (copy-on-write), so each answers as it does alone."""
    base = [(i * 31 + 7) % 40000 + 50 for i in range(40)]  # 40 positions: 2 full blocks and 8 rows of a third
    prompts = [base + [300 + k, 400 + k, 500 + k] for k in range(2)]
    s = Server("--max-batch-tokens", "64", "--kv-block-size", "16")
    try:
        complete_token_ids(s, base, 1)  # leaves base (and its one generated token's block) cached
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda p: complete_token_ids(s, p, 10), prompts))
    finally:
        assert s.stop() == 0
    for p, (ids, usage) in zip(prompts, got):
        assert usage["prompt_tokens_details"]["cached_tokens"] == len(base)
        assert ids == generate_ids(p, 10)


def test_kv_budget_limits_are_clear_errors():
    # Too small for one block of 16 positions (SmolLM2: 46,080 bytes per position).
    r = subprocess.run([str(BIN), "serve", "--model", str(DEFAULT_MODEL), "--port", "0", "--kv-budget", "100KiB"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--kv-budget" in r.stderr and "holds no block" in r.stderr, r.stderr
    r = subprocess.run([str(BIN), "serve", "--model", str(DEFAULT_MODEL), "--port", "0", "--kv-budget", "lots"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--kv-budget 'lots' is not a size" in r.stderr, r.stderr
    r = subprocess.run([str(BIN), "serve", "--model", str(DEFAULT_MODEL), "--port", "0", "--kv-block-size", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--kv-block-size" in r.stderr, r.stderr
    # 2 MiB: 2 blocks of 16 positions. A 40-token prompt can never fit: 400 at once, no hang.
    s = Server("--kv-budget", "2MiB")
    try:
        status, _, body = s.request("POST", "/v1/completions", {"prompt": list(range(100, 140)), "max_tokens": 4})
        assert status == 400, body
        assert "--kv-budget" in json.loads(body)["error"]["message"]
        # One that fits runs; its reply ends with `length` when the cache is full.
        status, _, body = s.request("POST", "/v1/completions",
                                    {"prompt": list(range(100, 120)), "max_tokens": 100, "ignore_eos": True})
        assert status == 200, body
        r = json.loads(body)
        assert r["choices"][0]["finish_reason"] == "length"
        assert r["usage"]["completion_tokens"] == 32 - 20 + 1
    finally:
        assert s.stop() == 0


def test_kv_dtype_q8_0_serves_and_bad_values_are_refused():
    """`--kv-dtype q8_0` stores KV as ggml's Q8_0 blocks (34 bytes per 32 values: SmolLM2's
    46,080 bytes per position become 12,240), answers through the OpenAI client, reports its
    dtype and bytes per token in the metrics and its start-up log, and a request's tokens do
    not depend on what runs beside it. An unknown value, or q8_0 for a model whose heads are not
    whole 32-value blocks, stops the server at start with a message naming the flag."""
    # Without the prefix cache, the concurrent round below computes its prompts again, in one batch.
    s = Server("--kv-dtype", "q8_0", "--kv-budget", "64MiB", "--max-batch-tokens", "128", "--no-prefix-cache")
    try:
        model = s.client().models.list().data[0].id
        r = s.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24, temperature=0)
        assert "Paris" in r.choices[0].message.content, r.choices[0].message.content
        m = s.metrics()
        assert m['farside_kv_cache_dtype{dtype="q8_0"}'] == 1
        assert m["farside_kv_cache_bytes_per_token"] == 12240
        # 64 MiB of 16-position blocks of 12,240 bytes per position.
        assert m["farside_kv_cache_blocks_total"] == (64 << 20) // (16 * 12240)
        prompts = [[(i * 31 + 7 * k) % 40000 + 50 for i in range(30 + k)] for k in range(3)]
        alone = [complete_token_ids(s, p, 8)[0] for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            together = [ids for ids, _ in pool.map(lambda p: complete_token_ids(s, p, 8), prompts)]
        assert together == alone
    finally:
        assert s.stop() == 0
    assert any("KV cache: q8_0, 12240 bytes per token" in line for line in s.stderr_lines), "".join(s.stderr_lines)
    r = subprocess.run([str(BIN), "serve", "--model", str(DEFAULT_MODEL), "--port", "0", "--kv-dtype", "q4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--kv-dtype" in r.stderr and "q8_0" in r.stderr and "bf16" in r.stderr, r.stderr
    r = subprocess.run([str(BIN), "serve", "--model", str(FIXTURES / "llama"), "--port", "0", "--kv-dtype", "q8_0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--kv-dtype q8_0" in r.stderr and "16 values" in r.stderr, r.stderr
