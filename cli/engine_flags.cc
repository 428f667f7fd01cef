#include "cli/engine_flags.h"

#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/dummy_model.h"

namespace pdserve::cli {

void AddEngineFlags(po::options_description* desc) {
  desc->add_options()("model,m", po::value<std::string>()->default_value(DefaultModelPath()),
                      "GGUF model file")(
      "load-format", po::value<std::string>()->default_value("gguf"),
      "gguf, or dummy: random weights of the shape --dummy-config names")(
      "dummy-config", po::value<std::string>()->default_value("tiny"),
      "shape for --load-format dummy: tiny, smollm2-135m, llama-3.2-1b, llama-3-8b")(
      "dummy-type", po::value<std::string>()->default_value(""),
      "weight types for --load-format dummy, as llama-quantize lays out a file type: q4_0, "
      "q8_0, q6_k, q4_k_m, q5_k_m (default: the shape's own)")(
      "dummy-seed", po::value<uint64_t>()->default_value(1), "seed for dummy weights")(
      "device", po::value<std::string>()->default_value("cpu"), "cpu, cuda or cuda:N")(
      "threads,t", po::value<int>()->default_value(0), "compute threads (0: all CPUs allowed)")(
      "pin-cpus", po::value<std::string>()->default_value(""),
      "comma-separated CPU ids to pin compute threads to")(
      "ctx-size", po::value<int>()->default_value(0), "context length (0: the model's)")(
      "kv-cache-mib", po::value<int>()->default_value(256), "KV cache capacity in MiB")(
      "kv-blocks", po::value<int>()->default_value(0),
      "KV cache capacity in blocks (overrides MiB)")(
      "block-size", po::value<int>()->default_value(16), "tokens per KV block")(
      "kv-dtype", po::value<std::string>()->default_value("f16"), "KV element type: f16 or f32")(
      "max-batch-tokens", po::value<int>()->default_value(512), "token budget per engine step")(
      "max-batch-seqs", po::value<int>()->default_value(64), "sequences per engine step")(
      "no-prefix-cache", po::bool_switch(), "disable prefix caching")(
      "no-pack-weights", po::bool_switch(),
      "CPU: run on the mapped weights instead of a repacked copy (less memory, slower)");
}

absl::Status ReadEngineFlags(const po::variables_map& vm, EngineFlags* out) {
  out->model_path = vm["model"].as<std::string>();
  out->load_format = vm["load-format"].as<std::string>();
  if (out->load_format != "gguf" && out->load_format != "dummy") {
    return absl::InvalidArgumentError("--load-format must be gguf or dummy");
  }
  out->dummy_config = vm["dummy-config"].as<std::string>();
  out->dummy_seed = vm["dummy-seed"].as<uint64_t>();
  out->dummy_type = vm["dummy-type"].as<std::string>();
  EngineOptions& o = out->options;
  o.device = vm["device"].as<std::string>();
  o.n_threads = vm["threads"].as<int>();
  if (o.n_threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  const std::string pins = vm["pin-cpus"].as<std::string>();
  if (!pins.empty()) {
    for (absl::string_view part : absl::StrSplit(pins, ',')) {
      int cpu;
      if (!absl::SimpleAtoi(part, &cpu) || cpu < 0) {
        return absl::InvalidArgumentError(absl::StrCat("--pin-cpus: bad CPU id '", part, "'"));
      }
      o.pin_cpus.push_back(cpu);
    }
  }
  out->n_ctx = vm["ctx-size"].as<int>();
  if (out->n_ctx < 0) return absl::InvalidArgumentError("--ctx-size must be >= 0");
  const int mib = vm["kv-cache-mib"].as<int>();
  if (mib <= 0) return absl::InvalidArgumentError("--kv-cache-mib must be > 0");
  o.kv_cache_bytes = static_cast<int64_t>(mib) << 20;
  o.kv_blocks = vm["kv-blocks"].as<int>();
  if (o.kv_blocks < 0) return absl::InvalidArgumentError("--kv-blocks must be >= 0");
  o.block_size = vm["block-size"].as<int>();
  const std::string dtype = vm["kv-dtype"].as<std::string>();
  if (dtype == "f16") {
    o.kv_dtype = kernels::DType::kF16;
  } else if (dtype == "f32") {
    o.kv_dtype = kernels::DType::kF32;
  } else {
    return absl::InvalidArgumentError("--kv-dtype must be f16 or f32");
  }
  o.max_batch_tokens = vm["max-batch-tokens"].as<int>();
  o.max_batch_seqs = vm["max-batch-seqs"].as<int>();
  o.prefix_cache = !vm["no-prefix-cache"].as<bool>();
  o.pack_weights = !vm["no-pack-weights"].as<bool>();
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Model>> LoadModel(const EngineFlags& flags) {
  if (flags.load_format == "dummy") {
    absl::StatusOr<DummyModelSpec> spec = NamedDummyConfig(flags.dummy_config);
    if (!spec.ok()) return spec.status();
    spec->seed = flags.dummy_seed;
    if (!flags.dummy_type.empty()) {
      if (absl::Status s = SetDummyFileType(flags.dummy_type, &*spec); !s.ok()) return s;
    }
    absl::StatusOr<std::string> bytes = BuildDummyModelGguf(*spec);
    if (!bytes.ok()) return bytes.status();
    absl::StatusOr<std::unique_ptr<gguf::GgufFile>> file = gguf::GgufFile::FromBytes(*bytes);
    if (!file.ok()) return file.status();
    absl::StatusOr<std::unique_ptr<Model>> model = Model::FromGguf(std::move(*file), flags.n_ctx);
    if (!model.ok()) return model.status();
    return std::shared_ptr<const Model>(std::move(*model));
  }
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(flags.model_path, flags.n_ctx);
  if (!model.ok()) return model.status();
  return std::shared_ptr<const Model>(std::move(*model));
}

void AddSamplingFlags(po::options_description* desc, int default_max_tokens) {
  desc->add_options()("max-tokens,n", po::value<int>()->default_value(default_max_tokens),
                      "tokens to generate")("temperature", po::value<float>()->default_value(0.8f),
                                            "0 = greedy")(
      "top-p", po::value<float>()->default_value(0.95f), "nucleus sampling mass, (0, 1]")(
      "top-k", po::value<int>()->default_value(40), "0 = off")(
      "min-p", po::value<float>()->default_value(0.05f), "0 = off")(
      "seed", po::value<uint64_t>(), "sampling seed (reproducible output)")(
      "repeat-penalty", po::value<float>()->default_value(1.0f), "1 = off")(
      "presence-penalty", po::value<float>()->default_value(0.0f), "[-2, 2]")(
      "frequency-penalty", po::value<float>()->default_value(0.0f), "[-2, 2]")(
      "stop", po::value<std::vector<std::string>>()->composing(), "stop string (repeatable)")(
      "ignore-eos", po::bool_switch(), "keep generating past end-of-sequence tokens")(
      "top-logprobs", po::value<int>()->default_value(0), "alternatives per token, 0..20");
}

void ReadSamplingFlags(const po::variables_map& vm, SamplingParams* s, StopParams* stop) {
  stop->max_tokens = vm["max-tokens"].as<int>();
  s->temperature = vm["temperature"].as<float>();
  s->top_p = vm["top-p"].as<float>();
  s->top_k = vm["top-k"].as<int>();
  s->min_p = vm["min-p"].as<float>();
  if (vm.count("seed")) s->seed = vm["seed"].as<uint64_t>();
  s->repetition_penalty = vm["repeat-penalty"].as<float>();
  s->presence_penalty = vm["presence-penalty"].as<float>();
  s->frequency_penalty = vm["frequency-penalty"].as<float>();
  if (vm.count("stop")) stop->stop_strings = vm["stop"].as<std::vector<std::string>>();
  stop->ignore_eos = vm["ignore-eos"].as<bool>();
  s->top_logprobs = vm["top-logprobs"].as<int>();
}

}  // namespace pdserve::cli
