#!/usr/bin/env python3
"""Writes tests/data/reference/quants/quants.gguf: blocks of every ggml type
pdserve may read, with gguf-py's dequantization of each, for
tests/unit/gguf/quant_reference_test.cc.

The reference is the `gguf` package (pip install gguf numpy), which ggml's
authors maintain separately from the C code: its quantize() makes real
blocks from random floats, and for every type we also write blocks of
random bytes (with finite f16 scales), which exercises every bit of the
layout. For each block tensor `<type>.<kind>` (kind = quantized | random),
the F32 tensor `<type>.<kind>.expected` holds gguf.quants.dequantize's output.
The file itself is written by gguf-py's GGUFWriter, with metadata of every
GGUF value type, so the test also checks the engine's reader against it.

Regenerate: python3 tools/make_quant_reference.py [out.gguf]
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

ROWS, COLS = 4, 256  # 1024 elements: four Q*_K super-blocks per row

# Byte offsets of the f16 scale fields in each block (random bytes there
# could be inf/NaN, which would only test NaN propagation).
F16_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}
QUANTIZABLE = [Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
RANDOM = [Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
          Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def finite_f16_bits(rng, n):
    """Random f16 bit patterns over the whole finite range, subnormals included."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32)
    exp = (bits >> 10) & 0x1F
    bits = np.where(exp == 0x1F, bits & ~np.uint32(0x4000), bits)  # 0x1f -> 0x0f
    return bits.astype(np.uint16)


def random_blocks(rng, qtype):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = ROWS * COLS // block_size
    if qtype == Q.F16:
        return finite_f16_bits(rng, ROWS * COLS).view(np.uint8).reshape(ROWS, -1)
    if qtype == Q.BF16:
        bits = rng.integers(0, 1 << 16, size=ROWS * COLS, dtype=np.uint32)
        exp = (bits >> 7) & 0xFF
        bits = np.where(exp == 0xFF, bits & ~np.uint32(0x4000), bits)  # no inf/NaN
        return bits.astype(np.uint16).view(np.uint8).reshape(ROWS, -1)
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        raw[:, off:off + 2] = finite_f16_bits(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(ROWS, -1)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/reference/quants/quants.gguf"
    rng = np.random.default_rng(20261203)
    w = gguf.GGUFWriter(out, arch="quantref")
    # Metadata of every value type the reader decodes.
    w.add_uint8("quantref.u8", 200)
    w.add_int8("quantref.i8", -100)
    w.add_uint16("quantref.u16", 60000)
    w.add_int16("quantref.i16", -30000)
    w.add_uint32("quantref.u32", 4000000000)
    w.add_int32("quantref.i32", -2000000000)
    w.add_uint64("quantref.u64", 1 << 40)
    w.add_int64("quantref.i64", -(1 << 40))
    w.add_float32("quantref.f32", 0.15625)
    w.add_float64("quantref.f64", -2.5e-300)
    w.add_bool("quantref.bool", True)
    w.add_string("quantref.str", "gguf-py \u00e9crit \u2713")
    w.add_array("quantref.strs", ["a", "", "\u4e2d\u6587"])
    w.add_array("quantref.ints", [1, -2, 3])
    w.add_string("quantref.gguf_py_version", gguf.__version__ if hasattr(gguf, "__version__") else "?")

    def add(name, blocks, qtype):
        expected = gguf.quants.dequantize(blocks, qtype).astype(np.float32)
        assert expected.shape == (ROWS, COLS), expected.shape
        w.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=qtype)
        w.add_tensor(name + ".expected", expected)

    for qtype in QUANTIZABLE:
        x = (rng.standard_normal((ROWS, COLS)) * rng.uniform(0.01, 3.0, (ROWS, 1))).astype(np.float32)
        add(f"{qtype.name.lower()}.quantized", gguf.quants.quantize(x, qtype), qtype)
    for qtype in RANDOM:
        add(f"{qtype.name.lower()}.random", random_blocks(rng, qtype), qtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
