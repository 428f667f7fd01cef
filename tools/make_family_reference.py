#!/usr/bin/env python3
"""Tiny random Llama 3.1-style, Qwen2 and Qwen3 models as GGUF (F32) plus the
logits that Hugging Face transformers (PyTorch, float32) computes for them,
for tests/unit/engine/family_reference_test.cc.

    pip install gguf numpy torch transformers
    python3 tools/make_family_reference.py [out_dir]

The GGUF files are written here with the `gguf` package, tensor names and
metadata as llama.cpp's convert_hf_to_gguf.py writes them for these
architectures: Qwen keeps Q and K as trained (NeoX-style RoPE); Llama's Q
and K rows are permuted for ggml's interleaved RoPE, and its llama3 RoPE
scaling becomes per-dimension divisors in rope_freqs.weight. The
vocabulary is byte-level BPE: the 256 GPT-2 byte symbols, a few merges and
Qwen's special tokens, with the `qwen2` pre-tokenizer, so the engine's
tokenizer loads it as it loads a real Qwen file. The logits come from
transformers' own Qwen2/Qwen3 modules, which we did not write.
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
import gguf

MERGES = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SEQUENCES = [
    [1, 2, 3, 4, 5, 6, 7, 8],
    [260, 100, 37, 200, 255, 0, 12, 99, 150, 263, 42, 7],
    [265, 44, 44, 44, 120, 121, 122, 3, 9, 27],
]


def byte_symbols():
    """GPT-2's bytes_to_unicode table: 256 printable symbols, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, (chr(c) for c in cs)))
    return [table[b] for b in range(256)]


def vocabulary():
    tokens = byte_symbols() + ["".join(m.split(" ")) for m in MERGES] + SPECIALS
    types = [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)  # normal, control
    return tokens, types


def make_model(arch, seed):
    tokens, _ = vocabulary()
    common = dict(vocab_size=len(tokens), hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  bos_token_id=len(tokens) - 3, eos_token_id=len(tokens) - 1)
    if arch == "llama":
        # Llama 3.1/3.2: GQA, tied embeddings, llama3 RoPE scaling. A short
        # original context (64) puts dimensions in all three bands (kept,
        # smoothed, divided by the factor) within the test's 12 positions.
        common["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0,
                                     "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 64}
        common.pop("rope_theta")
        cfg = transformers.LlamaConfig(tie_word_embeddings=True, **common)
        cls = transformers.LlamaForCausalLM
    elif arch == "qwen2":
        # Qwen2/2.5: head_dim = hidden / heads, Q/K/V biases, tied embeddings.
        cfg = transformers.Qwen2Config(tie_word_embeddings=True, **common)
        cls = transformers.Qwen2ForCausalLM
    else:
        # Qwen3: head_dim set apart from the width (q_dim 128 != 64), QK-norm,
        # no biases, a separate output matrix.
        cfg = transformers.Qwen3Config(head_dim=32, tie_word_embeddings=False, **common)
        cls = transformers.Qwen3ForCausalLM
    torch.manual_seed(seed)
    model = cls(cfg).to(torch.float32).eval()
    with torch.no_grad():
        # Random init leaves biases at zero and norms at one; make every
        # parameter matter.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return cfg, model


HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def permute_for_ggml_rope(w, n_heads):
    """Rows of each head from [first halves | second halves] to interleaved
    pairs, so ggml's (2i, 2i+1) RoPE equals HF's rotate_half (i, i + d/2)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]) \
            .swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(rope, head_dim):
    """Per-pair divisors of the RoPE frequencies for rope_type llama3."""
    factor = rope["factor"]
    low, high = rope["low_freq_factor"], rope["high_freq_factor"]
    old_ctx = rope["original_max_position_embeddings"]
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * np.pi * rope["rope_theta"] ** (i / head_dim)
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf(path, arch, cfg, model):
    tokens, types = vocabulary()
    w = gguf.GGUFWriter(path, arch=arch)
    w.add_name(f"tiny-random-{arch}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    # transformers 5 keeps rope_theta in rope_parameters, 4.x on the config.
    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": cfg.rope_theta}
    w.add_rope_freq_base(rope["rope_theta"])
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    if rope.get("rope_type", "default") == "llama3":
        w.add_rope_dimension_count(head_dim)
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(rope, head_dim))
    else:
        assert rope.get("rope_type", "default") == "default", rope
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if arch == "qwen3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe" if arch == "llama" else "qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_add_bos_token(False)
    for name, p in model.state_dict().items():
        a = p.detach().numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            out = "output.weight"
        else:
            parts = name.split(".")  # model.layers.<i>.<rest>
            assert parts[:2] == ["model", "layers"], name
            out = f"blk.{parts[2]}." + HF_TO_GGUF[".".join(parts[3:])]
            if arch == "llama" and out.endswith("attn_q.weight"):
                a = permute_for_ggml_rope(a, cfg.num_attention_heads)
            elif arch == "llama" and out.endswith("attn_k.weight"):
                a = permute_for_ggml_rope(a, cfg.num_key_value_heads)
        w.add_tensor(out, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/data/reference/families"
    os.makedirs(out_dir, exist_ok=True)
    for seed, arch in enumerate(["qwen2", "qwen3", "llama"]):
        cfg, model = make_model(arch, 1000 + seed)
        write_gguf(os.path.join(out_dir, f"tiny_{arch}.gguf"), arch, cfg, model)
        cases = []
        for seq in SEQUENCES:
            with torch.no_grad():
                logits = model(torch.tensor([seq])).logits[0].numpy()
            cases.append({"tokens": seq,
                          "logits": [[float(f"{v:.6g}") for v in row] for row in logits]})
        with open(os.path.join(out_dir, f"tiny_{arch}_logits.json"), "w") as f:
            json.dump({"architecture": arch, "reference": "transformers " + transformers.__version__
                       + ", torch " + torch.__version__ + ", float32, eager attention",
                       "cases": cases}, f, separators=(",", ":"))
            f.write("\n")


if __name__ == "__main__":
    main()
