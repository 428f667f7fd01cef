#include "tests/unit/gguf/test_files.h"

#include "common/check.h"

namespace pdserve::gguf::testing {

std::string Bytes(size_t n, uint8_t seed) {
  std::string out(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : out) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

GgufWriter SmallModelWriter() {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetString("general.name", "tiny");
  w.SetUint32("llama.block_count", 1);
  w.SetUint64("llama.embedding_length", 4);
  w.SetRaw("llama.attention.head_count", ValueType::kUint8, std::string(1, '\x02'));
  w.SetInt32("llama.attention.head_count_kv", 1);
  w.SetFloat32("llama.rope.freq_base", 10000.0f);
  w.SetBool("tokenizer.ggml.add_bos_token", true);
  w.SetStringArray("tokenizer.ggml.tokens", {"<s>", "a", "b", "ab"});
  w.SetInt32Array("tokenizer.ggml.token_type", {3, 1, 1, 1});
  w.AddTensor("tok", kernels::DType::kF32, {4, 8}, Bytes(4 * 8 * 4, 1));
  w.AddTensor("blk.0.w", kernels::DType::kQ4_1, {64, 2}, Bytes(2 * 2 * 20, 2));
  w.AddTensor("norm", kernels::DType::kF16, {16}, Bytes(16 * 2, 3));
  return w;
}

std::string SmallModel() { return SmallModelWriter().Serialize(); }

std::string SmallVocab() {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetString("tokenizer.ggml.model", "gpt2");
  w.SetString("tokenizer.ggml.pre", "smollm");
  w.SetStringArray("tokenizer.ggml.tokens", {"<|endoftext|>", "h", "e", "he", "\xc4\xa0"});
  w.SetFloat32Array("tokenizer.ggml.scores", {0, -1, -2, -3, -4});
  w.SetInt32Array("tokenizer.ggml.token_type", {3, 1, 1, 1, 1});
  w.SetStringArray("tokenizer.ggml.merges", {"h e"});
  w.SetUint32("tokenizer.ggml.bos_token_id", 0);
  w.SetUint32("tokenizer.ggml.eos_token_id", 0);
  w.SetString("tokenizer.chat_template", "{{ messages }}");
  return w.Serialize();
}

std::string AllValueTypes() {
  GgufWriter w(64);
  w.SetRaw("t.u8", ValueType::kUint8, std::string(1, '\xc8'));
  w.SetRaw("t.i8", ValueType::kInt8, std::string(1, '\xfb'));
  w.SetRaw("t.u16", ValueType::kUint16, std::string("\x34\x12", 2));
  w.SetRaw("t.i16", ValueType::kInt16, std::string("\xfe\xff", 2));
  w.SetUint32("t.u32", 4000000000u);
  w.SetInt32("t.i32", -7);
  w.SetFloat32("t.f32", 0.5f);
  w.SetBool("t.bool", false);
  w.SetString("t.str", "h\xc3\xa9llo");
  w.SetUint64("t.u64", ~uint64_t{0});
  w.SetInt64("t.i64", INT64_MIN);
  w.SetFloat64("t.f64", -2.25);
  w.SetStringArray("a.str", {"x", "", "y\xe2\x82\xac"});
  w.SetInt32Array("a.i32", {1, -2, 3});
  w.SetFloat32Array("a.f32", {1.5f, -0.25f});
  w.SetRawArray("a.u8", ValueType::kUint8, 3, std::string("\x01\x02\xff", 3));
  w.SetRawArray("a.u64", ValueType::kUint64, 1, std::string(8, '\xff'));
  w.SetRawArray("a.bool", ValueType::kBool, 2, std::string("\x01\x00", 2));
  w.SetRawArray("a.f64", ValueType::kFloat64, 0, "");
  w.AddTensor("x", kernels::DType::kF32, {3}, Bytes(12, 9));
  return w.Serialize();
}

namespace {
size_t FindLengthPrefixed(const std::string& file, std::string_view s) {
  std::string needle(8, '\0');
  const uint64_t len = s.size();
  std::memcpy(needle.data(), &len, 8);
  needle.append(s);
  const size_t at = file.find(needle);
  PDS_CHECK(at != std::string::npos) << "'" << s << "' not in file";
  PDS_CHECK(file.find(needle, at + 1) == std::string::npos) << "'" << s << "' twice in file";
  return at + needle.size();
}
}  // namespace

size_t TensorInfoFieldsAt(const std::string& file, std::string_view name) {
  return FindLengthPrefixed(file, name);
}

TensorInfoFields FindTensorInfo(const std::string& file, std::string_view name) {
  TensorInfoFields f;
  f.n_dims = TensorInfoFieldsAt(file, name);
  f.dims = f.n_dims + 4;
  f.type = f.dims + 8 * Peek<uint32_t>(file, f.n_dims);
  f.offset = f.type + 4;
  return f;
}

size_t KeyValueAt(const std::string& file, std::string_view key) {
  return FindLengthPrefixed(file, key);
}

}  // namespace pdserve::gguf::testing
