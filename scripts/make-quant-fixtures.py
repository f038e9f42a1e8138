#!/usr/bin/env python3
"""Records ggml block-format test data for Farside's quantized kernels.

For each of Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K writes Tests/Fixtures/quant/<TYPE>.bin: random
blocks (random bytes with every fp16 scale field replaced by a sane small value) followed by the
fp32 values gguf-py's numpy dequantizer (the reference port of ggml's dequantize_row_*) decodes
them to. Layout: u32 block count, then the raw blocks, then blockcount * blockvalues float32.
Run: python scripts/make-quant-fixtures.py  (needs `gguf` and `numpy`: requirements-fixtures.txt)
"""
import os
import struct
import numpy as np
from gguf import GGMLQuantizationType as T, quants

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "Fixtures", "quant")
rng = np.random.default_rng(20261123)
# (type, values per block, bytes per block, byte offsets of fp16 scale fields)
TYPES = [
    (T.Q8_0, 32, 34, [0]),
    (T.Q4_0, 32, 18, [0]),
    (T.Q4_1, 32, 20, [0, 2]),
    (T.Q4_K, 256, 144, [0, 2]),
    (T.Q5_K, 256, 176, [0, 2]),
    (T.Q6_K, 256, 210, [208]),
]
BLOCKS = 24


def main():
    os.makedirs(OUT, exist_ok=True)
    for qtype, n, size, halves in TYPES:
        raw = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
        for off in halves:
            # Scales of either sign and a few magnitudes, as real files have (mins are stored positive
            # and subtracted, but the decoder must not care).
            vals = (rng.uniform(-1, 1, BLOCKS) * 10.0 ** rng.integers(-4, 0, BLOCKS)).astype(np.float16)
            raw[:, off:off + 2] = vals.view(np.uint8).reshape(BLOCKS, 2)
        ref = quants.dequantize(raw.reshape(1, -1), qtype).astype(np.float32).reshape(-1)
        assert ref.size == BLOCKS * n and np.all(np.isfinite(ref))
        with open(os.path.join(OUT, f"{qtype.name}.bin"), "wb") as f:
            f.write(struct.pack("<I", BLOCKS))
            f.write(raw.tobytes())
            f.write(ref.astype("<f4").tobytes())
        print(qtype.name, BLOCKS, "blocks")


if __name__ == "__main__":
    main()
