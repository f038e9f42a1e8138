#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into Fuzz/corpus/TARGET/ (once; scripts/fuzz.sh
then grows and minimises each corpus, and the minimised corpus is what is committed).

GGUF: each fixture's metadata and tensor layout kept, every size key shrunk (hidden 8, 2 heads,
1 layer, ...) and the tensors rewritten at the new sizes, so that a whole file is a few KB and
loads as a model. Safetensors: small files of each dtype, and shard indexes. Config, Tokenizer,
ChatTemplate: the fixtures' config.json, tokenizer.json, chat templates and texts. Request: bodies
like the server tests send. Wire seeds come from the real encoder: the FuzzWire binary writes
them (FARSIDE_FUZZ_WRITE_SEEDS=DIR), as scripts/fuzz.sh does when that corpus is empty.
Each target's first input byte selects a mode (see Fuzz/NAME/NAME.swift)."""
import glob, json, os, struct, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

def read_gguf(path):
    b = open(path, "rb").read()
    o = 8
    nt, nk = struct.unpack_from("<QQ", b, o); o += 16
    def s(o):
        n, = struct.unpack_from("<Q", b, o); return b[o + 8:o + 8 + n], o + 8 + n
    fixed = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    def val(t, o):
        if t in fixed:
            v, = struct.unpack_from("<" + fixed[t], b, o); return v, o + struct.calcsize(fixed[t])
        if t == 8: return s(o)
        et, n = struct.unpack_from("<IQ", b, o); o += 12
        out = []
        for _ in range(n):
            v, o = val(et, o); out.append(v)
        return (et, out), o
    meta = []
    for _ in range(nk):
        k, o = s(o); t, = struct.unpack_from("<I", b, o); o += 4
        v, o = val(t, o); meta.append((k.decode(), t, v))
    tensors = []
    for _ in range(nt):
        n, o = s(o); nd, = struct.unpack_from("<I", b, o); o += 4
        dims = list(struct.unpack_from("<%dQ" % nd, b, o)); o += 8 * nd
        t, off = struct.unpack_from("<IQ", b, o); o += 12
        tensors.append((n.decode(), dims, t))
    return meta, tensors

def write_gguf(meta, tensors, path):
    fixed = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)))
    def s(x): out.extend(struct.pack("<Q", len(x)) + x)
    def val(t, v):
        if t in fixed: out.extend(struct.pack("<" + fixed[t], v))
        elif t == 8: s(v)
        else:
            et, items = v
            out.extend(struct.pack("<IQ", et, len(items)))
            for x in items: val(et, x)
    for k, t, v in meta:
        s(k.encode()); out.extend(struct.pack("<I", t)); val(t, v)
    data = bytearray()
    for name, dims, t in tensors:
        s(name.encode()); out.extend(struct.pack("<I", len(dims)) + struct.pack("<%dQ" % len(dims), *dims))
        out.extend(struct.pack("<IQ", 0, len(data)))  # F32
        n = 1
        for d in dims: n *= d
        data.extend(struct.pack("<%df" % n, *[((i * 7919) % 17 - 8) / 64 for i in range(n)]))
        while len(data) % 32: data.append(0)
    while len(out) % 32: out.append(0)
    open(path, "wb").write(bytes(out + data))

def shrink(path, dest):
    meta, tensors = read_gguf(path)
    arch = next(v for k, t, v in meta if k == "general.architecture").decode()
    vocab = len(next(v for k, t, v in meta if k == "tokenizer.ggml.tokens")[1])
    small = {"embedding_length": 8, "feed_forward_length": 16, "expert_feed_forward_length": 8,
             "expert_shared_feed_forward_length": 8, "block_count": 1, "attention.head_count": 2,
             "attention.head_count_kv": 2, "attention.key_length": 4, "attention.value_length": 4,
             "rope.dimension_count": 4, "expert_count": 4, "expert_used_count": 2,
             "attention.q_lora_rank": 8, "attention.kv_lora_rank": 8, "leading_dense_block_count": 0,
             "context_length": 64}
    old = {k[len(arch) + 1:]: v for k, t, v in meta if k.startswith(arch + ".") and t in (4, 5, 10, 11)}
    meta = [(k, t, small.get(k[len(arch) + 1:], v) if k.startswith(arch + ".") and t in (4, 5, 10, 11) else v)
            for k, t, v in meta]
    # Each old size maps to its new one; the vocabulary keeps its size (the tokenizer is real).
    sizes = {}
    for key, new in small.items():
        if key in old and old[key] not in sizes and old[key] != vocab: sizes[old[key]] = new
    lora = {old.get("attention.q_lora_rank"), old.get("attention.kv_lora_rank")}
    out = []
    for name, dims, t in tensors:
        if name.startswith("blk.") and not name.startswith("blk.0."): continue
        nd = []
        for d in dims:
            if d == vocab: nd.append(d)
            elif d in sizes: nd.append(sizes[d])
            elif d in lora: nd.append(8)
            elif d == 1: nd.append(1)
            else: nd.append(max(2, min(d, 8)))
        out.append((name, nd, t))
    write_gguf(meta, out, dest)

def safetensors(tensors, metadata=None):
    header, data = {}, bytearray()
    fmt = {"F32": ("f", 4), "F16": ("e", 2), "BF16": ("H", 2), "I64": ("q", 8), "U8": ("B", 1)}
    for name, dtype, shape in tensors:
        n = 1
        for d in shape: n *= d
        code, size = fmt[dtype]
        begin = len(data)
        data.extend(struct.pack("<%d%s" % (n, code), *[(i % 5) for i in range(n)]))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, len(data)]}
    if metadata is not None: header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(data)

REQUESTS = [
    (1, {"model": "m", "messages": [{"role": "user", "content": "Hello!"}]}),
    (1, {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                      {"role": "assistant", "content": None}, {"role": "developer", "content": "x"}],
         "max_completion_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": -1, "stop": ["\n", "END"],
         "stream": True, "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 5, "n": 1,
         "ignore_eos": False, "return_token_ids": True}),
    (1, {"messages": [], "max_tokens": 0}),
    (0, {"model": "m", "prompt": "Once upon a time", "max_tokens": 8, "logprobs": 2, "stop": "."}),
    (0, {"prompt": [1, 2, 3, 4], "max_tokens": 1e3, "temperature": 0}),
    (0, {"prompt": ["text"], "seed": 9223372036854775807, "top_k": -1}),
]

def write(dir_, name, data):
    os.makedirs(dir_, exist_ok=True)
    open(os.path.join(dir_, name), "wb").write(data)

def main():
    corpus = os.path.join(ROOT, "Fuzz", "corpus")
    fixtures = os.path.join(ROOT, "Tests", "Fixtures")
    for p in sorted(glob.glob(os.path.join(fixtures, "gguf", "*.gguf"))):
        os.makedirs(os.path.join(corpus, "GGUF"), exist_ok=True)
        shrink(p, os.path.join(corpus, "GGUF", "seed-" + os.path.basename(p)))
    st = os.path.join(corpus, "Safetensors")
    write(st, "seed-f32", b"\0" + safetensors([("a.weight", "F32", [2, 3]), ("b", "F16", [4]), ("c", "BF16", [1, 2]), ("d", "I64", []), ("e", "U8", [0])], {"format": "pt"}))
    write(st, "seed-empty", b"\0" + safetensors([]))
    write(st, "seed-index", b"\1" + json.dumps({"metadata": {"total_size": 8}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "sub/model-00002-of-00002.safetensors"}}).encode())
    for p in sorted(glob.glob(os.path.join(fixtures, "*", "config.json"))):
        write(os.path.join(corpus, "Config"), "seed-" + os.path.basename(os.path.dirname(p)), open(p, "rb").read())
    tok = os.path.join(corpus, "Tokenizer")
    write(tok, "seed-deepseek-json", b"\0" + open(os.path.join(fixtures, "deepseek_tokenizer", "tokenizer.json"), "rb").read())
    cases = json.load(open(os.path.join(fixtures, "smollm2", "tokenizer.json")))["cases"]
    for i, c in enumerate(cases[:12]):
        text = c.get("text", "") if isinstance(c, dict) else str(c)
        write(tok, "seed-text-%d" % i, bytes([1 + i % 5]) + text.encode())
    ct = os.path.join(corpus, "ChatTemplate")
    for i, p in enumerate(sorted(glob.glob(os.path.join(fixtures, "chat_templates", "*.jinja")))):
        write(ct, "seed-template-" + os.path.basename(p), b"\0\1" + open(p, "rb").read())
        write(ct, "seed-messages-%d" % i, bytes([1, i]) + b"You are a bot.\0Hi <|im_start|>\0Hello {{ x }}\0\xe4\xb8\x96\xe7\x95\x8c")
    for i, (mode, body) in enumerate(REQUESTS):
        write(os.path.join(corpus, "Request"), "seed-%d" % i, bytes([mode]) + json.dumps(body).encode())

if __name__ == "__main__":
    main()
