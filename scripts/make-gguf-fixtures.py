#!/usr/bin/env python3
"""GGUF copies of the tiny reference fixtures, written by llama.cpp's own converter.

Usage:  python3 scripts/make-gguf-fixtures.py   (a venv with torch, transformers, numpy, sentencepiece)
        [--llama-cpp DIR] [--only name,name]

For each fixture in FIXTURES, runs llama.cpp's `convert_hf_to_gguf.py` on Tests/Fixtures/<name>/
(config.json + safetensors, as written by scripts/make-fixtures.py) and writes
Tests/Fixtures/gguf/<name>.gguf. The Swift tests load these files and compare their logits with the
same fixture loaded from safetensors and with reference.json (transformers' logits), so the GGUF
loader is checked against llama.cpp's converter rather than against our own reading of it.

Which llama.cpp: the tree vendored in the PyPI sdist of llama-cpp-python 0.3.36
(`vendor/llama.cpp`), found at .build/peer/llama_cpp_python-0.3.36 (scripts/
bench-smollm2.sh fetches that sdist), or given with --llama-cpp. The converter runs with that tree's
own `gguf-py` first on PYTHONPATH, so converter and gguf library match (the venv's `gguf` package
is not used). No llama.cpp code is copied into this repository.

The vocabulary: the fixtures have vocab 256 and no tokenizer files, and every converter class reads
a tokenizer in `set_vocab` (and for gpt2-style vocabularies refuses any pre-tokenizer whose hash it
does not know). So this script loads the converter as a module and replaces `set_vocab` on the one
model class it picks with a function that writes a minimal byte-level vocabulary:
tokenizer.ggml.model "gpt2", pre "default", the 256 GPT-2 byte tokens (token i = byte i through
GPT-2's bytes_to_unicode), all NORMAL, no merges (gguf-py drops empty arrays). Nothing else in the
converter is changed. The vocabulary only gives the token count; Farside's GGUF loader reads
vocab_size from it where the architecture writes no `<arch>.vocab_size`. (llama.cpp itself would
refuse the files for want of merges; they are test inputs for weights and metadata, not for
tokenization.)

Output types: the fixture's own dtype (F32; BF16 for llama; F16 for the Qwen3-MoE ones), so the
F32, F16 and BF16 GGUF paths are all covered. Either way every value in the GGUF equals
the value in the safetensors file. 1-D tensors, norms and routers are F32 whatever the type (the
converter's rule).

Deterministic: the converter is given a fixed --model-name and the fixture directory itself (no
temporary paths reach the metadata); a rerun gives byte-identical files (printed sha256).
"""

import argparse
import hashlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES_DIR = os.path.join(ROOT, "Tests", "Fixtures")
OUT_DIR = os.path.join(FIXTURES_DIR, "gguf")
PEER = "llama_cpp_python-0.3.36/vendor/llama.cpp"
CANDIDATES = [os.path.join(ROOT, ".build", "peer", PEER)]

# fixture -> converter --outtype
FIXTURES = {
    "llama": "bf16",
    "llama_untied": "f32",
    "mixtral": "f32",
    "qwen2": "f32",
    "qwen2_moe": "f32",
    "qwen3_moe": "f16",
    "qwen3_moe_sparse": "f16",
    "deepseek_v3": "f32",
    "kimi_k2": "f32",
}

# Fixtures the converter refuses, with the error it gives. They are still run (so a converter that
# starts accepting them is noticed) but no file is written for them.
REFUSED = {
    # Qwen3MoeModel's tensor map has no dense-MLP names, so the dense layer 1 (mlp_only_layers=[1])
    # cannot be named; qwen3_moe_sparse is the all-sparse Qwen3-MoE fixture converted instead.
    "qwen3_moe": "Can not map tensor 'model.layers.1.mlp.down_proj.weight'",
}

# Run in a child process (one per fixture, so no converter state leaks between fixtures):
# argv = [llama.cpp dir, fixture dir, out file, outtype, model name].
CHILD = r'''
import importlib.util, os, sys
llama_cpp, src, out, outtype, name = sys.argv[1:6]

def bytes_to_unicode():
    # GPT-2's byte -> printable character table (openai/gpt-2 encoder.py).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))

def tiny_vocab(self):
    import gguf
    table = bytes_to_unicode()
    n = self.hparams["vocab_size"]
    assert n == 256, n
    self.gguf_writer.add_tokenizer_model("gpt2")
    self.gguf_writer.add_tokenizer_pre("default")
    self.gguf_writer.add_token_list([table[i] for i in range(256)])
    self.gguf_writer.add_token_types([gguf.TokenType.NORMAL] * 256)

spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", os.path.join(llama_cpp, "convert_hf_to_gguf.py"))
conv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conv)
original = conv.get_model_class

def get_model_class(*args, **kwargs):
    cls = original(*args, **kwargs)
    cls.set_vocab = tiny_vocab
    return cls

conv.get_model_class = get_model_class
sys.argv = ["convert_hf_to_gguf.py", src, "--outfile", out, "--outtype", outtype, "--model-name", name]
conv.main()
'''


def find_llama_cpp(given):
    for d in ([given] if given else CANDIDATES):
        if d and os.path.isfile(os.path.join(d, "convert_hf_to_gguf.py")):
            return d
    sys.exit("llama.cpp tree not found (looked in %s); run scripts/bench-smollm2.sh once to fetch the "
             "llama-cpp-python 0.3.36 sdist, or pass --llama-cpp DIR" % ", ".join(CANDIDATES))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", default=None)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    llama_cpp = find_llama_cpp(args.llama_cpp)
    os.makedirs(OUT_DIR, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(llama_cpp, "gguf-py"), llama_cpp])
    env.pop("NO_LOCAL_GGUF", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    names = [n for n in FIXTURES if not args.only or n in args.only.split(",")]
    for n in names:
        out = os.path.join(OUT_DIR, n + ".gguf")
        if os.path.exists(out):
            os.remove(out)
        r = subprocess.run([sys.executable, "-c", CHILD, llama_cpp, os.path.join(FIXTURES_DIR, n), out,
                            FIXTURES[n], "farside-fixture-" + n], env=env, capture_output=True, text=True)
        if n in REFUSED:
            if r.returncode == 0 or REFUSED[n] not in r.stderr:
                sys.stderr.write(r.stdout + r.stderr)
                sys.exit(f"{n}: expected the converter to refuse it with {REFUSED[n]!r}; it did not")
            if os.path.exists(out):
                os.remove(out)
            print(f"{n}: refused by the converter ({REFUSED[n]}); no file written", file=sys.stderr)
            continue
        if r.returncode != 0:
            sys.stderr.write(r.stdout + r.stderr)
            sys.exit(f"{n}: convert_hf_to_gguf.py failed (exit {r.returncode})")
    for n in names:
        if n in REFUSED:
            continue
        p = os.path.join(OUT_DIR, n + ".gguf")
        with open(p, "rb") as f:
            h = hashlib.sha256(f.read()).hexdigest()[:16]
        print(f"gguf/{n}.gguf\t{os.path.getsize(p)}\t{h}")


if __name__ == "__main__":
    main()
