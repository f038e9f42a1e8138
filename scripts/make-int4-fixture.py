#!/usr/bin/env python3
"""Build Tests/Fixtures/kimi_k2_int4: a tiny Kimi-K2-Thinking-shaped model whose routed experts are
compressed-tensors `pack-quantized` INT4 (symmetric, group size 32), plus reference logits.

Usage:  /path/to/venv/bin/python scripts/make-int4-fixture.py [--out Tests/Fixtures]

The venv needs what scripts/make-fixtures.py needs (scripts/requirements-fixtures.txt) plus the
PyPI package `compressed-tensors` (tested with 0.20.1); e.g.
  python3 -m venv /tmp/ctenv && /tmp/ctenv/bin/pip install -r scripts/requirements-fixtures.txt compressed-tensors

What it writes, as Kimi K2 Thinking ships its checkpoint:
  * config.json: the published Kimi-K2 style of make-fixtures.py's kimi_k2 plus a `quantization_config`
    made by compressed-tensors' own QuantizationConfig (quant_method compressed-tensors, format
    pack-quantized, one group of INT4 symmetric group-32 weights targeting Linear, and an ignore list
    for everything but the routed experts, as K2 Thinking's);
  * model.safetensors: bf16 for every tensor but the routed experts (e_score_correction_bias float32),
    and for each routed expert projection `weight_packed` (int32), `weight_scale` (bf16) and
    `weight_shape` (int64), written by compressed-tensors' PackedQuantizationCompressor.compress;
  * reference.json: the same format as the other fixtures (Tests/Fixtures/README.md).

The reference is a DEQUANTIZE-THEN-RUN reference: transformers 5.23 with compressed-tensors 0.20.1
loads this checkpoint (from_pretrained) and decompresses the experts exactly, but keeps them in bf16
and so computes the routed experts in bf16 (its logits were 0.031 from the float32 reference), so
the logits come from transformers' DeepseekV3ForCausalLM (float32, eager) whose routed experts hold,
in float32, the weights compressed-tensors' own PackedQuantizationCompressor.decompress returns for
the packed tensors in the file. The script checks that those decompressed weights equal scale * q.

Scales: compressed-tensors' calculate_qparams (absmax / 7.5 per group of 32), then rounded to 5
significant bits before the bf16 cast. compressed-tensors dequantizes in the scale's dtype
(bf16(q * scale)); with at most 5 significant bits in the scale and 3 in |q| <= 8 the product is
exact in bf16, so the file means the same weights to compressed-tensors and to Farside, which
multiplies in fp32.
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(HERE, "make-fixtures.py"))
mf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mf)

import compressed_tensors  # noqa: E402
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402

NAME = "kimi_k2_int4"
GROUP = 32
SEED = 9000
# Kimi K2 Thinking's ignore list keeps attention, shared experts, dense MLPs and the LM head in bf16.
IGNORE = ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", r"re:.*mlp\.(gate|up|gate_up|down)_proj.*"]


def scheme():
    return QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP),
    )


def config():
    c = dict(mf.DSV3_COMMON)
    c["moe_intermediate_size"] = 64  # two groups of 32 along down_proj's rows as well as gate/up's
    return DeepseekV3Config(
        **c,
        q_lora_rank=None,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=2.827,
        rope_theta=mf.KIMI_ROPE_THETA,
        rope_scaling=dict(mf.KIMI_ROPE_SCALING),
        rope_interleave=True,
        num_nextn_predict_layers=0,
    )


def round_significant(x, bits):
    """x rounded to `bits` significant bits (round to nearest)."""
    m, e = torch.frexp(x)
    return torch.ldexp(torch.round(m * (1 << bits)) / (1 << bits), e)


def quantize_expert_weight(w):
    """compressed-tensors' packed tensors for fp32 weight w [out, in] and the weight they decompress to."""
    s = scheme()
    g = w.reshape(w.shape[0], -1, GROUP)
    scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), s.weights)
    scale = round_significant(scale.float(), 5).to(torch.bfloat16)
    packed = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, s)
    out = PackedQuantizationCompressor.decompress(dict(packed), s)
    deq = out["weight"]
    assert deq.dtype == torch.bfloat16, deq.dtype
    q = unpack_from_int32(packed["weight_packed"], 4, packed["weight_shape"]).float()
    exact = q.reshape(g.shape) * scale.float().unsqueeze(-1)
    assert torch.equal(deq.float(), exact.reshape(w.shape)), "bf16 dequantization is not exact"
    return {k: packed[k] for k in ("weight_packed", "weight_scale", "weight_shape")}, deq.float()


def expert_modules(model):
    for li, mlp in mf.moe_layers(model):
        for e in range(model.config.n_routed_experts):
            yield li, mlp, e


def quantize_experts_(model):
    """Replaces every routed expert weight by its INT4 round trip; returns the packed tensors by module name."""
    packed = {}
    inter = model.config.moe_intermediate_size
    with torch.no_grad():
        for li, mlp, e in expert_modules(model):
            ex = mlp.experts
            gate, up = ex.gate_up_proj[e][:inter], ex.gate_up_proj[e][inter:]
            down = ex.down_proj[e]
            for proj, w in (("gate_proj", gate), ("up_proj", up), ("down_proj", down)):
                tensors, deq = quantize_expert_weight(w.detach().clone().float())
                w.copy_(deq)
                packed[f"model.layers.{li}.mlp.experts.{e}.{proj}"] = tensors
    return packed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "Tests", "Fixtures"))
    args = ap.parse_args()
    print(f"transformers {mf.transformers.__version__}, torch {torch.__version__}, "
          f"compressed-tensors {compressed_tensors.__version__}", file=sys.stderr)
    for attempt in range(mf.MAX_ATTEMPTS):
        seed = SEED + attempt
        torch.manual_seed(seed)
        model = mf.build_model(DeepseekV3ForCausalLM, config()).eval()
        mf.randomize_(model, seed)
        mf.round_to_(model, torch.bfloat16)
        packed = quantize_experts_(model)
        ref, problems, stats = mf.compute_reference(model, seed)
        if not problems:
            break
        print(f"  {NAME}: seed {seed} rejected ({problems[0]})", file=sys.stderr)
    else:
        raise RuntimeError("no seed without near-ties")

    out_dir = os.path.join(args.out, NAME)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    mf.save_model(model, torch.bfloat16, out_dir)
    # Routed experts: the packed tensors instead of the bf16 weights save_pretrained wrote.
    path = os.path.join(out_dir, "model.safetensors")
    tensors = load_file(path)
    for module, t in packed.items():
        w = tensors.pop(module + ".weight")
        assert torch.equal(w.float(), PackedQuantizationCompressor.decompress(dict(t), scheme())["weight"].float())
        for k, v in t.items():
            tensors[f"{module}.{k}"] = v.contiguous()
    save_file(tensors, path, metadata={"format": "pt"})

    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as f:
        published = mf.rewrite_kimi_published(json.load(f))
    qc = QuantizationConfig(config_groups={"group_0": scheme()}, format="pack-quantized",
                            quantization_status="compressed", ignore=IGNORE)
    published["quantization_config"] = qc.to_dict()
    published["torch_dtype"] = "bfloat16"
    with open(cfg_path, "w") as f:
        f.write(json.dumps(published, indent=2, sort_keys=True) + "\n")

    # The file read back through compressed-tensors gives the weights the reference ran with.
    back = load_file(path)
    for module in packed:
        li, e, proj = module.split(".")[2], int(module.split(".")[5]), module.split(".")[6]
        d = PackedQuantizationCompressor.decompress(
            {k: back[f"{module}.{k}"] for k in ("weight_packed", "weight_scale", "weight_shape")}, scheme())["weight"]
        ex = model.model.layers[int(li)].mlp.experts
        inter = model.config.moe_intermediate_size
        w = {"gate_proj": ex.gate_up_proj[e][:inter], "up_proj": ex.gate_up_proj[e][inter:], "down_proj": ex.down_proj[e]}[proj]
        assert torch.equal(d.float(), w.float()), module

    mf.write_reference(os.path.join(out_dir, "reference.json"), "DeepseekV3ForCausalLM", "bfloat16+int4", ref)
    stats.pop("expert_hist", None)
    print(f"  {NAME}: seed {seed}; " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in stats.items()), file=sys.stderr)
    mf.list_files(args.out, [NAME])


if __name__ == "__main__":
    main()
