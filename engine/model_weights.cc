#include "engine/model_weights.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace pdserve {
namespace {

std::string ShapeString(const std::vector<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

absl::StatusOr<const gguf::TensorInfo*> Find(const gguf::GgufFile& file, const std::string& name,
                                             std::vector<int64_t> want_dims) {
  const gguf::TensorInfo* t = file.FindTensor(name);
  if (t == nullptr)
    return absl::InvalidArgumentError(absl::StrCat("model: missing tensor '", name, "'"));
  if (t->dims != want_dims) {
    return absl::InvalidArgumentError(absl::StrCat("model: tensor '", name, "' has shape ",
                                                   ShapeString(t->dims), ", expected ",
                                                   ShapeString(want_dims)));
  }
  return t;
}

absl::StatusOr<const float*> FindNorm(const gguf::GgufFile& file, const std::string& name,
                                      int64_t n) {
  PDS_ASSIGN_OR_RETURN(const gguf::TensorInfo* t, Find(file, name, {n}));
  if (t->type != kernels::DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model: tensor '", name, "' has type ", kernels::GetDType(t->type).name, ", expected f32"));
  }
  if (reinterpret_cast<uintptr_t>(t->data) % alignof(float) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model: tensor '", name, "' is misaligned"));
  }
  return reinterpret_cast<const float*>(t->data);
}

// An optional F32 vector: null when absent, an error when required and absent.
absl::StatusOr<const float*> FindOptionalNorm(const gguf::GgufFile& file, const std::string& name,
                                              int64_t n, bool required) {
  if (!required && file.FindTensor(name) == nullptr) return nullptr;
  return FindNorm(file, name, n);
}

// A matrix of n_out rows by n_in columns: GGUF dims are {n_in, n_out}.
absl::StatusOr<kernels::WeightMatrix> FindMatrix(const gguf::GgufFile& file,
                                                 const std::string& name, int64_t n_out,
                                                 int64_t n_in) {
  PDS_ASSIGN_OR_RETURN(const gguf::TensorInfo* t, Find(file, name, {n_in, n_out}));
  const kernels::DTypeInfo& info = kernels::GetDType(t->type);
  if (!info.matmul) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model: tensor '", name, "' has weight type ", info.name,
        ", which pdserve does not support (", "supported: ", kernels::SupportedMatmulTypes(), ")"));
  }
  kernels::WeightMatrix m;
  m.data = t->data;
  m.type = t->type;
  m.n_out = n_out;
  m.n_in = n_in;
  return m;
}

}  // namespace

absl::StatusOr<ModelWeights> BindModelWeights(const gguf::GgufFile& file, const ModelConfig& c) {
  ModelWeights w;
  PDS_ASSIGN_OR_RETURN(w.token_embd, FindMatrix(file, "token_embd.weight", c.n_vocab, c.n_embd));
  PDS_ASSIGN_OR_RETURN(w.output_norm, FindNorm(file, "output_norm.weight", c.n_embd));
  if (c.tied_embeddings) {
    w.output = w.token_embd;
  } else {
    PDS_ASSIGN_OR_RETURN(w.output, FindMatrix(file, "output.weight", c.n_vocab, c.n_embd));
  }
  if (file.FindTensor("rope_freqs.weight") != nullptr) {
    PDS_ASSIGN_OR_RETURN(w.rope_freqs, FindNorm(file, "rope_freqs.weight", c.n_rot / 2));
  }
  w.layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = absl::StrCat("blk.", i, ".");
    PDS_ASSIGN_OR_RETURN(l.attn_norm, FindNorm(file, p + "attn_norm.weight", c.n_embd));
    PDS_ASSIGN_OR_RETURN(l.wq, FindMatrix(file, p + "attn_q.weight", c.q_dim(), c.n_embd));
    PDS_ASSIGN_OR_RETURN(l.wk, FindMatrix(file, p + "attn_k.weight", c.kv_dim(), c.n_embd));
    PDS_ASSIGN_OR_RETURN(l.wv, FindMatrix(file, p + "attn_v.weight", c.kv_dim(), c.n_embd));
    // Biases are optional in llama files (as in llama.cpp) and required in qwen2.
    PDS_ASSIGN_OR_RETURN(l.bq, FindOptionalNorm(file, p + "attn_q.bias", c.q_dim(), c.qkv_bias));
    PDS_ASSIGN_OR_RETURN(l.bk, FindOptionalNorm(file, p + "attn_k.bias", c.kv_dim(), c.qkv_bias));
    PDS_ASSIGN_OR_RETURN(l.bv, FindOptionalNorm(file, p + "attn_v.bias", c.kv_dim(), c.qkv_bias));
    if (c.qk_norm) {
      PDS_ASSIGN_OR_RETURN(l.q_norm, FindNorm(file, p + "attn_q_norm.weight", c.head_dim));
      PDS_ASSIGN_OR_RETURN(l.k_norm, FindNorm(file, p + "attn_k_norm.weight", c.head_dim));
    }
    PDS_ASSIGN_OR_RETURN(l.wo, FindMatrix(file, p + "attn_output.weight", c.n_embd, c.q_dim()));
    PDS_ASSIGN_OR_RETURN(l.ffn_norm, FindNorm(file, p + "ffn_norm.weight", c.n_embd));
    PDS_ASSIGN_OR_RETURN(l.w_gate, FindMatrix(file, p + "ffn_gate.weight", c.n_ff, c.n_embd));
    PDS_ASSIGN_OR_RETURN(l.w_up, FindMatrix(file, p + "ffn_up.weight", c.n_ff, c.n_embd));
    PDS_ASSIGN_OR_RETURN(l.w_down, FindMatrix(file, p + "ffn_down.weight", c.n_embd, c.n_ff));
  }
  for (const gguf::TensorInfo& t : file.tensors()) w.total_bytes += t.n_bytes;
  return w;
}

}  // namespace pdserve
