// Writes the gguf_fuzz seed corpus: small valid files covering every value
// type, tensors, a vocab-only file, v2 and a non-default alignment.
//   gguf_make_corpus tests/fuzz/corpus/gguf
#include <cstdio>
#include <string>

#include "engine/gguf/gguf_writer.h"
#include "tests/unit/gguf/test_files.h"

namespace {

bool Write(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  using namespace pdserve::gguf;
  const std::string dir = argv[1];
  std::string v2 = testing::SmallModel();
  testing::Patch<uint32_t>(&v2, 4, 2);
  GgufWriter aligned(8);
  aligned.SetString("general.architecture", "llama");
  aligned.AddTensor("a", pdserve::kernels::DType::kQ8_0, {32}, testing::Bytes(34, 4));
  aligned.AddTensor("b", pdserve::kernels::DType::kI32, {3, 1, 1, 2}, testing::Bytes(24, 5));
  const std::pair<const char*, std::string> files[] = {
      {"small_model.gguf", testing::SmallModel()},
      {"small_vocab.gguf", testing::SmallVocab()},
      {"all_value_types.gguf", testing::AllValueTypes()},
      {"small_model_v2.gguf", v2},
      {"align8.gguf", aligned.Serialize()},
  };
  for (const auto& [name, bytes] : files) {
    const std::string path = dir + "/" + name;
    if (!Write(path, bytes)) {
      std::perror(path.c_str());
      return 1;
    }
  }
  return 0;
}
