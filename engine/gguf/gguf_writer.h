// GGUF writer (version 3), so tests can synthesize small models and
// vocab-only files, and tools can write fixtures.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/gguf/gguf.h"
#include "kernels/dtype.h"

namespace pdserve::gguf {

// Setting a key twice replaces its value in place; tests that need
// malformed files (duplicates, bad offsets) patch the serialized bytes.
// Misuse (tensor data of the wrong size, an alignment that is not a power of
// two) is a programmer error and fails a CHECK.
class GgufWriter {
 public:
  // Alignment of the data section and of every tensor; when it is not the
  // default 32, Serialize() also writes `general.alignment` (uint32) unless
  // the caller set that key.
  explicit GgufWriter(uint64_t alignment = 32) : alignment_(alignment) {}

  void SetUint32(std::string_view key, uint32_t v);
  void SetInt32(std::string_view key, int32_t v);
  void SetUint64(std::string_view key, uint64_t v);
  void SetInt64(std::string_view key, int64_t v);
  void SetFloat32(std::string_view key, float v);
  void SetFloat64(std::string_view key, double v);
  void SetBool(std::string_view key, bool v);
  void SetString(std::string_view key, std::string_view v);
  void SetStringArray(std::string_view key, const std::vector<std::string>& v);
  void SetInt32Array(std::string_view key, const std::vector<int32_t>& v);
  void SetFloat32Array(std::string_view key, const std::vector<float>& v);
  // Any scalar type with raw little-endian payload bytes (tests of odd widths).
  // The payload is written verbatim after the type tag, unchecked, so tests
  // may also write unknown type ids or hand-made strings and arrays.
  void SetRaw(std::string_view key, ValueType type, std::string payload);
  // An array of `count` scalars of `element_type` (not string or array)
  // whose little-endian bytes are `payload`.
  void SetRawArray(std::string_view key, ValueType element_type, uint64_t count,
                   std::string payload);

  // dims[0] is the row length. `data` must be exactly the tensor's bytes.
  void AddTensor(std::string_view name, kernels::DType type, std::vector<int64_t> dims,
                 std::string data);

  std::string Serialize() const;
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Kv {
    std::string key;
    std::string encoded;  // type tag + payload
  };
  struct Tensor {
    std::string name;
    kernels::DType type;
    std::vector<int64_t> dims;
    std::string data;
  };
  void Put(std::string_view key, std::string encoded);
  uint64_t alignment_;
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace pdserve::gguf
