#include "engine/dummy_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/gguf/gguf_writer.h"
#include "engine/sampler.h"
#include "kernels/quant.h"

namespace pdserve {
namespace {

// GPT-2's byte-to-unicode alphabet: printable bytes map to themselves,
// the rest to code points from U+0100 up.
std::vector<std::string> ByteTokens() {
  std::vector<std::string> out(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    const uint32_t cp = printable ? b : 256 + extra++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    out[b] = s;
  }
  return out;
}

// Uniform weights in [-scale, scale], written to dst (n_out rows of the
// type's row bytes). Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and the K-quants are written
// as random codes with fixed or random scales (fast enough for 8B-parameter
// shapes); the other types go through the reference quantizer.
void QuantizedInto(uint8_t* dst, Rng& rng, kernels::DType type, int64_t n_out, int64_t n_in,
                   float scale) {
  const int64_t row_bytes = kernels::RowBytes(type, n_in);
  const int64_t n_blocks = n_out * n_in / kernels::kQK;
  auto random_bytes = [&](uint8_t* p, int n) {
    for (int i = 0; i < n; i += 8) {
      uint64_t r = rng.Next();
      std::memcpy(p + i, &r, std::min(8, n - i));
    }
  };
  if (type == kernels::DType::kQ4_0) {
    auto* b = reinterpret_cast<kernels::BlockQ4_0*>(dst);
    const uint16_t d = kernels::F32ToF16(scale / 8);
    for (int64_t i = 0; i < n_blocks; ++i) {
      b[i].d = d;
      random_bytes(b[i].qs, sizeof(b[i].qs));
    }
    return;
  }
  if (type == kernels::DType::kQ4_1) {
    auto* b = reinterpret_cast<kernels::BlockQ4_1*>(dst);
    const uint16_t d = kernels::F32ToF16(scale * 2 / 15), m = kernels::F32ToF16(-scale);
    for (int64_t i = 0; i < n_blocks; ++i) {
      b[i].d = d;
      b[i].m = m;
      random_bytes(b[i].qs, sizeof(b[i].qs));
    }
    return;
  }
  if (type == kernels::DType::kQ5_0) {
    auto* b = reinterpret_cast<kernels::BlockQ5_0*>(dst);
    const uint16_t d = kernels::F32ToF16(scale / 16);
    for (int64_t i = 0; i < n_blocks; ++i) {
      b[i].d = d;
      random_bytes(b[i].qh, sizeof(b[i].qh));
      random_bytes(b[i].qs, sizeof(b[i].qs));
    }
    return;
  }
  if (type == kernels::DType::kQ5_1) {
    auto* b = reinterpret_cast<kernels::BlockQ5_1*>(dst);
    const uint16_t d = kernels::F32ToF16(scale * 2 / 31), m = kernels::F32ToF16(-scale);
    for (int64_t i = 0; i < n_blocks; ++i) {
      b[i].d = d;
      b[i].m = m;
      random_bytes(b[i].qh, sizeof(b[i].qh));
      random_bytes(b[i].qs, sizeof(b[i].qs));
    }
    return;
  }
  if (type == kernels::DType::kQ4_K || type == kernels::DType::kQ5_K) {
    // w = d·sc·q - dmin·m with random 6-bit sc in [32, 63] and m = sc·mid/16
    // (dmin = 16·d), so each sub-block spans about ±d·sc·mid around zero.
    const bool q5 = type == kernels::DType::kQ5_K;
    const float mid = q5 ? 15.5f : 7.5f;
    const float d = scale / (63 * mid);
    const uint16_t d16 = kernels::F32ToF16(d), dmin16 = kernels::F32ToF16(16 * d);
    const int64_t n_super = n_out * n_in / kernels::kQKK;
    for (int64_t i = 0; i < n_super; ++i) {
      uint8_t* blk = dst + i * kernels::GetDType(type).type_size;
      uint8_t sc[8], m[8], r[8];
      random_bytes(r, 8);
      for (int j = 0; j < 8; ++j) {
        sc[j] = static_cast<uint8_t>(32 + (r[j] & 31));
        m[j] = static_cast<uint8_t>(std::lround(sc[j] * mid / 16));
      }
      uint8_t scales[kernels::kKScaleBytes] = {};
      for (int j = 0; j < 8; ++j) {
        if (j < 4) {
          scales[j] = sc[j];
          scales[j + 4] = m[j];
        } else {
          scales[j + 4] = static_cast<uint8_t>((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
          scales[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
          scales[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
        }
      }
      std::memcpy(blk, &d16, 2);
      std::memcpy(blk + 2, &dmin16, 2);
      std::memcpy(blk + 4, scales, sizeof(scales));
      random_bytes(blk + 4 + sizeof(scales), q5 ? 32 + 128 : 128);  // (qh,) qs
    }
    return;
  }
  if (type == kernels::DType::kQ6_K) {
    auto* b = reinterpret_cast<kernels::BlockQ6_K*>(dst);
    const uint16_t d = kernels::F32ToF16(scale / (95 * 32));
    for (int64_t i = 0; i < n_out * n_in / kernels::kQKK; ++i) {
      b[i].d = d;
      random_bytes(b[i].ql, sizeof(b[i].ql));
      random_bytes(b[i].qh, sizeof(b[i].qh));
      random_bytes(reinterpret_cast<uint8_t*>(b[i].scales), sizeof(b[i].scales));
      for (int8_t& sc : b[i].scales) sc = static_cast<int8_t>(32 + (sc & 63));  // [32, 95]
    }
    return;
  }
  if (type == kernels::DType::kQ8_0) {
    auto* b = reinterpret_cast<kernels::BlockQ8_0*>(dst);
    const uint16_t d = kernels::F32ToF16(scale / 127);
    for (int64_t i = 0; i < n_blocks; ++i) {
      b[i].d = d;
      random_bytes(reinterpret_cast<uint8_t*>(b[i].qs), sizeof(b[i].qs));
      for (int8_t& q : b[i].qs) q = q == -128 ? -127 : q;
    }
    return;
  }
  std::vector<float> row(n_in);
  for (int64_t r = 0; r < n_out; ++r) {
    for (float& v : row) v = static_cast<float>((rng.Uniform() * 2 - 1) * scale);
    kernels::QuantizeRow(dst + r * row_bytes, row.data(), type, n_in);
  }
}

void NormInto(uint8_t* dst, Rng& rng, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(1.0 + (rng.Uniform() - 0.5) * 0.2);
    std::memcpy(dst + i * sizeof(float), &v, sizeof(float));
  }
}

// GGUF tensors as the dummy builder lays them out: filled in file order (so
// the random stream, and thus the bytes, stay the same for a seed) straight
// into the final image. The 8B shape is ~5 GB: building it through
// GgufWriter's per-tensor strings and growing output cost several copies.
struct TensorSpec {
  std::string name;
  kernels::DType type;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the row length
  int64_t bytes = 0;
  std::function<void(uint8_t*)> fill;
};

void AppendU32(std::string* s, uint32_t v) { s->append(reinterpret_cast<const char*>(&v), 4); }
void AppendU64(std::string* s, uint64_t v) { s->append(reinterpret_cast<const char*>(&v), 8); }

// The GGUF image: the writer's header and metadata (it has no tensors), then
// the tensor infos and data in the layout GgufWriter::Serialize produces.
std::string SerializeWithTensors(const gguf::GgufWriter& w,
                                 const std::vector<TensorSpec>& tensors) {
  constexpr uint64_t kAlign = 32;          // GgufWriter's default alignment
  const std::string meta = w.Serialize();  // "GGUF", version, 0 tensors, n_kv, key-values
  std::string out = meta.substr(0, 8);
  AppendU64(&out, tensors.size());
  out.append(meta, 16, std::string::npos);
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    AppendU64(&out, t.name.size());
    out += t.name;
    AppendU32(&out, static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) AppendU64(&out, static_cast<uint64_t>(d));
    AppendU32(&out, static_cast<uint32_t>(t.type));
    AppendU64(&out, offset);
    offset += (t.bytes + kAlign - 1) / kAlign * kAlign;
  }
  const size_t data_start = (out.size() + kAlign - 1) / kAlign * kAlign;
  out.resize(data_start + offset, '\0');
  uint8_t* data = reinterpret_cast<uint8_t*>(out.data()) + data_start;
  uint64_t at = 0;
  for (const TensorSpec& t : tensors) {
    t.fill(data + at);
    at += (t.bytes + kAlign - 1) / kAlign * kAlign;
  }
  return out;
}

}  // namespace

const char* DummyConfigNames() { return "tiny, smollm2-135m, llama-3.2-1b, llama-3-8b"; }

absl::StatusOr<DummyModelSpec> NamedDummyConfig(std::string_view name) {
  DummyModelSpec s;
  s.name = std::string(name);
  if (name == "tiny") return s;
  if (name == "smollm2-135m") {
    s.n_layers = 30, s.n_embd = 576, s.n_heads = 9, s.n_kv_heads = 3, s.n_ff = 1536;
    s.n_ctx = 8192, s.n_vocab = 49152, s.rope_freq_base = 100000.0f;
    return s;
  }
  if (name == "llama-3.2-1b") {
    s.n_layers = 16, s.n_embd = 2048, s.n_heads = 32, s.n_kv_heads = 8, s.n_ff = 8192;
    s.n_ctx = 8192, s.n_vocab = 128256, s.rope_freq_base = 500000.0f;
    s.matrix_type = kernels::DType::kQ4_0;
    s.embd_type = kernels::DType::kQ8_0;
    return s;
  }
  if (name == "llama-3-8b") {
    s.n_layers = 32, s.n_embd = 4096, s.n_heads = 32, s.n_kv_heads = 8, s.n_ff = 14336;
    s.n_ctx = 8192, s.n_vocab = 128256, s.rope_freq_base = 500000.0f;
    s.matrix_type = kernels::DType::kQ4_0;
    s.embd_type = kernels::DType::kQ8_0;
    s.tied_embeddings = false;
    return s;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dummy model config '", std::string(name),
                                                 "' (known: ", DummyConfigNames(), ")"));
}

const char* DummyFileTypeNames() { return "q4_0, q8_0, q6_k, q4_k_m, q5_k_m"; }

absl::Status SetDummyFileType(std::string_view name, DummyModelSpec* spec) {
  using kernels::DType;
  DType base;
  bool k_mix = false;
  if (name == "q4_0") {
    base = DType::kQ4_0;
  } else if (name == "q8_0") {
    base = DType::kQ8_0;
  } else if (name == "q6_k") {
    base = DType::kQ6_K;
  } else if (name == "q4_k_m") {
    base = DType::kQ4_K, k_mix = true;
  } else if (name == "q5_k_m") {
    base = DType::kQ5_K, k_mix = true;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown dummy file type '", std::string(name),
                                                   "' (known: ", DummyFileTypeNames(), ")"));
  }
  // llama.cpp's fallback for rows that are not whole super-blocks.
  auto fit = [](DType t, int64_t n_in) {
    if (n_in % kernels::kQKK == 0) return t;
    switch (t) {
      case DType::kQ4_K:
        return DType::kQ5_0;
      case DType::kQ5_K:
        return DType::kQ5_1;
      case DType::kQ6_K:
        return DType::kQ8_0;
      default:
        return t;
    }
  };
  const int32_t n = spec->n_layers;
  auto more_bits = [n](int32_t i) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; };
  spec->matrix_type = fit(base, spec->n_embd);
  // The output matrix: Q6_K unless the file is Q8_0.
  const DType out = base == DType::kQ8_0 ? DType::kQ8_0 : fit(DType::kQ6_K, spec->n_embd);
  spec->embd_type = spec->tied_embeddings ? out : fit(base, spec->n_embd);
  spec->tensor_types.clear();
  if (!spec->tied_embeddings) spec->tensor_types["output.weight"] = out;
  for (int32_t l = 0; l < n; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    const bool more = k_mix && more_bits(l);
    spec->tensor_types[p + "attn_v.weight"] = fit(more ? DType::kQ6_K : base, spec->n_embd);
    spec->tensor_types[p + "ffn_down.weight"] = fit(more ? DType::kQ6_K : base, spec->n_ff);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> BuildDummyModelGguf(const DummyModelSpec& s) {
  if (s.n_layers < 1 || s.n_embd < 1 || s.n_heads < 1 || s.n_kv_heads < 1 || s.n_ff < 1 ||
      s.n_embd % s.n_heads != 0 || s.n_heads % s.n_kv_heads != 0) {
    return absl::InvalidArgumentError("dummy model: inconsistent shape");
  }
  // Vocabulary: the 256 byte tokens, three merges, three specials.
  std::vector<std::string> tokens = ByteTokens();
  std::vector<int32_t> types(256, 1);
  const std::vector<std::string> merges = {"\xC4\xA0 t", "h e", "\xC4\xA0t he"};
  for (const char* t : {"\xC4\xA0t", "he", "\xC4\xA0the"}) {
    tokens.push_back(t);
    types.push_back(1);
  }
  const int32_t eos = static_cast<int32_t>(tokens.size());
  for (const char* t : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    tokens.push_back(t);
    types.push_back(3);
  }
  if (s.n_vocab > 0) {
    if (s.n_vocab < static_cast<int32_t>(tokens.size())) {
      return absl::InvalidArgumentError("dummy model: n_vocab too small for the byte vocabulary");
    }
    while (static_cast<int32_t>(tokens.size()) < s.n_vocab) {
      tokens.push_back(absl::StrCat("<unused", tokens.size(), ">"));
      types.push_back(5);
    }
  }
  const int64_t n_vocab = static_cast<int64_t>(tokens.size());
  const int32_t head_dim = s.n_embd / s.n_heads;

  gguf::GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetString("general.name", absl::StrCat("dummy-", s.name));
  w.SetUint32("llama.block_count", s.n_layers);
  w.SetUint32("llama.context_length", s.n_ctx);
  w.SetUint32("llama.embedding_length", s.n_embd);
  w.SetUint32("llama.feed_forward_length", s.n_ff);
  w.SetUint32("llama.attention.head_count", s.n_heads);
  w.SetUint32("llama.attention.head_count_kv", s.n_kv_heads);
  w.SetFloat32("llama.rope.freq_base", s.rope_freq_base);
  w.SetUint32("llama.rope.dimension_count", head_dim);
  w.SetFloat32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.SetString("tokenizer.ggml.model", "gpt2");
  w.SetString("tokenizer.ggml.pre", "gpt2");
  w.SetStringArray("tokenizer.ggml.tokens", tokens);
  w.SetInt32Array("tokenizer.ggml.token_type", types);
  w.SetStringArray("tokenizer.ggml.merges", merges);
  w.SetUint32("tokenizer.ggml.bos_token_id", eos + 1);
  w.SetUint32("tokenizer.ggml.eos_token_id", eos + 2);
  w.SetBool("tokenizer.ggml.add_bos_token", false);
  w.SetString("tokenizer.chat_template",
              "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
              "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}");

  Rng rng(s.seed);
  const float in_scale = 1.0f / std::sqrt(static_cast<float>(s.n_embd));
  const float ff_scale = 1.0f / std::sqrt(static_cast<float>(s.n_ff));
  const int64_t E = s.n_embd, QD = s.n_embd, KVD = static_cast<int64_t>(s.n_kv_heads) * head_dim;
  std::vector<TensorSpec> tensors;
  absl::Status status;
  auto matrix = [&](std::string name, kernels::DType type, int64_t n_out, int64_t n_in,
                    float scale) {
    if (auto it = s.tensor_types.find(name); it != s.tensor_types.end()) type = it->second;
    const kernels::DTypeInfo& info = kernels::GetDType(type);
    if (n_in % info.block_size != 0 && status.ok()) {
      status = absl::InvalidArgumentError(absl::StrCat("dummy model: ", name, " has rows of ", n_in,
                                                       ", not a multiple of ", info.block_size,
                                                       " for ", info.name));
    }
    tensors.push_back({std::move(name),
                       type,
                       {n_in, n_out},
                       kernels::RowBytes(type, n_in) * n_out,
                       [&rng, type, n_out, n_in, scale](uint8_t* dst) {
                         QuantizedInto(dst, rng, type, n_out, n_in, scale);
                       }});
  };
  auto norm = [&](std::string name, int64_t n) {
    tensors.push_back({std::move(name),
                       kernels::DType::kF32,
                       {n},
                       n * static_cast<int64_t>(sizeof(float)),
                       [&rng, n](uint8_t* dst) { NormInto(dst, rng, n); }});
  };
  // Small enough that tied output logits spread over several tokens.
  matrix("token_embd.weight", s.embd_type, n_vocab, E, 2.0f * in_scale);
  norm("output_norm.weight", E);
  if (!s.tied_embeddings) matrix("output.weight", s.embd_type, n_vocab, E, in_scale);
  const kernels::DType mt = s.matrix_type;
  for (int32_t l = 0; l < s.n_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    norm(p + "attn_norm.weight", E);
    matrix(p + "attn_q.weight", mt, QD, E, in_scale);
    matrix(p + "attn_k.weight", mt, KVD, E, in_scale);
    matrix(p + "attn_v.weight", mt, KVD, E, in_scale);
    matrix(p + "attn_output.weight", mt, E, QD, in_scale);
    norm(p + "ffn_norm.weight", E);
    matrix(p + "ffn_gate.weight", mt, s.n_ff, E, in_scale);
    matrix(p + "ffn_up.weight", mt, s.n_ff, E, in_scale);
    matrix(p + "ffn_down.weight", mt, E, s.n_ff, ff_scale);
  }
  if (!status.ok()) return status;
  return SerializeWithTensors(w, tensors);
}

}  // namespace pdserve
