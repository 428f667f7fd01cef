#include "tests/unit/tokenizer/test_util.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_split.h"
#include "engine/tokenizer/unicode.h"
#include "gtest/gtest.h"

namespace pdserve::testing {

std::string TestDataPath(const std::string& name) {
  return std::string(PDSERVE_TESTDATA_DIR) + "/tokenizer/" + name;
}

std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& path) {
  auto file = gguf::GgufFile::Open(path);
  EXPECT_TRUE(file.ok()) << path << ": " << file.status();
  if (!file.ok()) return nullptr;
  auto tok = Tokenizer::FromGguf(**file);
  EXPECT_TRUE(tok.ok()) << path << ": " << tok.status();
  if (!tok.ok()) return nullptr;
  return *std::move(tok);
}

namespace {
std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

std::vector<VocabVector> ReadVectors(const std::string& gguf_path) {
  const std::string inp = ReadFile(gguf_path + ".inp");
  const std::string out = ReadFile(gguf_path + ".out");
  // Each string ends with "\n__ggml_vocab_test__\n"; the file ends with one.
  std::vector<std::string> texts = absl::StrSplit(inp, "\n__ggml_vocab_test__\n");
  EXPECT_TRUE(!texts.empty() && texts.back().empty()) << "unexpected .inp layout";
  if (!texts.empty()) texts.pop_back();
  std::vector<std::string> lines = absl::StrSplit(out, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  EXPECT_EQ(texts.size(), lines.size());
  std::vector<VocabVector> vectors;
  for (size_t i = 0; i < texts.size() && i < lines.size(); ++i) {
    VocabVector v{texts[i], {}};
    for (absl::string_view field : absl::StrSplit(lines[i], ' ', absl::SkipEmpty())) {
      v.ids.push_back(std::stoi(std::string(field)));
    }
    vectors.push_back(std::move(v));
  }
  return vectors;
}

int SyntheticVocab::Add(const std::string& text, int32_t type, float score) {
  tokens.push_back(text);
  if (!types.empty() || type != 1) {
    types.resize(tokens.size() - 1, 1);
    types.push_back(type);
  }
  if (!scores.empty() || score != 0.0f) {
    scores.resize(tokens.size() - 1, 0.0f);
    scores.push_back(score);
  }
  return static_cast<int>(tokens.size()) - 1;
}

std::unique_ptr<gguf::GgufFile> SyntheticVocab::ToGguf() const {
  gguf::GgufWriter w;
  w.SetString("general.architecture", "test");
  w.SetString("tokenizer.ggml.model", model);
  if (!pre.empty()) w.SetString("tokenizer.ggml.pre", pre);
  w.SetStringArray("tokenizer.ggml.tokens", tokens);
  if (!types.empty()) {
    std::vector<int32_t> t = types;
    t.resize(tokens.size(), 1);
    w.SetInt32Array("tokenizer.ggml.token_type", t);
  }
  if (!scores.empty()) {
    std::vector<float> s = scores;
    s.resize(tokens.size(), 0.0f);
    w.SetFloat32Array("tokenizer.ggml.scores", s);
  }
  if (model == "gpt2") w.SetStringArray("tokenizer.ggml.merges", merges);
  if (bos >= 0) w.SetUint32("tokenizer.ggml.bos_token_id", bos);
  if (eos >= 0) w.SetUint32("tokenizer.ggml.eos_token_id", eos);
  if (eot >= 0) w.SetUint32("tokenizer.ggml.eot_token_id", eot);
  if (unk >= 0) w.SetUint32("tokenizer.ggml.unknown_token_id", unk);
  if (add_bos >= 0) w.SetBool("tokenizer.ggml.add_bos_token", add_bos != 0);
  if (add_eos >= 0) w.SetBool("tokenizer.ggml.add_eos_token", add_eos != 0);
  if (add_space_prefix >= 0) w.SetBool("tokenizer.ggml.add_space_prefix", add_space_prefix != 0);
  auto file = gguf::GgufFile::FromBytes(w.Serialize());
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? *std::move(file) : nullptr;
}

std::string ByteLevel(const std::string& raw) {
  std::string out;
  for (unsigned char b : raw) unicode::AppendUtf8(unicode::ByteToUnicode(b), &out);
  return out;
}

void AddByteAlphabet(SyntheticVocab* v) {
  for (int b = 0; b < 256; ++b) v->Add(ByteLevel(std::string(1, static_cast<char>(b))));
}

std::string IdsToString(const std::vector<TokenId>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += " ";
    out += std::to_string(ids[i]);
  }
  return out + "]";
}

}  // namespace pdserve::testing
