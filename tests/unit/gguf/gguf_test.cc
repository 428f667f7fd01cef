// GGUF writer/reader round trips and reading real vocab-only files.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>

#include "engine/gguf/gguf.h"
#include "engine/gguf/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/gguf/test_files.h"

namespace pdserve::gguf {
namespace {

using testing::Bytes;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<GgufFile> Parse(const std::string& bytes) {
  auto file = GgufFile::FromBytes(bytes);
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? std::move(file).value() : nullptr;
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (name + "." + std::to_string(getpid()) + ".gguf"))
      .string();
}

TEST(GgufRoundTrip, EveryScalarType) {
  auto f = Parse(testing::AllValueTypes());
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->Find("t.u8")->type(), ValueType::kUint8);
  EXPECT_EQ(*f->GetUint("t.u8"), 200u);
  EXPECT_EQ(*f->GetInt("t.u8"), 200);
  EXPECT_EQ(f->Find("t.i8")->type(), ValueType::kInt8);
  EXPECT_EQ(*f->GetInt("t.i8"), -5);
  EXPECT_EQ(*f->GetUint("t.u16"), 0x1234u);
  EXPECT_EQ(*f->GetInt("t.i16"), -2);
  EXPECT_EQ(*f->GetUint("t.u32"), 4000000000u);
  EXPECT_EQ(*f->GetInt("t.i32"), -7);
  EXPECT_EQ(*f->GetFloat("t.f32"), 0.5);
  EXPECT_EQ(*f->GetBool("t.bool"), false);
  EXPECT_EQ(*f->GetString("t.str"), "h\xc3\xa9llo");
  EXPECT_EQ(*f->GetUint("t.u64"), ~uint64_t{0});
  EXPECT_EQ(*f->GetInt("t.i64"), INT64_MIN);
  EXPECT_EQ(*f->GetFloat("t.f64"), -2.25);
  // Integers read as floats; floats never as integers.
  EXPECT_EQ(*f->GetFloat("t.i32"), -7.0);
  EXPECT_FALSE(f->GetUint("t.f32").ok());
  for (const Metadatum& m : f->metadata()) {
    EXPECT_EQ(f->Find(m.key), &m.value) << m.key;
  }
}

TEST(GgufRoundTrip, IntegerGettersCheckTheValueFits) {
  auto f = Parse(testing::AllValueTypes());
  ASSERT_NE(f, nullptr);
  absl::StatusOr<uint64_t> neg = f->GetUint("t.i8");
  EXPECT_EQ(neg.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(neg.status().message()), HasSubstr("'t.i8' is -5"));
  absl::StatusOr<int64_t> big = f->GetInt("t.u64");
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(big.status().message()), HasSubstr("18446744073709551615"));
  EXPECT_FALSE(f->GetUint("t.i64").ok());
}

TEST(GgufRoundTrip, Arrays) {
  auto f = Parse(testing::AllValueTypes());
  ASSERT_NE(f, nullptr);
  EXPECT_THAT(*f->GetStringArray("a.str"), ElementsAre("x", "", "y\xe2\x82\xac"));
  EXPECT_THAT(*f->GetIntArray("a.i32"), ElementsAre(1, -2, 3));
  EXPECT_THAT(*f->GetFloatArray("a.f32"), ElementsAre(1.5f, -0.25f));
  EXPECT_THAT(*f->GetIntArray("a.u8"), ElementsAre(1, 2, 255));
  EXPECT_THAT(*f->GetFloatArray("a.u8"), ElementsAre(1.0f, 2.0f, 255.0f));
  EXPECT_TRUE(f->GetFloatArray("a.f64")->empty());
  const Value* b = f->Find("a.bool");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->array_type(), ValueType::kBool);
  EXPECT_EQ(b->array_size(), 2u);
  EXPECT_EQ(b->ArrayBoolAt(0), true);
  EXPECT_EQ(b->ArrayBoolAt(1), false);
  EXPECT_EQ(b->ArrayBoolAt(2), std::nullopt);
  const Value* u64 = f->Find("a.u64");
  EXPECT_EQ(u64->ArrayUintAt(0), ~uint64_t{0});
  EXPECT_EQ(u64->ArrayIntAt(0), std::nullopt);
  absl::StatusOr<std::vector<int64_t>> too_big = f->GetIntArray("a.u64");
  EXPECT_THAT(std::string(too_big.status().message()),
              HasSubstr("element #0 is 18446744073709551615"));
}

TEST(GgufRoundTrip, GetterErrorsNameKeyAndType) {
  auto f = Parse(testing::AllValueTypes());
  ASSERT_NE(f, nullptr);
  absl::StatusOr<std::string_view> missing = f->GetString("no.such.key");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("'no.such.key' not found"));
  absl::StatusOr<std::string_view> wrong = f->GetString("t.u32");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong.status().message()),
              HasSubstr("'t.u32' has type uint32, expected string"));
  EXPECT_THAT(std::string(f->GetStringArray("a.i32").status().message()),
              HasSubstr("'a.i32' has type array of int32, expected array of string"));
  EXPECT_THAT(std::string(f->GetIntArray("a.str").status().message()),
              HasSubstr("array of string"));
  EXPECT_FALSE(f->GetBool("t.u8").ok());
  EXPECT_FALSE(f->GetFloat("t.str").ok());
}

TEST(GgufRoundTrip, DefaultsOnlyWhenAbsent) {
  auto f = Parse(testing::AllValueTypes());
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(*f->GetUintOr("missing", 42), 42u);
  EXPECT_EQ(*f->GetBoolOr("missing", true), true);
  EXPECT_EQ(*f->GetFloatOr("missing", 1.5), 1.5);
  EXPECT_EQ(*f->GetStringOr("missing", "d"), "d");
  EXPECT_EQ(*f->GetUintOr("t.u16", 42), 0x1234u);
  EXPECT_FALSE(f->GetUintOr("t.str", 42).ok());
  EXPECT_FALSE(f->GetBoolOr("t.u8", true).ok());
  EXPECT_FALSE(f->GetStringOr("t.u8", "d").ok());
  EXPECT_FALSE(f->GetFloatOr("t.str", 1.0).ok());
}

TEST(GgufRoundTrip, SettingAKeyTwiceReplacesIt) {
  GgufWriter w;
  w.SetUint32("k", 1);
  w.SetString("other", "o");
  w.SetString("k", "two");
  auto f = Parse(w.Serialize());
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(f->metadata().size(), 2u);
  EXPECT_EQ(f->metadata()[0].key, "k");
  EXPECT_EQ(*f->GetString("k"), "two");
}

TEST(GgufRoundTrip, Tensors) {
  const std::string bytes = testing::SmallModel();
  auto f = Parse(bytes);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->data_offset() % 32, 0u);
  EXPECT_EQ(f->file_size(), bytes.size());
  ASSERT_EQ(f->tensors().size(), 3u);

  const TensorInfo* tok = f->FindTensor("tok");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->type, kernels::DType::kF32);
  EXPECT_THAT(tok->dims, ElementsAre(4, 8));
  EXPECT_EQ(tok->n_elements, 32);
  EXPECT_EQ(tok->n_bytes, 128);
  EXPECT_EQ(tok->offset, 0u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(tok->data), tok->n_bytes), Bytes(128, 1));

  const TensorInfo* w = f->FindTensor("blk.0.w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->type, kernels::DType::kQ4_1);
  EXPECT_THAT(w->dims, ElementsAre(64, 2));
  EXPECT_EQ(w->n_bytes, 80);
  EXPECT_EQ(w->offset, 128u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(w->data), w->n_bytes), Bytes(80, 2));

  const TensorInfo* norm = f->FindTensor("norm");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->offset, 224u);  // 128 + 80 rounded up to 32
  EXPECT_EQ(norm->n_bytes, 32);
  for (const TensorInfo& t : f->tensors()) {
    EXPECT_EQ(t.offset % f->alignment(), 0u) << t.name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u) << t.name;
  }
  EXPECT_EQ(f->FindTensor("nope"), nullptr);
  EXPECT_EQ(*f->GetUint("llama.attention.head_count"), 2u);
  EXPECT_EQ(*f->GetInt("llama.attention.head_count_kv"), 1);
  EXPECT_EQ(*f->GetUint("llama.embedding_length"), 4u);
}

TEST(GgufRoundTrip, CustomAlignmentIsWrittenAndHonoured) {
  for (uint64_t alignment : {1u, 8u, 64u, 4096u}) {
    GgufWriter w(alignment);
    w.SetString("general.name", "aligned");
    w.AddTensor("a", kernels::DType::kF32, {3}, Bytes(12, 1));
    w.AddTensor("b", kernels::DType::kI8, {5}, Bytes(5, 2));
    w.AddTensor("c", kernels::DType::kF16, {7}, Bytes(14, 3));
    auto f = Parse(w.Serialize());
    ASSERT_NE(f, nullptr) << alignment;
    EXPECT_EQ(f->alignment(), alignment);
    if (alignment != 32) {
      EXPECT_EQ(*f->GetUint("general.alignment"), alignment);
    }
    EXPECT_EQ(f->data_offset() % alignment, 0u);
    uint64_t expected_offset = 0;
    for (const TensorInfo& t : f->tensors()) {
      EXPECT_EQ(t.offset, expected_offset) << t.name << " alignment " << alignment;
      expected_offset += (t.n_bytes + alignment - 1) / alignment * alignment;
    }
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(f->FindTensor("c")->data), 14),
              Bytes(14, 3));
  }
}

TEST(GgufRoundTrip, Version2IsAccepted) {
  std::string bytes = testing::SmallModel();
  testing::Patch<uint32_t>(&bytes, 4, 2);
  auto f = Parse(bytes);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->tensors().size(), 3u);
}

TEST(GgufRoundTrip, EmptyFile) {
  GgufWriter w;
  auto f = Parse(w.Serialize());
  ASSERT_NE(f, nullptr);
  EXPECT_TRUE(f->metadata().empty());
  EXPECT_TRUE(f->tensors().empty());
}

TEST(GgufOpen, ReadsAFileFromDiskTheSameAsFromBytes) {
  const std::string path = TempPath("gguf_open");
  ASSERT_TRUE(testing::SmallModelWriter().WriteFile(path).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->path(), path);
  EXPECT_EQ((*f)->file_size(), testing::SmallModel().size());
  EXPECT_EQ(*(*f)->GetString("general.name"), "tiny");
  EXPECT_THAT(*(*f)->GetStringArray("tokenizer.ggml.tokens"), ElementsAre("<s>", "a", "b", "ab"));
  const TensorInfo* w = (*f)->FindTensor("blk.0.w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(w->data), w->n_bytes), Bytes(80, 2));
  unlink(path.c_str());
}

TEST(GgufOpen, WriteFileReportsAnUnwritablePath) {
  absl::Status s = testing::SmallModelWriter().WriteFile("/nonexistent-dir/x.gguf");
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("cannot create '/nonexistent-dir/x.gguf'"));
}

struct VocabCase {
  const char* file;
  const char* model;
  size_t n_tokens;
};

class GgufVocabTest : public ::testing::TestWithParam<VocabCase> {};

TEST_P(GgufVocabTest, ReadsTokenizerMetadata) {
  const VocabCase& c = GetParam();
  const std::string path = std::string(PDSERVE_TESTDATA_DIR) + "/tokenizer/" + c.file;
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_TRUE(g.tensors().empty());
  EXPECT_EQ(*g.GetString("tokenizer.ggml.model"), c.model);
  absl::StatusOr<std::vector<std::string_view>> tokens = g.GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->size(), c.n_tokens);
  absl::StatusOr<std::vector<int64_t>> types = g.GetIntArray("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.ok()) << types.status();
  EXPECT_EQ(types->size(), c.n_tokens);
  if (g.Has("tokenizer.ggml.scores")) {
    EXPECT_EQ(g.GetFloatArray("tokenizer.ggml.scores")->size(), c.n_tokens);
  }
  if (g.Has("tokenizer.ggml.merges")) {
    EXPECT_GT(g.GetStringArray("tokenizer.ggml.merges")->size(), 1000u);
  }
  absl::StatusOr<uint64_t> bos = g.GetUintOr("tokenizer.ggml.bos_token_id", 0);
  ASSERT_TRUE(bos.ok()) << bos.status();
  EXPECT_LT(*bos, c.n_tokens);
}

INSTANTIATE_TEST_SUITE_P(VocabFiles, GgufVocabTest,
                         ::testing::Values(VocabCase{"ggml-vocab-gpt-2.gguf", "gpt2", 50257},
                                           VocabCase{"ggml-vocab-starcoder.gguf", "gpt2", 49152},
                                           VocabCase{"ggml-vocab-llama-spm.gguf", "llama", 32000}));

TEST(GgufFuzzCorpus, SeedsAreValidFiles) {
  const std::filesystem::path dir =
      std::filesystem::path(PDSERVE_SOURCE_DIR) / "tests/fuzz/corpus/gguf";
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(entry.path().string());
    EXPECT_TRUE(f.ok()) << f.status();
    ++n;
  }
  EXPECT_GE(n, 3);
}

}  // namespace
}  // namespace pdserve::gguf
