#!/usr/bin/env python3
"""Random-weight Llama-architecture GGUF of a named shape, with a real vocabulary,
for benchmarks (bench/engine_matrix.sh): speed depends on the shape and the
weight type, not on what the weights say.

    python3 tools/make_dummy_gguf.py SHAPE OUT.gguf [--vocab-from FILE] [--dtype f32|f16]
    python3 tools/make_dummy_gguf.py --list

The vocabulary (every tokenizer.* key) is copied from --vocab-from (default:
the bundled SmolLM2 file, 49152 tokens, byte-level BPE), so pdserve and
llama.cpp both load the result and tokenize alike. Weights are N(0, 0.02)
from a fixed seed, norms 1, so activations stay finite through every layer;
the output is then quantized with llama-quantize. Tensors are written one at
a time, so memory stays near one tensor even for 8B shapes.

Needs the `gguf` and `numpy` packages (scripts/install_deps.sh).
"""
import argparse
import os
import sys

import numpy as np
import gguf

# Hyperparameters of the public models (config.json of each); the vocabulary
# is whatever --vocab-from carries, so the embedding matrices are smaller than
# the real ones for Llama 3 (49152 rows instead of 128256).
SHAPES = {
    "smollm2-135m": dict(n_layers=30, n_embd=576, n_heads=9, n_kv_heads=3, n_ff=1536,
                         rope_base=100000.0, n_ctx=8192, tied=True),
    "llama-3.2-1b": dict(n_layers=16, n_embd=2048, n_heads=32, n_kv_heads=8, n_ff=8192,
                         rope_base=500000.0, n_ctx=131072, tied=True),
    "llama-3-8b": dict(n_layers=32, n_embd=4096, n_heads=32, n_kv_heads=8, n_ff=14336,
                       rope_base=500000.0, n_ctx=8192, tied=False),
}

DEFAULT_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models",
                             "SmolLM2-135M-Instruct.Q4_1.gguf")


def copy_tokenizer(reader, writer):
    n_vocab = None
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if name == "tokenizer.ggml.tokens":
            n_vocab = len(value)
        writer.add_key_value(name, value, vtype, sub_type=sub)
    if n_vocab is None:
        raise SystemExit(f"make_dummy_gguf: no tokenizer.ggml.tokens in the vocabulary file")
    return n_vocab


def tensor_plan(s, n_vocab):
    """(name, (n_out, n_in) or (n,), is_norm) in the order convert_hf_to_gguf writes."""
    d, hd = s["n_embd"], s["n_embd"] // s["n_heads"]
    kv = s["n_kv_heads"] * hd
    plan = [("token_embd.weight", (n_vocab, d), False)]
    for i in range(s["n_layers"]):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (d,), True),
            (b + "attn_q.weight", (d, d), False),
            (b + "attn_k.weight", (kv, d), False),
            (b + "attn_v.weight", (kv, d), False),
            (b + "attn_output.weight", (d, d), False),
            (b + "ffn_norm.weight", (d,), True),
            (b + "ffn_gate.weight", (s["n_ff"], d), False),
            (b + "ffn_up.weight", (s["n_ff"], d), False),
            (b + "ffn_down.weight", (d, s["n_ff"]), False),
        ]
    plan.append(("output_norm.weight", (d,), True))
    if not s["tied"]:
        plan.append(("output.weight", (n_vocab, d), False))
    return plan


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", nargs="?", choices=sorted(SHAPES))
    ap.add_argument("out", nargs="?")
    ap.add_argument("--vocab-from", default=DEFAULT_VOCAB)
    ap.add_argument("--dtype", choices=["f32", "f16"], default=None,
                    help="matrix type (default f32; f16 for llama-3-8b, whose F32 file is 30 GB)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--list", action="store_true", help="print the shapes and exit")
    a = ap.parse_args()
    if a.list:
        for name, s in SHAPES.items():
            print(name, s)
        return 0
    if not a.shape or not a.out:
        ap.error("SHAPE and OUT are required")
    s = SHAPES[a.shape]
    dtype = a.dtype or ("f16" if a.shape == "llama-3-8b" else "f32")
    np_dtype = np.float16 if dtype == "f16" else np.float32
    qtype = gguf.GGMLQuantizationType.F16 if dtype == "f16" else gguf.GGMLQuantizationType.F32

    reader = gguf.GGUFReader(a.vocab_from)
    tmp = a.out + ".tmp"
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name(f"dummy {a.shape} (random weights)")
    writer.add_block_count(s["n_layers"])
    writer.add_context_length(s["n_ctx"])
    writer.add_embedding_length(s["n_embd"])
    writer.add_feed_forward_length(s["n_ff"])
    writer.add_head_count(s["n_heads"])
    writer.add_head_count_kv(s["n_kv_heads"])
    writer.add_rope_freq_base(s["rope_base"])
    writer.add_rope_dimension_count(s["n_embd"] // s["n_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    n_vocab = copy_tokenizer(reader, writer)
    writer.add_vocab_size(n_vocab)

    plan = tensor_plan(s, n_vocab)
    for name, shape, is_norm in plan:
        t_dtype, t_q = (np.float32, gguf.GGMLQuantizationType.F32) if is_norm else (np_dtype, qtype)
        nbytes = int(np.prod(shape)) * np.dtype(t_dtype).itemsize
        writer.add_tensor_info(name, shape, np.dtype(t_dtype), nbytes, raw_dtype=t_q)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(a.seed)
    n_params = 0
    for name, shape, is_norm in plan:
        if is_norm:
            t = np.ones(shape, dtype=np.float32)
        else:
            t = rng.standard_normal(shape, dtype=np.float32)
            t *= 0.02
            t = t.astype(np_dtype, copy=False)
        n_params += t.size
        writer.write_tensor_data(t)
    writer.close()
    os.replace(tmp, a.out)
    print(f"make_dummy_gguf: {a.out}: {a.shape}, {n_params / 1e6:.0f}M parameters, {dtype}, "
          f"vocabulary of {n_vocab} from {os.path.basename(a.vocab_from)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
