"""The KV cache's disk tier (`serve --kv-disk DIR`): prefix blocks that left RAM, or a killed
server, are read back from block files instead of computed; a file that does not check out is
ignored, removed and computed again; a directory that cannot be used stops the server at start,
and one that fails at runtime leaves it running on RAM. Every directory is a temporary one."""
import concurrent.futures
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from test_server import BIN, DEFAULT_MODEL, Server, complete_token_ids, generate_ids

BLOCK = 16
HEADER = 72 + 8 * BLOCK  # KVBlockFile: fixed header, then the block's tokens


def tokens(n, seed):
    return [(i * 7919 + seed * 104729 + 13) % 48000 + 100 for i in range(n)]


def wait_for_writes(s, n, timeout=60):
    """Block files are written by a background thread: wait until `n` are."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if s.metrics().get("farside_kv_disk_writes", 0) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} KV block files written: {s.metrics().get('farside_kv_disk_writes')}")


def chain(directory):
    """The block files of one prompt in order (each names its parent's hash in its header)."""
    files = {}
    for p in Path(directory).glob("*.kvb"):
        h = p.read_bytes()[:56]
        files[struct.unpack_from("<Q", h, 40)[0]] = (struct.unpack_from("<Q", h, 48)[0], p)
    parents = {parent for parent, _ in files.values()}
    hashes = set(files)
    # The first block's parent is the model fingerprint, the only parent that is no block's hash.
    (root,) = parents - hashes
    by_parent = {parent: (h, p) for h, (parent, p) in files.items()}
    out, at = [], root
    while at in by_parent:
        h, p = by_parent[at]
        out.append(p)
        at = h
    return out


@pytest.fixture
def disk_dir():
    d = tempfile.mkdtemp(prefix="farside-kv-disk-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_prefix_evicted_from_ram_is_read_back_from_disk(disk_dir):
    """With a RAM budget of 11 blocks, a second prompt evicts the first one's blocks; asked
    again, the first prompt's prefix comes back from disk (not computed) with the same tokens."""
    a, b = tokens(120, 1), tokens(120, 2)
    s = Server("--kv-budget", "8MiB", "--kv-block-size", str(BLOCK), "--kv-disk", disk_dir, "--max-batch-tokens", "64")
    try:
        ids_a, u = complete_token_ids(s, a, 6)
        assert u["prompt_tokens_details"]["cached_tokens"] == 0
        complete_token_ids(s, b, 6)
        wait_for_writes(s, 14)  # 7 full blocks each (120 prompt + 5 generated positions)
        ids_again, u = complete_token_ids(s, a, 6)
        m = s.metrics()
    finally:
        assert s.stop() == 0
    assert u["prompt_tokens_details"]["cached_tokens"] == 112, "7 full blocks of the prompt"
    assert m["farside_kv_disk_hits"] >= 5, "evicted from RAM, read back from disk"
    assert m["farside_kv_disk_blocks"] >= 14
    assert m["farside_kv_disk_written_bytes"] > 0 and m["farside_kv_disk_read_bytes"] > 0
    assert ids_again == ids_a == generate_ids(a, 6)


def test_killed_server_finds_its_prefix_on_disk_and_damaged_files_are_recomputed(disk_dir):
    """SIGKILL after a long prompt; a server started again on the same directory serves the
    prompt's prefix from disk. Then one block file is damaged and another cut short: they are
    ignored and removed, the prefix stops before the damaged block, and the answer is the same."""
    doc = tokens(1000, 3)
    full = (len(doc) - 1) // BLOCK * BLOCK
    args = ("--kv-block-size", str(BLOCK), "--kv-disk", disk_dir, "--max-batch-tokens", "256")
    s = Server(*args)
    try:
        first, _ = complete_token_ids(s, doc, 8)
        wait_for_writes(s, full // BLOCK)
    finally:
        s.stop(sig=signal.SIGKILL)

    s = Server(*args)
    try:
        again, u = complete_token_ids(s, doc, 8)
        m = s.metrics()
    finally:
        s.stop(sig=signal.SIGKILL)
    assert u["prompt_tokens_details"]["cached_tokens"] == full, "the whole prefix comes from disk"
    assert m["farside_kv_disk_hits"] == full // BLOCK
    assert again == first == generate_ids(doc, 8)

    blocks = chain(disk_dir)
    assert len(blocks) >= full // BLOCK
    damaged, cut = blocks[2], blocks[4]
    data = bytearray(damaged.read_bytes())
    data[HEADER + 1000] ^= 0x40
    damaged.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:-100])
    s = Server(*args)
    try:
        assert not cut.exists(), "a file cut short is removed at start"
        third, u = complete_token_ids(s, doc, 8)
        m = s.metrics()
        wait_for_writes(s, 2)  # the two removed blocks, computed again, are written again
    finally:
        assert s.stop() == 0
    assert u["prompt_tokens_details"]["cached_tokens"] == 2 * BLOCK, "the prefix stops before the damaged block"
    assert m["farside_kv_disk_rejected"] == 2
    assert any("ignored and removed" in line for line in s.stderr_lines), s.stderr_lines
    assert third == first
    assert damaged.read_bytes() != bytes(data), "the damaged file was replaced by the recomputed block"


def test_unusable_disk_directory_is_a_clear_error_at_start(disk_dir):
    not_dir = Path(disk_dir) / "file"
    not_dir.write_text("x")
    for target, words in [(not_dir, "is not a directory"), (not_dir / "kv", "cannot be created")]:
        r = subprocess.run([str(BIN), "serve", "--model", str(DEFAULT_MODEL), "--port", "0", "--kv-disk", str(target)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0, r.stderr
        assert f"--kv-disk '{target}'" in r.stderr and words in r.stderr, r.stderr
    r = subprocess.run([str(BIN), "serve", "--model", str(DEFAULT_MODEL), "--port", "0", "--kv-disk", disk_dir, "--no-prefix-cache"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--kv-disk" in r.stderr and "--no-prefix-cache" in r.stderr, r.stderr


def test_disk_directory_gone_at_runtime_warns_and_serves_from_ram(disk_dir):
    """The directory disappears under a running server (as a full or failed disk would stop
    writes): it warns, stops writing, and answers every request as before."""
    d = Path(disk_dir) / "kv"
    s = Server("--kv-block-size", str(BLOCK), "--kv-disk", str(d))
    try:
        shutil.rmtree(d)
        p = tokens(100, 4)
        ids, _ = complete_token_ids(s, p, 6)
        deadline = time.time() + 30
        while s.metrics()["farside_kv_disk_writable"] != 0 and time.time() < deadline:
            time.sleep(0.1)
        assert s.metrics()["farside_kv_disk_writable"] == 0
        again, u = complete_token_ids(s, p, 6)
    finally:
        assert s.stop() == 0
    assert any("stops writing" in line for line in s.stderr_lines), s.stderr_lines
    assert u["prompt_tokens_details"]["cached_tokens"] > 0, "RAM's prefix cache still serves"
    assert ids == again == generate_ids(p, 6)


def test_sequences_longer_than_the_kv_budget_stream_from_disk(disk_dir):
    """`--kv-budget 2MiB` holds 2 blocks (32 positions); with `--kv-disk`, two 200-token prompts
    run at once beside a short one: the long ones keep their KV in a file, one layer in RAM at a
    time, and every answer equals `farside generate`'s (unlimited RAM) token for token."""
    long_prompts = [tokens(200, 5), tokens(200, 6)]
    short = tokens(10, 7)
    s = Server("--kv-budget", "2MiB", "--kv-block-size", str(BLOCK), "--kv-disk", disk_dir, "--max-batch-tokens", "64")
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda p: complete_token_ids(s, p, 12), long_prompts + [short]))
        m = s.metrics()
    finally:
        assert s.stop() == 0
    assert m["farside_kv_disk_streamed_sequences"] == 2
    for p, (ids, _) in zip(long_prompts + [short], got):
        assert ids == generate_ids(p, 12)
    assert [f for f in Path(disk_dir).iterdir() if f.name.startswith("stream-")] == [], "a streamed sequence's file goes with it"


def test_preempted_sequence_resumes_from_disk(disk_dir):
    """Two requests that together outgrow an 11-block budget: the newer is preempted, the older
    one's growth evicts the preempted one's cached blocks from RAM, and the preempted one resumes
    by reading them back from disk instead of computing them; both answer as alone."""
    prompts = [tokens(60, 8), tokens(60, 9)]
    s = Server("--kv-budget", "8MiB", "--kv-block-size", str(BLOCK), "--kv-disk", disk_dir, "--max-batch-tokens", "128")
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda p: complete_token_ids(s, p, 60), prompts))
        m = s.metrics()
    finally:
        assert s.stop() == 0
    assert m["farside_preemptions"] >= 1
    assert m["farside_kv_disk_hits"] >= 1, "the preempted sequence's evicted blocks came back from disk"
    for p, (ids, _) in zip(prompts, got):
        assert ids == generate_ids(p, 60)


def test_streamed_sequences_count_toward_the_disk_budget(disk_dir):
    """A streamed sequence's file counts toward `--kv-disk-budget`, as block files do: a request
    whose KV could never fit it is refused with a 400 naming the flag, before any work; one that
    fits runs and answers as `farside generate` does, and gives its share back when it ends."""
    prompt, n = tokens(200, 5), 12
    s = Server("--kv-budget", "2MiB", "--kv-block-size", str(BLOCK), "--kv-disk", disk_dir, "--kv-disk-budget", "24MiB")
    try:
        per = int(s.metrics()["farside_kv_cache_bytes_per_token"])
        need = (len(prompt) + n) * per
        assert need < 24 << 20, need  # this prompt fits the budget
        ids, _ = complete_token_ids(s, prompt, n)
        assert ids == generate_ids(prompt, n)
        m = s.metrics()
        assert m["farside_kv_disk_streamed_sequences"] == 1
        assert m["farside_kv_disk_stream_bytes"] == 0, "the share went back when the request ended"
        # Asking for many more tokens makes the same prompt's KV larger than the whole budget.
        more = (24 << 20) // per
        status, _, body = s.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": more, "temperature": 0,
                                                                 "ignore_eos": True})
        assert status == 400, body
        assert b"--kv-disk-budget" in body, body
        assert s.metrics()["farside_kv_disk_streamed_sequences"] == 1, "refused before any work"
    finally:
        assert s.stop() == 0
