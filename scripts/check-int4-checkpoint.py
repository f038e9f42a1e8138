#!/usr/bin/env python3
"""Check a checkpoint `farside quantize` wrote against the PyPI compressed-tensors package.

Usage:  /path/to/venv/bin/python scripts/check-int4-checkpoint.py OUT_DIR [SOURCE_DIR]
(the venv of scripts/make-int4-fixture.py: torch, safetensors, compressed-tensors)

1. config.json's quantization_config parses as compressed-tensors' QuantizationConfig, and its
   ignore list leaves exactly the routed experts quantized;
2. every `*.weight_packed` decompresses through compressed-tensors' own
   PackedQuantizationCompressor.decompress to exactly the weight Farside computes with
   (scale * q in float32, from the same packed words and bf16 scales);
3. with SOURCE_DIR (the float checkpoint quantized): each weight is within half a quantization
   step of the original (compressed-tensors' rounding), and every other tensor is unchanged.
Prints one JSON line; exits 1 on any failure.
"""

import glob
import json
import os
import re
import sys

import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationConfig
from safetensors.torch import load_file


def load_dir(d):
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        out.update(load_file(f))
    return out


def main():
    out_dir = sys.argv[1]
    src_dir = sys.argv[2] if len(sys.argv) > 2 else None
    with open(os.path.join(out_dir, "config.json")) as f:
        qc = QuantizationConfig.model_validate(json.load(f)["quantization_config"])
    scheme = qc.config_groups["group_0"]
    ignore = [re.compile(p[3:]) for p in qc.ignore if p.startswith("re:")]
    t = load_dir(out_dir)
    src = load_dir(src_dir) if src_dir else None
    modules = sorted(k[: -len(".weight_packed")] for k in t if k.endswith(".weight_packed"))
    failures, worst_step = [], 0.0
    for m in modules:
        if any(r.match(m) for r in ignore):
            failures.append(f"{m}: packed but ignored")
        packed, scale, shape = t[m + ".weight_packed"], t[m + ".weight_scale"], t[m + ".weight_shape"]
        w = PackedQuantizationCompressor.decompress(
            {"weight_packed": packed, "weight_scale": scale, "weight_shape": shape}, scheme)["weight"]
        # Farside's values: nibble i of a row's 32-bit words, minus 8, times the group's scale, in fp32.
        words = packed.view(torch.uint8).to(torch.int32)
        q = torch.stack((words & 15, words >> 4), -1).reshape(packed.shape[0], -1) - 8
        exact = (q.reshape(q.shape[0], -1, 32).float() * scale.float().unsqueeze(-1)).reshape(q.shape)
        if not torch.equal(w.float(), exact):
            failures.append(f"{m}: compressed-tensors' decompression differs from scale * q")
        if src is not None:
            x = src[m + ".weight"].float()
            step = (x - exact).abs().reshape(x.shape[0], -1, 32) / scale.float().unsqueeze(-1)
            worst_step = max(worst_step, step.max().item())
    if src is not None:
        for k, v in src.items():
            if any(k == m + ".weight" for m in modules):
                continue
            if k not in t or not torch.equal(t[k], v):
                failures.append(f"{k}: not copied unchanged")
        if worst_step > 0.5 + 1e-6:
            failures.append(f"a weight is {worst_step} quantization steps from its original")
    print(json.dumps({"packed_modules": len(modules), "failures": failures[:10],
                      "max_error_in_steps": worst_step if src is not None else None}))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
