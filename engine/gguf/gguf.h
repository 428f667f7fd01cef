// GGUF reader (versions 2 and 3): mmaps the file and exposes metadata and
// tensor infos. Every count, length, size and offset is checked against the
// file before use; a malformed or hostile file yields an error that names
// what is wrong, never a crash or an out-of-bounds read.
//
// Format decisions (beyond the spec's letter):
//  - v2 and v3 share one little-endian layout (v3 only added big-endian
//    files); big-endian files and v1 (32-bit counts) are rejected.
//  - Nested arrays (an array whose element type is array) are rejected: no
//    model uses them and the spec leaves their layout ambiguous.
//  - Keys and tensor names must be non-empty, valid UTF-8 and unique. String
//    values are not validated (tokenizer vocabularies may hold raw bytes).
//  - Bool values must be 0 or 1.
//  - `general.alignment` may have any integer type; its value must be a
//    non-zero power of two that fits uint32.
//  - Tensors have 1..max_dims dimensions, each in [1, INT64_MAX]; their data
//    lies inside the file, at offsets that are multiples of the alignment,
//    and no two tensors overlap.
//  - Every parse error is InvalidArgument ("gguf: ..." naming the item and,
//    where it helps, the byte offset); Open's OS errors keep their errno code
//    (NotFound, PermissionDenied, ...).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace pdserve::gguf {

// GGUF metadata value types, numbered as in the file.
enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
const char* ValueTypeName(ValueType t);

// Limits that keep a hostile file from making us allocate or loop without
// bound. Defaults fit every real model we know of with a wide margin.
struct ReadLimits {
  uint64_t max_string_bytes = 64ull << 20;   // one string
  uint64_t max_array_elements = 1ull << 24;  // one array (vocab ~ 256k)
  uint64_t max_kv_count = 1ull << 16;
  uint64_t max_tensor_count = 1ull << 20;
  uint32_t max_dims = 4;
};

// A metadata value. Strings and array payloads point into the mapped file.
class Value {
 public:
  ValueType type() const { return type_; }
  // Scalars.
  bool is_integer() const;  // any of the 8 integer widths
  bool is_float() const { return type_ == ValueType::kFloat32 || type_ == ValueType::kFloat64; }
  // Arrays.
  ValueType array_type() const { return array_type_; }
  uint64_t array_size() const { return array_size_; }

  // Scalar accessors; nullopt when the type or the value does not fit.
  std::optional<uint64_t> AsUint() const;  // integer >= 0
  std::optional<int64_t> AsInt() const;    // integer within int64
  std::optional<double> AsDouble() const;  // float or integer
  std::optional<bool> AsBool() const;
  std::optional<std::string_view> AsString() const;

  // Array element accessors; nullopt when not an array of a fitting type or
  // when i >= array_size().
  const std::vector<std::string_view>& array_strings() const { return strings_; }
  std::optional<uint64_t> ArrayUintAt(uint64_t i) const;
  std::optional<int64_t> ArrayIntAt(uint64_t i) const;
  std::optional<double> ArrayDoubleAt(uint64_t i) const;  // float or integer elements
  std::optional<bool> ArrayBoolAt(uint64_t i) const;

 private:
  friend class GgufFile;
  friend class ValueAccess;
  ValueType type_ = ValueType::kUint8;
  // Scalar payload; integers widened (sign-aware) into i64/u64.
  int64_t i64_ = 0;
  uint64_t u64_ = 0;
  double f64_ = 0;
  bool is_signed_ = false;
  std::string_view str_;
  // Array payload.
  ValueType array_type_ = ValueType::kUint8;
  uint64_t array_size_ = 0;
  const uint8_t* array_data_ = nullptr;    // first element (not for string arrays)
  std::vector<std::string_view> strings_;  // string arrays, parsed once
};

struct Metadatum {
  std::string_view key;
  Value value;
};

struct TensorInfo {
  std::string_view name;
  std::vector<int64_t> dims;  // dims[0] is the fastest-varying (row length)
  kernels::DType type = kernels::DType::kF32;
  uint64_t offset = 0;  // from the start of the data section
  int64_t n_elements = 0;
  int64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // inside the mapping, n_bytes long
};

// Immutable once parsed, so concurrent readers need no locking. Views and
// pointers it hands out live as long as the GgufFile. An mmap'd file must not
// be truncated while open (the kernel would raise SIGBUS on access).
class GgufFile {
 public:
  // mmaps `path` read-only and parses it.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path,
                                                        const ReadLimits& limits = {});
  // Parses an in-memory image (copied); for tests and fuzzing.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBytes(std::string_view bytes,
                                                             const ReadLimits& limits = {});
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return path_; }
  uint64_t file_size() const { return size_; }
  // Start of the tensor data section (aligned); in a file without tensors it
  // may lie past file_size().
  uint64_t data_offset() const { return data_offset_; }

  const std::vector<Metadatum>& metadata() const { return metadata_; }
  const Value* Find(std::string_view key) const;
  bool Has(std::string_view key) const { return Find(key) != nullptr; }

  // Typed getters. NotFound when the key is absent; InvalidArgument naming
  // the key and the actual type when the type does not fit. Integer getters
  // accept any integer width whose value fits the requested type.
  absl::StatusOr<std::string_view> GetString(std::string_view key) const;
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;  // float or integer
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::vector<std::string_view>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;

  // The same, with a default when the key is absent (a wrong type is still
  // an error).
  absl::StatusOr<std::string_view> GetStringOr(std::string_view key, std::string_view def) const;
  absl::StatusOr<uint64_t> GetUintOr(std::string_view key, uint64_t def) const;
  absl::StatusOr<double> GetFloatOr(std::string_view key, double def) const;
  absl::StatusOr<bool> GetBoolOr(std::string_view key, bool def) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;
  absl::Status Parse(const ReadLimits& limits);

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  void* mapping_ = nullptr;         // mmap'd region, or nullptr
  uint8_t* owned_bytes_ = nullptr;  // FromBytes copy, 64-byte aligned like a mapping
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<Metadatum> metadata_;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string_view, size_t> metadata_index_;  // key -> metadata_ index
  absl::flat_hash_map<std::string_view, size_t> tensor_index_;    // name -> tensors_ index
};

}  // namespace pdserve::gguf
