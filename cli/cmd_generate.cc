// pdserve generate: one streamed generation on this machine, no servers.
#include <cstdio>
#include <iostream>

#include "absl/strings/str_format.h"
#include "cli/command.h"
#include "cli/engine_flags.h"
#include "common/clock.h"
#include "engine/engine.h"
#include "engine/text/chat_template.h"
#include "nlohmann/json.hpp"

namespace pdserve::cli {
namespace {

int RunGenerate(int argc, char** argv) {
  po::options_description desc("generate flags");
  AddCommonFlags(&desc);
  AddEngineFlags(&desc);
  AddSamplingFlags(&desc, 128);
  desc.add_options()("prompt,p", po::value<std::string>(), "prompt text (required)")(
      "chat", po::bool_switch(), "wrap the prompt as a user message in the model's chat template")(
      "system", po::value<std::string>(), "system message (with --chat)")(
      "stats", po::bool_switch(), "print timing figures to stderr at the end")(
      "print-token-ids", po::bool_switch(),
      "print {prompt_tokens, token_ids, finish_reason} as one JSON line to stderr at the end");
  po::variables_map vm;
  if (int rc = ParseFlags(argc, argv, "--prompt TEXT [flags]", desc, &vm); rc >= 0) return rc;
  if (!vm.count("prompt")) return Fail("generate", "--prompt is required");
  EngineFlags ef;
  if (absl::Status s = ReadEngineFlags(vm, &ef); !s.ok())
    return Fail("generate", std::string(s.message()));

  auto model = LoadModel(ef);
  if (!model.ok()) return Fail("generate", std::string(model.status().message()));
  std::shared_ptr<const Model> shared_model = std::move(*model);
  const Tokenizer& tok = shared_model->tokenizer();

  std::string text = vm["prompt"].as<std::string>();
  EncodeOptions enc;
  enc.add_special = true;
  if (vm["chat"].as<bool>()) {
    auto tmpl = ChatTemplate::Detect(
        shared_model->file().GetStringOr("tokenizer.chat_template", "").value_or(""),
        ChatTokensOf(shared_model->tokenizer()));
    if (!tmpl.ok()) return Fail("generate", std::string(tmpl.status().message()));
    std::vector<ChatMessage> messages;
    if (vm.count("system")) messages.push_back({"system", vm["system"].as<std::string>()});
    messages.push_back({"user", text});
    auto rendered = tmpl->Render(messages);
    if (!rendered.ok()) return Fail("generate", std::string(rendered.status().message()));
    text = *rendered;
    enc.parse_special = true;
    enc.add_special = false;  // the template writes BOS itself where it wants one
  }
  auto tokens = tok.Encode(text, enc);
  if (!tokens.ok()) return Fail("generate", std::string(tokens.status().message()));

  RequestSpec spec;
  spec.id = "generate";
  spec.prompt = std::move(*tokens);
  ReadSamplingFlags(vm, &spec.sampling, &spec.stop);
  const int n_prompt = static_cast<int>(spec.prompt.size());
  // One sequence: the budget covers the whole prompt in one step.
  ef.options.max_batch_tokens = std::max(ef.options.max_batch_tokens, std::min(n_prompt, 4096));
  ef.options.max_batch_seqs = 1;
  auto engine = Engine::Create(shared_model, ef.options);
  if (!engine.ok()) return Fail("generate", std::string(engine.status().message()));

  bool done = false;
  FinishReason finish = FinishReason::kNone;
  int completion = 0;
  int64_t first_token_ns = 0;
  std::vector<TokenId> generated;
  const int64_t start_ns = MonoNowNs();
  absl::Status submit = (*engine)->Submit(std::move(spec), [&](const SeqOutput& out) {
    if (!out.text.empty()) {
      std::fwrite(out.text.data(), 1, out.text.size(), stdout);
      std::fflush(stdout);
    }
    if (first_token_ns == 0 && !out.tokens.empty()) first_token_ns = MonoNowNs();
    generated.insert(generated.end(), out.tokens.begin(), out.tokens.end());
    completion = out.completion_tokens;
    if (out.finish != FinishReason::kNone) {
      done = true;
      finish = out.finish;
    }
  });
  if (!submit.ok()) return Fail("generate", std::string(submit.message()));
  while (!done && (*engine)->Step()) {
  }
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (vm["stats"].as<bool>()) {
    const double ttft = (first_token_ns - start_ns) / 1e9;
    const double total = (MonoNowNs() - start_ns) / 1e9;
    std::cerr << absl::StrFormat(
        "prompt %d tokens, generated %d, finish %s; TTFT %.1f ms (%.1f tok/s prefill), "
        "decode %.1f tok/s, %d threads\n",
        n_prompt, completion, FinishReasonName(finish), ttft * 1e3, n_prompt / ttft,
        completion > 1 ? (completion - 1) / (total - ttft) : 0.0, (*engine)->n_threads());
  }
  if (vm["print-token-ids"].as<bool>()) {
    // Machine-readable output for comparing against other serving paths.
    nlohmann::ordered_json j;
    j["prompt_tokens"] = n_prompt;
    j["token_ids"] = generated;
    j["finish_reason"] = FinishReasonName(finish);
    std::cerr << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace
PDS_COMMAND(generate, "stream a generation from a local model (no servers)", RunGenerate);
}  // namespace pdserve::cli
