// pdserve inspect: prints a GGUF file's header, architecture, tokenizer
// summary and tensor table. The first lines are `key: value` so that scripts
// can grep them (`layers: 30`, `width: 576`, ...).
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "common/status_macros.h"
#include "engine/gguf/gguf.h"

namespace pdserve::cli {
namespace {

using gguf::GgufFile;

constexpr char kMissing[] = "-";

// Printable text of an optional key: its value, or "-" when absent. A key of
// the wrong type is an error: the model loader would reject it too.
absl::StatusOr<std::string> UintText(const GgufFile& f, const std::string& key) {
  if (!f.Has(key)) return std::string(kMissing);
  PDS_ASSIGN_OR_RETURN(uint64_t v, f.GetUint(key));
  return absl::StrCat(v);
}

absl::StatusOr<std::string> FloatText(const GgufFile& f, const std::string& key) {
  if (!f.Has(key)) return std::string(kMissing);
  PDS_ASSIGN_OR_RETURN(double v, f.GetFloat(key));
  return absl::StrFormat("%g", v);
}

absl::StatusOr<std::string> StringText(const GgufFile& f, const std::string& key) {
  if (!f.Has(key)) return std::string(kMissing);
  PDS_ASSIGN_OR_RETURN(std::string_view v, f.GetString(key));
  return std::string(v);
}

absl::StatusOr<std::string> BoolText(const GgufFile& f, const std::string& key) {
  if (!f.Has(key)) return std::string(kMissing);
  PDS_ASSIGN_OR_RETURN(bool v, f.GetBool(key));
  return std::string(v ? "true" : "false");
}

// Length of tokenizer.ggml.tokens.
absl::StatusOr<std::string> VocabText(const GgufFile& f) {
  const gguf::Value* tokens = f.Find("tokenizer.ggml.tokens");
  if (tokens == nullptr) return std::string(kMissing);
  if (tokens->type() != gguf::ValueType::kArray ||
      tokens->array_type() != gguf::ValueType::kString) {
    return f.GetStringArray("tokenizer.ggml.tokens").status();
  }
  return absl::StrCat(tokens->array_size());
}

std::string Shape(const std::vector<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

std::string HumanBytes(uint64_t n) {
  if (n >= (uint64_t{1} << 30)) return absl::StrFormat("%.2f GiB", n / double(1 << 30));
  if (n >= (uint64_t{1} << 20)) return absl::StrFormat("%.2f MiB", n / double(1 << 20));
  if (n >= (uint64_t{1} << 10)) return absl::StrFormat("%.2f KiB", n / double(1 << 10));
  return absl::StrFormat("%d B", n);
}

// Builds the whole report first, so that a bad key prints only the error.
absl::StatusOr<std::string> Report(const GgufFile& f) {
  std::string out;
  auto line = [&out](std::string_view key, std::string_view value) {
    out.append(key).append(": ").append(value).append("\n");
  };
  PDS_ASSIGN_OR_RETURN(std::string arch, StringText(f, "general.architecture"));
  PDS_ASSIGN_OR_RETURN(std::string name, StringText(f, "general.name"));
  const std::string p = arch + ".";

  line("file", f.path());
  line("version", absl::StrCat(f.version()));
  line("alignment", absl::StrCat(f.alignment()));
  line("metadata", absl::StrCat(f.metadata().size()));
  line("architecture", arch);
  line("name", name);
  const std::pair<const char*, std::string> uints[] = {
      {"layers", p + "block_count"},
      {"width", p + "embedding_length"},
      {"heads", p + "attention.head_count"},
      {"kv_heads", p + "attention.head_count_kv"},
      {"ffn_width", p + "feed_forward_length"},
      {"context", p + "context_length"},
  };
  for (const auto& [label, key] : uints) {
    PDS_ASSIGN_OR_RETURN(std::string v, UintText(f, key));
    line(label, v);
  }
  PDS_ASSIGN_OR_RETURN(std::string freq_base, FloatText(f, p + "rope.freq_base"));
  line("rope_freq_base", freq_base);
  PDS_ASSIGN_OR_RETURN(std::string eps, FloatText(f, p + "attention.layer_norm_rms_epsilon"));
  line("rms_norm_eps", eps);
  PDS_ASSIGN_OR_RETURN(std::string vocab, VocabText(f));
  line("vocab", vocab);

  // Tensors: count, count per type (in type id order), total bytes.
  std::map<uint32_t, int> per_type;
  uint64_t total = 0;
  size_t name_width = 4;
  for (const gguf::TensorInfo& t : f.tensors()) {
    ++per_type[static_cast<uint32_t>(t.type)];
    total += static_cast<uint64_t>(t.n_bytes);
    name_width = std::max(name_width, t.name.size());
  }
  line("tensors", absl::StrCat(f.tensors().size()));
  std::vector<std::string> counts;
  for (const auto& [type, n] : per_type) {
    counts.push_back(absl::StrCat(kernels::FindDType(type)->name, "=", n));
  }
  line("tensor_types", counts.empty() ? kMissing : absl::StrJoin(counts, " "));
  line("tensor_bytes", absl::StrCat(total, " (", HumanBytes(total), ")"));

  // Tokenizer summary.
  const std::pair<const char*, const char*> tok_strings[] = {
      {"tokenizer.model", "tokenizer.ggml.model"},
      {"tokenizer.pre", "tokenizer.ggml.pre"},
  };
  for (const auto& [label, key] : tok_strings) {
    PDS_ASSIGN_OR_RETURN(std::string v, StringText(f, key));
    line(label, v);
  }
  line("tokenizer.vocab", vocab);
  const std::pair<const char*, const char*> tok_ids[] = {
      {"tokenizer.bos_id", "tokenizer.ggml.bos_token_id"},
      {"tokenizer.eos_id", "tokenizer.ggml.eos_token_id"},
      {"tokenizer.eot_id", "tokenizer.ggml.eot_token_id"},
  };
  for (const auto& [label, key] : tok_ids) {
    PDS_ASSIGN_OR_RETURN(std::string v, UintText(f, key));
    line(label, v);
  }
  PDS_ASSIGN_OR_RETURN(std::string add_bos, BoolText(f, "tokenizer.ggml.add_bos_token"));
  line("tokenizer.add_bos", add_bos);
  line("tokenizer.chat_template", f.Has("tokenizer.chat_template") ? "yes" : "no");

  // The tensor table, in file order.
  if (!f.tensors().empty()) {
    absl::StrAppendFormat(&out, "\n%-*s  %-7s  %s\n", name_width, "name", "type", "shape");
    for (const gguf::TensorInfo& t : f.tensors()) {
      absl::StrAppendFormat(&out, "%-*s  %-7s  %s\n", name_width, t.name,
                            kernels::GetDType(t.type).name, Shape(t.dims));
    }
  }
  return out;
}

int RunInspect(int argc, char** argv) {
  po::options_description desc("inspect flags");
  AddCommonFlags(&desc);
  desc.add_options()("model,m", po::value<std::string>()->default_value(DefaultModelPath()),
                     "GGUF file to inspect");
  po::variables_map vm;
  if (int rc = ParseFlags(argc, argv, "[--model FILE]", desc, &vm); rc >= 0) return rc;

  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(vm["model"].as<std::string>());
  if (!file.ok()) return Fail("inspect", std::string(file.status().message()));
  absl::StatusOr<std::string> report = Report(**file);
  if (!report.ok()) return Fail("inspect", std::string(report.status().message()));
  std::fwrite(report->data(), 1, report->size(), stdout);
  return 0;
}

}  // namespace

PDS_COMMAND(inspect, "print a GGUF model's architecture, tokenizer and tensors", RunInspect);

}  // namespace pdserve::cli
