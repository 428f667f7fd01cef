#include "engine/model.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace pdserve {

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& path, int32_t n_ctx) {
  PDS_ASSIGN_OR_RETURN(std::unique_ptr<gguf::GgufFile> file, gguf::GgufFile::Open(path));
  return FromGguf(std::move(file), n_ctx);
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromGguf(std::unique_ptr<gguf::GgufFile> file,
                                                       int32_t n_ctx) {
  std::unique_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  PDS_ASSIGN_OR_RETURN(m->config_, ReadModelConfig(*m->file_));
  PDS_ASSIGN_OR_RETURN(m->weights_, BindModelWeights(*m->file_, m->config_));
  PDS_ASSIGN_OR_RETURN(m->tokenizer_, Tokenizer::FromGguf(*m->file_));
  if (m->tokenizer_->n_vocab() != m->config_.n_vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("model: tokenizer has ", m->tokenizer_->n_vocab(),
                     " tokens but token_embd has ", m->config_.n_vocab, " rows"));
  }
  if (n_ctx < 0) return absl::InvalidArgumentError("context length must be >= 0");
  m->n_ctx_ = n_ctx == 0 ? m->config_.n_ctx_train : n_ctx;

  // theta_i(pos) = pos * scale * base^(-2i / n_rot) / freq_factor_i
  const ModelConfig& c = m->config_;
  m->rope_.resize(static_cast<size_t>(m->n_ctx_) * c.n_rot);
  for (int32_t i = 0; i < c.n_rot / 2; ++i) {
    double inv_freq = std::pow(static_cast<double>(c.rope_freq_base), -2.0 * i / c.n_rot);
    if (m->weights_.rope_freqs != nullptr) inv_freq /= m->weights_.rope_freqs[i];
    for (int32_t pos = 0; pos < m->n_ctx_; ++pos) {
      const double theta = pos * static_cast<double>(c.rope_freq_scale) * inv_freq;
      float* row = m->rope_.data() + static_cast<size_t>(pos) * c.n_rot;
      row[2 * i] = static_cast<float>(std::cos(theta));
      row[2 * i + 1] = static_cast<float>(std::sin(theta));
    }
  }
  return m;
}

std::string Model::Fingerprint() const {
  const ModelConfig& c = config_;
  return absl::StrFormat("%s/L%d/E%d/H%d/KV%d/V%d/%dB", c.architecture, c.n_layers, c.n_embd,
                         c.n_heads, c.n_kv_heads, c.n_vocab, weights_.total_bytes);
}

}  // namespace pdserve
