// Small synthesized GGUF images shared by the tests and the fuzz corpus
// generator, plus helpers to patch their bytes into malformed files.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/gguf/gguf_writer.h"

namespace pdserve::gguf::testing {

// Deterministic filler bytes for tensor data.
std::string Bytes(size_t n, uint8_t seed);

// A small model-like file: a few metadata values of several types (string,
// integers, float, bool, string and int arrays) and three tensors: "tok"
// f32 [4, 8], "blk.0.w" q4_1 [64, 2], "norm" f16 [16].
GgufWriter SmallModelWriter();
std::string SmallModel();

// A vocab-only file (no tensors) with a few tokens, scores and types.
std::string SmallVocab();

// Every value type, scalar and array, once each.
std::string AllValueTypes();

// Byte offset just past the name string of tensor `name`'s info (where its
// n_dims field starts), found by searching for the length-prefixed name.
size_t TensorInfoFieldsAt(const std::string& file, std::string_view name);
// Offsets of the fields of one tensor info.
struct TensorInfoFields {
  size_t n_dims;
  size_t dims;  // first dim
  size_t type;
  size_t offset;
};
TensorInfoFields FindTensorInfo(const std::string& file, std::string_view name);
// Offset of the value type field of key `key` (just past the key string).
size_t KeyValueAt(const std::string& file, std::string_view key);

template <typename T>
void Patch(std::string* file, size_t at, T value) {
  std::memcpy(file->data() + at, &value, sizeof(T));
}
template <typename T>
T Peek(const std::string& file, size_t at) {
  T v;
  std::memcpy(&v, file.data() + at, sizeof(T));
  return v;
}

}  // namespace pdserve::gguf::testing
