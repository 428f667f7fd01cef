// Flags shared by the subcommands that run the engine (generate, bench,
// serve, prefill, decode) and by those that send sampling parameters.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "cli/flags.h"
#include "engine/engine.h"
#include "engine/text/request.h"

namespace pdserve::cli {

// --model, --threads, --ctx-size, --kv-cache-mib, --kv-blocks, --block-size,
// --kv-dtype, --max-batch-tokens, --max-batch-seqs, --no-prefix-cache, --pin-cpus
void AddEngineFlags(po::options_description* desc);
struct EngineFlags {
  std::string model_path;
  std::string load_format = "gguf";  // gguf, or dummy (random weights of a named shape)
  std::string dummy_config;
  std::string dummy_type;  // llama-quantize file type for dummy weights ("": the shape's own)
  uint64_t dummy_seed = 1;
  int32_t n_ctx = 0;
  EngineOptions options;
};
absl::Status ReadEngineFlags(const po::variables_map& vm, EngineFlags* out);
// Loads the model the flags name: a GGUF file, or a dummy model.
absl::StatusOr<std::shared_ptr<const Model>> LoadModel(const EngineFlags& flags);

// --max-tokens, --temperature, --top-p, --top-k, --min-p, --seed,
// --repeat-penalty, --presence-penalty, --frequency-penalty, --stop,
// --ignore-eos, --logprobs, --top-logprobs
void AddSamplingFlags(po::options_description* desc, int default_max_tokens);
void ReadSamplingFlags(const po::variables_map& vm, SamplingParams* sampling, StopParams* stop);

}  // namespace pdserve::cli
