#!/usr/bin/env python3
"""Writes a copy of a GGUF model with every tensor dequantized to F32 by the
`gguf` package (gguf.quants, ggml's own Python reference), metadata copied.

    python3 tools/dequantize_gguf.py IN.gguf OUT.f32.gguf

bench/top1_agreement.sh uses the F32 dequantization of the bundled SmolLM2
Q4_1 file as the truth every quantized copy approximates: it is the real
model's function exactly as the Q4_1 file defines it, and llama-quantize
makes each type from it as it would from a converted F32 checkpoint.

Needs the `gguf` and `numpy` packages (scripts/install_deps.sh).
"""
import os
import sys

import gguf
import numpy as np
from gguf.quants import dequantize


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    reader = gguf.GGUFReader(src)
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise SystemExit(f"dequantize_gguf: {src}: no general.architecture")
    tmp = dst + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch_field.contents())
    for name, field in reader.fields.items():
        # GGUF.* are the reader's header pseudo-fields; the writer writes the
        # architecture itself; the file type changes.
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    counts = {}
    for t in reader.tensors:
        qtype = gguf.GGMLQuantizationType(t.tensor_type)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        data = dequantize(t.data, qtype).astype(np.float32, copy=False)
        # ggml order (ne0 first) reversed is numpy's order.
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        data = data.reshape(shape)
        if not np.all(np.isfinite(data)):
            raise SystemExit(f"dequantize_gguf: {t.name}: non-finite values after dequantization")
        writer.add_tensor(t.name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dst)
    print(f"dequantize_gguf: {dst}: {len(reader.tensors)} tensors to F32 (from "
          f"{', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
