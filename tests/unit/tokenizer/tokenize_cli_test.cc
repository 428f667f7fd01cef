// `pdserve tokenize`: runs the real binary with text on stdin.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/tokenizer/test_util.h"

namespace pdserve {
namespace {

using ::testing::StartsWith;

struct Result {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (name + "." + std::to_string(getpid()) + ".tokcli"))
      .string();
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result Tokenize(const std::string& input, const std::string& flags) {
  const std::string in_path = TempPath("in"), out_path = TempPath("out"),
                    err_path = TempPath("err");
  std::ofstream(in_path, std::ios::binary) << input;
  const std::string cmd = std::string("'") + PDSERVE_BIN + "' tokenize " + flags + " <'" + in_path +
                          "' >'" + out_path + "' 2>'" + err_path + "'";
  const int status = std::system(cmd.c_str());
  Result r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadAll(out_path);
  r.err = ReadAll(err_path);
  for (const auto& p : {in_path, out_path, err_path}) unlink(p.c_str());
  return r;
}

const std::string& Gpt2Flag() {
  static const std::string flag =
      "--model '" + testing::TestDataPath("ggml-vocab-gpt-2.gguf") + "'";
  return flag;
}

TEST(TokenizeCliTest, PrintsIdsOnOneLine) {
  const auto vectors = testing::ReadVectors(testing::TestDataPath("ggml-vocab-gpt-2.gguf"));
  ASSERT_GT(vectors.size(), 20u);
  for (size_t i : {0, 4, 14, 20}) {
    Result r = Tokenize(vectors[i].text, Gpt2Flag());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::string expected;
    for (TokenId id : vectors[i].ids) {
      if (!expected.empty()) expected += ' ';
      expected += std::to_string(id);
    }
    EXPECT_EQ(r.out, expected + "\n") << "text '" << vectors[i].text << "'";
  }
  EXPECT_EQ(Tokenize("", Gpt2Flag()).out, "\n");
}

TEST(TokenizeCliTest, SpecialFlagParsesSpecialTokens) {
  EXPECT_EQ(Tokenize("<|endoftext|>", Gpt2Flag() + " --special").out, "50256\n");
  EXPECT_NE(Tokenize("<|endoftext|>", Gpt2Flag()).out, "50256\n");
}

TEST(TokenizeCliTest, ErrorsAreOneLineAndExitOne) {
  for (const auto& [input, flags] : std::vector<std::pair<std::string, std::string>>{
           {"ok \xff bad", Gpt2Flag()},
           {"text", "--model '/nonexistent/model.gguf'"},
       }) {
    Result r = Tokenize(input, flags);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.out, "");
    EXPECT_THAT(r.err, StartsWith("pdserve tokenize: error: "));
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

}  // namespace
}  // namespace pdserve
