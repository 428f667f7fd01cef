// `pdserve inspect`: runs the real binary on synthesized and broken files.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/gguf/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/gguf/test_files.h"

namespace pdserve::gguf {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

struct Result {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "." + std::to_string(getpid())))
      .string();
}

Result Inspect(const std::string& model) {
  const std::string out_path = TempPath("inspect_out");
  const std::string err_path = TempPath("inspect_err");
  const std::string cmd = std::string("'") + PDSERVE_BIN + "' inspect --model '" + model + "' >'" +
                          out_path + "' 2>'" + err_path + "'";
  const int status = std::system(cmd.c_str());
  Result r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadAll(out_path);
  r.err = ReadAll(err_path);
  unlink(out_path.c_str());
  unlink(err_path.c_str());
  return r;
}

std::string WriteTemp(const std::string& name, const std::string& bytes) {
  const std::string path = TempPath(name) + ".gguf";
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(InspectTest, PrintsHeaderHyperparametersAndTensors) {
  const std::string path = WriteTemp("inspect_small", testing::SmallModel());
  Result r = Inspect(path);
  unlink(path.c_str());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_THAT(r.out, StartsWith("file: " + path +
                                "\nversion: 3\nalignment: 32\nmetadata: 10\n"
                                "architecture: llama\nname: tiny\nlayers: 1\nwidth: 4\nheads: 2\n"
                                "kv_heads: 1\nffn_width: -\n"));
  EXPECT_THAT(r.out, HasSubstr("\nvocab: 4\ntensors: 3\ntensor_types: f32=1 f16=1 q4_1=1\n"
                               "tensor_bytes: 240 (240 B)\n"));
  EXPECT_THAT(r.out, HasSubstr("\ntokenizer.add_bos: true\ntokenizer.chat_template: no\n"));
  EXPECT_THAT(r.out, HasSubstr("\nblk.0.w  q4_1     [64, 2]\n"));
  EXPECT_THAT(r.out, HasSubstr("\nnorm     f16      [16]\n"));
}

TEST(InspectTest, VocabOnlyFile) {
  const std::string path = WriteTemp("inspect_vocab", testing::SmallVocab());
  Result r = Inspect(path);
  unlink(path.c_str());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\nlayers: -\n"));
  EXPECT_THAT(r.out, HasSubstr("\ntensors: 0\n"));
  EXPECT_THAT(r.out, HasSubstr("\ntokenizer.model: gpt2\ntokenizer.pre: smollm\n"
                               "tokenizer.vocab: 5\ntokenizer.bos_id: 0\n"));
  EXPECT_THAT(r.out, HasSubstr("\ntokenizer.chat_template: yes\n"));
}

TEST(InspectTest, BadFileIsOneErrorLine) {
  std::string bytes = testing::SmallModel();
  bytes[0] = 'X';
  const std::string path = WriteTemp("inspect_bad", bytes);
  Result r = Inspect(path);
  unlink(path.c_str());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "pdserve inspect: error: gguf: bad magic 0x58475546 (not a GGUF file) in '" +
                       path + "'\n");
}

TEST(InspectTest, MissingFile) {
  Result r = Inspect("/nonexistent/m.gguf");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "pdserve inspect: error: gguf: cannot open '/nonexistent/m.gguf': No such file or "
            "directory\n");
}

TEST(InspectTest, HyperparameterOfTheWrongType) {
  GgufWriter w = testing::SmallModelWriter();
  w.SetString("llama.block_count", "thirty");
  const std::string path = WriteTemp("inspect_wrong_type", w.Serialize());
  Result r = Inspect(path);
  unlink(path.c_str());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err,
            "pdserve inspect: error: gguf: key 'llama.block_count' has type string, expected an "
            "unsigned integer\n");
}

TEST(InspectTest, RealModel) {
  if (!std::filesystem::exists(PDSERVE_MODEL_PATH)) {
    GTEST_SKIP() << PDSERVE_MODEL_PATH << " is missing; run scripts/fetch_model.sh";
  }
  Result r = Inspect(PDSERVE_MODEL_PATH);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\narchitecture: llama\n"));
  EXPECT_THAT(r.out, HasSubstr("\nlayers: 30\nwidth: 576\nheads: 9\nkv_heads: 3\n"));
  EXPECT_THAT(r.out, HasSubstr("\nvocab: 49152\ntensors: 272\n"));
  EXPECT_THAT(r.out, HasSubstr("\ntoken_embd.weight "));
}

}  // namespace
}  // namespace pdserve::gguf
