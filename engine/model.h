// A loaded model: the mapped GGUF file, its configuration, weight views,
// tokenizer and the rotary-embedding table. Immutable once loaded and
// shared by every runner in a process.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/gguf/gguf.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/tokenizer/tokenizer.h"

namespace pdserve {

class Model {
 public:
  // `n_ctx` caps the context served (0 = the model's trained context).
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& path, int32_t n_ctx = 0);
  // From an already opened file (e.g. a dummy model built in memory).
  static absl::StatusOr<std::unique_ptr<Model>> FromGguf(std::unique_ptr<gguf::GgufFile> file,
                                                         int32_t n_ctx = 0);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const gguf::GgufFile& file() const { return *file_; }
  int32_t n_ctx() const { return n_ctx_; }
  // (n_ctx, n_rot) interleaved cos/sin pairs for each position.
  const float* RopeRow(int32_t pos) const {
    return rope_.data() + static_cast<size_t>(pos) * config_.n_rot;
  }
  // A short identity for compatibility checks between nodes.
  std::string Fingerprint() const;

 private:
  Model() = default;
  std::unique_ptr<gguf::GgufFile> file_;
  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  int32_t n_ctx_ = 0;
  std::vector<float> rope_;  // (n_ctx, n_rot)
};

}  // namespace pdserve
