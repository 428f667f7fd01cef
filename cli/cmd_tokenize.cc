// pdserve tokenize: reads UTF-8 text on stdin and prints its token ids, space
// separated on one line (no BOS/EOS added). --special also recognises
// special tokens written in the text (<|im_start|>, <|endoftext|>, ...).
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"

namespace pdserve::cli {
namespace {

constexpr char kCommand[] = "tokenize";

// All of stdin, as bytes.
bool ReadStdin(std::string* out) {
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) out->append(buf, n);
  return !std::ferror(stdin);
}

int RunTokenize(int argc, char** argv) {
  po::options_description desc("tokenize flags");
  AddCommonFlags(&desc);
  desc.add_options()("model,m", po::value<std::string>()->default_value(DefaultModelPath()),
                     "GGUF file whose tokenizer to use")(
      "special", po::bool_switch(), "parse special tokens written in the text");
  po::variables_map vm;
  if (int rc = ParseFlags(argc, argv, "[--model FILE] [--special] < TEXT", desc, &vm); rc >= 0) {
    return rc;
  }

  auto file = gguf::GgufFile::Open(vm["model"].as<std::string>());
  if (!file.ok()) return Fail(kCommand, std::string(file.status().message()));
  auto tokenizer = Tokenizer::FromGguf(**file);
  if (!tokenizer.ok()) return Fail(kCommand, std::string(tokenizer.status().message()));

  std::string text;
  if (!ReadStdin(&text)) return Fail(kCommand, "cannot read standard input");
  auto ids =
      (*tokenizer)->Encode(text, {.add_special = false, .parse_special = vm["special"].as<bool>()});
  if (!ids.ok()) return Fail(kCommand, std::string(ids.status().message()));

  std::string line;
  line.reserve(ids->size() * 6 + 1);
  for (size_t i = 0; i < ids->size(); ++i) {
    if (i > 0) line += ' ';
    absl::StrAppend(&line, (*ids)[i]);
  }
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stdout);
  return 0;
}

}  // namespace

PDS_COMMAND(tokenize, "print the token ids of UTF-8 text read on stdin", RunTokenize);

}  // namespace pdserve::cli
