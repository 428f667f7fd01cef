#include "loadgen/workload.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include <gtest/gtest.h>

#include "absl/strings/str_split.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "loadgen/words.h"

namespace pdserve::loadgen {
namespace {

WorkloadOptions TokenIdOptions() {
  WorkloadOptions o;
  o.num_prompts = 50;
  o.random_input_len = 32;
  o.random_output_len = 8;
  o.token_ids = true;
  o.vocab_size = 1000;
  o.avoid_token_ids = {0, 1, 2};
  o.seed = 5;
  return o;
}

TEST(RandomWorkloadTest, TokenIdPromptsHaveExactLengthsAndSafeIds) {
  auto prompts = BuildWorkload(TokenIdOptions(), nullptr);
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  ASSERT_EQ(prompts->size(), 50u);
  std::set<std::string> ids;
  for (const RequestInput& p : *prompts) {
    EXPECT_EQ(p.token_ids.size(), 32u);
    EXPECT_EQ(p.input_tokens, 32);
    EXPECT_EQ(p.max_tokens, 8);
    EXPECT_TRUE(p.text.empty());
    for (int32_t id : p.token_ids) {
      EXPECT_GE(id, 3);  // 0, 1, 2 avoided
      EXPECT_LT(id, 1000);
    }
    ids.insert(p.id);
  }
  EXPECT_EQ(ids.size(), 50u);  // unique request ids
}

TEST(RandomWorkloadTest, RangeRatioBoundsLengthsAndSeedReproduces) {
  WorkloadOptions o = TokenIdOptions();
  o.random_input_len = 100;
  o.random_output_len = 10;
  o.random_range_ratio = 0.5;
  auto a = BuildWorkload(o, nullptr);
  auto b = BuildWorkload(o, nullptr);
  ASSERT_TRUE(a.ok() && b.ok());
  std::set<int> lengths;
  for (size_t i = 0; i < a->size(); ++i) {
    const RequestInput& p = (*a)[i];
    EXPECT_GE(p.input_tokens, 50);
    EXPECT_LE(p.input_tokens, 150);
    EXPECT_GE(p.max_tokens, 5);
    EXPECT_LE(p.max_tokens, 15);
    EXPECT_EQ(static_cast<int>(p.token_ids.size()), p.input_tokens);
    EXPECT_EQ(p.token_ids, (*b)[i].token_ids);
    lengths.insert(p.input_tokens);
  }
  EXPECT_GT(lengths.size(), 10u);  // really varied
  o.seed = 6;
  auto c = BuildWorkload(o, nullptr);
  EXPECT_NE((*a)[0].token_ids, (*c)[0].token_ids);
}

TEST(RandomWorkloadTest, TextPromptsAreThePlannedNumberOfWords) {
  WorkloadOptions o = TokenIdOptions();
  o.token_ids = false;
  auto prompts = BuildWorkload(o, nullptr);
  ASSERT_TRUE(prompts.ok());
  for (const RequestInput& p : *prompts) {
    EXPECT_TRUE(p.token_ids.empty());
    const std::vector<std::string> words = absl::StrSplit(p.text, ' ');
    EXPECT_EQ(static_cast<int>(words.size()), p.input_tokens);
  }
}

TEST(PrefixWorkloadTest, EachPromptStartsWithOneOfKPrefixesInEqualShares) {
  WorkloadOptions o = TokenIdOptions();
  o.name = "prefix";
  o.num_prompts = 12;
  o.prefix_len = 16;
  o.num_prefixes = 3;
  o.random_input_len = 8;
  auto prompts = BuildWorkload(o, nullptr);
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  std::map<std::vector<int32_t>, int> shares;
  std::set<std::vector<int32_t>> suffixes;
  for (const RequestInput& p : *prompts) {
    ASSERT_EQ(p.token_ids.size(), 24u);
    EXPECT_EQ(p.input_tokens, 24);
    ++shares[std::vector<int32_t>(p.token_ids.begin(), p.token_ids.begin() + 16)];
    suffixes.insert(std::vector<int32_t>(p.token_ids.begin() + 16, p.token_ids.end()));
  }
  ASSERT_EQ(shares.size(), 3u);
  for (const auto& [prefix, n] : shares) EXPECT_EQ(n, 4);
  EXPECT_EQ(suffixes.size(), 12u);
}

TEST(PrefixWorkloadTest, TextPrefixesAreSharedWords) {
  WorkloadOptions o = TokenIdOptions();
  o.name = "prefix";
  o.token_ids = false;
  o.num_prompts = 4;
  o.prefix_len = 10;
  o.num_prefixes = 1;
  auto prompts = BuildWorkload(o, nullptr);
  ASSERT_TRUE(prompts.ok());
  const std::vector<std::string> first = absl::StrSplit((*prompts)[0].text, ' ');
  for (const RequestInput& p : *prompts) {
    const std::vector<std::string> words = absl::StrSplit(p.text, ' ');
    ASSERT_EQ(words.size(), 10u + 32u);
    EXPECT_TRUE(std::equal(words.begin(), words.begin() + 10, first.begin()));
  }
}

class ShareGptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() /
             ("loadgen_sharegpt_" + std::to_string(::getpid()) + ".json"))
                .string();
  }
  void TearDown() override { std::filesystem::remove(path_); }
  void Write(const std::string& text) { std::ofstream(path_) << text; }
  std::string path_;
};

// Counts words: a stand-in tokenizer for the filters.
int32_t Words(const std::string& text) {
  return static_cast<int32_t>(
      std::vector<std::string>(absl::StrSplit(text, ' ', absl::SkipEmpty())).size());
}

TEST_F(ShareGptTest, FirstTurnIsThePromptSecondSetsTheOutputLengthAndFiltersApply) {
  Write(R"([
    {"id": "a", "conversations": [{"from": "human", "value": "one two three four five"},
                                  {"from": "gpt", "value": "a b c d e f"}]},
    {"id": "short-prompt", "conversations": [{"from": "human", "value": "hi"},
                                             {"from": "gpt", "value": "a b c d e f"}]},
    {"id": "short-reply", "conversations": [{"from": "human", "value": "one two three four"},
                                            {"from": "gpt", "value": "ok"}]},
    {"id": "one-turn", "conversations": [{"from": "human", "value": "one two three four"}]},
    {"id": "b", "conversations": [{"from": "human", "value": "w w w w w w w"},
                                  {"from": "gpt", "value": "x x x x"}, {"from": "human", "value": "more"}]}
  ])");
  WorkloadOptions o;
  o.name = "sharegpt";
  o.dataset_path = path_;
  o.num_prompts = 10;
  auto prompts = BuildWorkload(o, Words);
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  ASSERT_EQ(prompts->size(), 2u);
  std::map<std::string, std::pair<int, int>> lengths;
  for (const RequestInput& p : *prompts) lengths[p.text] = {p.input_tokens, p.max_tokens};
  EXPECT_EQ(lengths["one two three four five"], std::make_pair(5, 6));
  EXPECT_EQ(lengths["w w w w w w w"], std::make_pair(7, 4));

  o.sharegpt_output_len = 3;  // fixed output: short replies no longer matter
  prompts = BuildWorkload(o, Words);
  ASSERT_TRUE(prompts.ok());
  EXPECT_EQ(prompts->size(), 3u);
  for (const RequestInput& p : *prompts) EXPECT_EQ(p.max_tokens, 3);
}

TEST_F(ShareGptTest, BadFilesAreErrors) {
  WorkloadOptions o;
  o.name = "sharegpt";
  o.dataset_path = path_ + ".missing";
  EXPECT_EQ(BuildWorkload(o, Words).status().code(), absl::StatusCode::kNotFound);
  Write(R"({"not": "a list"})");
  o.dataset_path = path_;
  EXPECT_EQ(BuildWorkload(o, Words).status().code(), absl::StatusCode::kInvalidArgument);
  Write("[]");
  EXPECT_FALSE(BuildWorkload(o, Words).ok());
}

TEST(WorkloadOptionsTest, RejectsBadValues) {
  WorkloadOptions o = TokenIdOptions();
  EXPECT_TRUE(ValidateWorkloadOptions(o).ok());
  for (auto mutate : std::vector<std::function<void(WorkloadOptions&)>>{
           [](auto& w) { w.num_prompts = 0; }, [](auto& w) { w.random_input_len = 0; },
           [](auto& w) { w.random_output_len = 0; }, [](auto& w) { w.random_range_ratio = 1.0; },
           [](auto& w) { w.name = "bogus"; }, [](auto& w) { w.name = "sharegpt"; },
           [](auto& w) { w.name = "prefix"; }, [](auto& w) { w.vocab_size = 0; }}) {
    WorkloadOptions bad = o;
    mutate(bad);
    EXPECT_FALSE(ValidateWorkloadOptions(bad).ok());
  }
}

// The claim behind HTTP input lengths: each common word is one token (with
// or without its leading space) under a byte-level BPE vocabulary, so N
// random words are N tokens. Checked against the bundled model's tokenizer.
TEST(CommonWordsTest, RandomWordsAreOneTokenPerWordForTheBundledModel) {
  if (!std::filesystem::exists(PDSERVE_MODEL_PATH)) {
    GTEST_SKIP() << "model missing: run scripts/fetch_model.sh";
  }
  auto file = gguf::GgufFile::Open(PDSERVE_MODEL_PATH);
  ASSERT_TRUE(file.ok()) << file.status();
  auto tokenizer = Tokenizer::FromGguf(**file);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  for (std::string_view word : CommonWords()) {
    EXPECT_EQ((*tokenizer)->Encode(" " + std::string(word))->size(), 1u) << "' " << word << "'";
    EXPECT_EQ((*tokenizer)->Encode(std::string(word))->size(), 1u) << "'" << word << "'";
  }
  std::mt19937_64 rng(1);
  for (int n : {1, 32, 500}) {
    EXPECT_EQ((*tokenizer)->Encode(RandomWords(n, rng))->size(), static_cast<size_t>(n));
  }
}

}  // namespace
}  // namespace pdserve::loadgen
