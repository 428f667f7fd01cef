#include "engine/model_config.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace pdserve {
namespace {

// Reads `<arch>.<suffix>` as a positive int32.
absl::StatusOr<int32_t> GetPositive(const gguf::GgufFile& file, const std::string& key,
                                    std::optional<uint64_t> def = std::nullopt) {
  absl::StatusOr<uint64_t> v = def ? file.GetUintOr(key, *def) : file.GetUint(key);
  if (!v.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model: ", v.status().message()));
  }
  if (*v == 0 || *v > (1u << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("model: ", key, " = ", *v, " is out of range"));
  }
  return static_cast<int32_t>(*v);
}

}  // namespace

absl::StatusOr<ModelConfig> ReadModelConfig(const gguf::GgufFile& file) {
  ModelConfig c;
  absl::StatusOr<std::string_view> arch = file.GetString("general.architecture");
  if (!arch.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model: ", arch.status().message(), " (not a model file?)"));
  }
  c.architecture = std::string(*arch);
  if (c.architecture == "qwen2") {
    c.rope_style = RopeStyle::kNeox;
    c.qkv_bias = true;
  } else if (c.architecture == "qwen3") {
    c.rope_style = RopeStyle::kNeox;
    c.qk_norm = true;
  } else if (c.architecture != "llama") {
    return absl::InvalidArgumentError(absl::StrCat("model: unsupported architecture '",
                                                   c.architecture,
                                                   "' (supported: ", kSupportedArchitectures, ")"));
  }
  absl::StatusOr<std::string_view> name = file.GetStringOr("general.name", "");
  if (name.ok()) c.name = std::string(*name);

  const std::string p = c.architecture + ".";
  PDS_ASSIGN_OR_RETURN(c.n_layers, GetPositive(file, p + "block_count"));
  PDS_ASSIGN_OR_RETURN(c.n_embd, GetPositive(file, p + "embedding_length"));
  PDS_ASSIGN_OR_RETURN(c.n_heads, GetPositive(file, p + "attention.head_count"));
  PDS_ASSIGN_OR_RETURN(c.n_kv_heads,
                       GetPositive(file, p + "attention.head_count_kv", uint64_t(c.n_heads)));
  PDS_ASSIGN_OR_RETURN(c.n_ff, GetPositive(file, p + "feed_forward_length"));
  PDS_ASSIGN_OR_RETURN(c.n_ctx_train, GetPositive(file, p + "context_length", 2048));
  if (c.n_embd % c.n_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model: embedding_length ", c.n_embd,
                                                   " is not a multiple of head_count ", c.n_heads));
  }
  PDS_ASSIGN_OR_RETURN(
      c.head_dim, GetPositive(file, p + "attention.key_length", uint64_t(c.n_embd / c.n_heads)));
  PDS_ASSIGN_OR_RETURN(c.n_rot,
                       GetPositive(file, p + "rope.dimension_count", uint64_t(c.head_dim)));
  if (c.n_heads % c.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model: head_count ", c.n_heads, " is not a multiple of head_count_kv ", c.n_kv_heads));
  }
  if (c.head_dim % 2 != 0 || c.n_rot % 2 != 0 || c.n_rot > c.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("model: head_dim ", c.head_dim, " / n_rot ",
                                                   c.n_rot,
                                                   " must be even with n_rot <= head_dim"));
  }
  if (auto v = file.GetUintOr(p + "attention.value_length", c.head_dim);
      !v.ok() || *v != uint64_t(c.head_dim)) {
    return absl::InvalidArgumentError("model: value_length must equal key_length");
  }

  PDS_ASSIGN_OR_RETURN(double base, file.GetFloatOr(p + "rope.freq_base", 10000.0));
  PDS_ASSIGN_OR_RETURN(double eps, file.GetFloatOr(p + "attention.layer_norm_rms_epsilon", 1e-5));
  if (!(base > 0) || !(eps > 0) || eps > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("model: bad rope.freq_base ", base, " or rms epsilon ", eps));
  }
  c.rope_freq_base = static_cast<float>(base);
  c.rms_eps = static_cast<float>(eps);
  PDS_ASSIGN_OR_RETURN(std::string_view scaling, file.GetStringOr(p + "rope.scaling.type", "none"));
  if (scaling == "linear") {
    PDS_ASSIGN_OR_RETURN(double factor, file.GetFloat(p + "rope.scaling.factor"));
    if (!(factor >= 1)) {
      return absl::InvalidArgumentError(absl::StrCat("model: bad rope.scaling.factor ", factor));
    }
    c.rope_freq_scale = static_cast<float>(1.0 / factor);
  } else if (scaling != "none") {
    return absl::InvalidArgumentError(absl::StrCat("model: unsupported rope.scaling.type '",
                                                   std::string(scaling),
                                                   "' (supported: none, linear)"));
  }

  // Vocabulary size: the embedding matrix is authoritative.
  const gguf::TensorInfo* embd = file.FindTensor("token_embd.weight");
  if (embd == nullptr || embd->dims.size() != 2) {
    return absl::InvalidArgumentError("model: missing 2-D tensor 'token_embd.weight'");
  }
  if (embd->dims[0] != c.n_embd) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model: token_embd.weight rows have ", embd->dims[0], " elements, expected ", c.n_embd));
  }
  c.n_vocab = static_cast<int32_t>(embd->dims[1]);
  c.tied_embeddings = file.FindTensor("output.weight") == nullptr;
  return c;
}

}  // namespace pdserve
