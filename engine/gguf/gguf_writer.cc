#include "engine/gguf/gguf_writer.h"

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/check.h"

namespace pdserve::gguf {
namespace {

constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;
constexpr char kAlignmentKey[] = "general.alignment";

template <typename T>
void Append(std::string* out, T v) {
  static_assert(std::endian::native == std::endian::little);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out->append(bytes, sizeof(T));
}

void AppendString(std::string* out, std::string_view s) {
  Append<uint64_t>(out, s.size());
  out->append(s);
}

void AppendType(std::string* out, ValueType t) { Append<uint32_t>(out, static_cast<uint32_t>(t)); }

template <typename T>
std::string Scalar(ValueType t, T v) {
  std::string out;
  AppendType(&out, t);
  Append<T>(&out, v);
  return out;
}

template <typename T>
std::string Array(ValueType element_type, const std::vector<T>& values) {
  std::string out;
  AppendType(&out, ValueType::kArray);
  AppendType(&out, element_type);
  Append<uint64_t>(&out, values.size());
  for (const T& v : values) Append<T>(&out, v);
  return out;
}

void Pad(std::string* out, uint64_t alignment) {
  out->append((alignment - out->size() % alignment) % alignment, '\0');
}

}  // namespace

void GgufWriter::Put(std::string_view key, std::string encoded) {
  for (Kv& kv : kvs_) {
    if (kv.key == key) {
      kv.encoded = std::move(encoded);
      return;
    }
  }
  kvs_.push_back(Kv{std::string(key), std::move(encoded)});
}

void GgufWriter::SetUint32(std::string_view key, uint32_t v) {
  Put(key, Scalar(ValueType::kUint32, v));
}
void GgufWriter::SetInt32(std::string_view key, int32_t v) {
  Put(key, Scalar(ValueType::kInt32, v));
}
void GgufWriter::SetUint64(std::string_view key, uint64_t v) {
  Put(key, Scalar(ValueType::kUint64, v));
}
void GgufWriter::SetInt64(std::string_view key, int64_t v) {
  Put(key, Scalar(ValueType::kInt64, v));
}
void GgufWriter::SetFloat32(std::string_view key, float v) {
  Put(key, Scalar(ValueType::kFloat32, v));
}
void GgufWriter::SetFloat64(std::string_view key, double v) {
  Put(key, Scalar(ValueType::kFloat64, v));
}
void GgufWriter::SetBool(std::string_view key, bool v) {
  Put(key, Scalar<uint8_t>(ValueType::kBool, v ? 1 : 0));
}

void GgufWriter::SetString(std::string_view key, std::string_view v) {
  std::string out;
  AppendType(&out, ValueType::kString);
  AppendString(&out, v);
  Put(key, std::move(out));
}

void GgufWriter::SetStringArray(std::string_view key, const std::vector<std::string>& v) {
  std::string out;
  AppendType(&out, ValueType::kArray);
  AppendType(&out, ValueType::kString);
  Append<uint64_t>(&out, v.size());
  for (const std::string& s : v) AppendString(&out, s);
  Put(key, std::move(out));
}

void GgufWriter::SetInt32Array(std::string_view key, const std::vector<int32_t>& v) {
  Put(key, Array(ValueType::kInt32, v));
}

void GgufWriter::SetFloat32Array(std::string_view key, const std::vector<float>& v) {
  Put(key, Array(ValueType::kFloat32, v));
}

void GgufWriter::SetRaw(std::string_view key, ValueType type, std::string payload) {
  std::string out;
  AppendType(&out, type);
  out += payload;
  Put(key, std::move(out));
}

void GgufWriter::SetRawArray(std::string_view key, ValueType element_type, uint64_t count,
                             std::string payload) {
  std::string out;
  AppendType(&out, ValueType::kArray);
  AppendType(&out, element_type);
  Append<uint64_t>(&out, count);
  out += payload;
  Put(key, std::move(out));
}

void GgufWriter::AddTensor(std::string_view name, kernels::DType type, std::vector<int64_t> dims,
                           std::string data) {
  const kernels::DTypeInfo* info = kernels::FindDType(static_cast<uint32_t>(type));
  PDS_CHECK(info != nullptr) << "unknown dtype " << static_cast<uint32_t>(type);
  PDS_CHECK(!dims.empty()) << "tensor '" << name << "' has no dimensions";
  int64_t n_bytes = -1;
  for (size_t d = 0; d < dims.size(); ++d) {
    PDS_CHECK_GT(dims[d], 0) << "tensor '" << name << "' dimension " << d;
    n_bytes = d == 0 ? kernels::RowBytes(type, dims[0]) : n_bytes * dims[d];
    PDS_CHECK_GE(n_bytes, 0) << "tensor '" << name << "': row length " << dims[0]
                             << " is not a multiple of the block size " << info->block_size;
  }
  PDS_CHECK_EQ(static_cast<int64_t>(data.size()), n_bytes) << "tensor '" << name << "' data size";
  tensors_.push_back(Tensor{std::string(name), type, std::move(dims), std::move(data)});
}

std::string GgufWriter::Serialize() const {
  PDS_CHECK(alignment_ != 0 && std::has_single_bit(alignment_)) << "alignment " << alignment_;
  std::vector<const Kv*> kvs;
  for (const Kv& kv : kvs_) kvs.push_back(&kv);
  Kv alignment_kv;
  if (alignment_ != kDefaultAlignment) {
    bool set = false;
    for (const Kv& kv : kvs_) set = set || kv.key == kAlignmentKey;
    if (!set) {
      alignment_kv =
          Kv{kAlignmentKey, Scalar(ValueType::kUint32, static_cast<uint32_t>(alignment_))};
      kvs.push_back(&alignment_kv);
    }
  }

  std::string out;
  out.append("GGUF", 4);
  Append<uint32_t>(&out, kVersion);
  Append<uint64_t>(&out, tensors_.size());
  Append<uint64_t>(&out, kvs.size());
  for (const Kv* kv : kvs) {
    AppendString(&out, kv->key);
    out += kv->encoded;
  }
  // Tensor data follows in order, each start padded to the alignment.
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    AppendString(&out, t.name);
    Append<uint32_t>(&out, static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) Append<uint64_t>(&out, static_cast<uint64_t>(d));
    Append<uint32_t>(&out, static_cast<uint32_t>(t.type));
    Append<uint64_t>(&out, offset);
    offset += (t.data.size() + alignment_ - 1) / alignment_ * alignment_;
  }
  if (!tensors_.empty()) {
    Pad(&out, alignment_);
    for (const Tensor& t : tensors_) {
      out += t.data;
      Pad(&out, alignment_);
    }
  }
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  const std::string bytes = Serialize();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::ErrnoToStatus(errno, absl::StrFormat("gguf: cannot create '%s'", path));
  }
  int err = 0;
  if (std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) err = errno != 0 ? errno : EIO;
  if (std::fclose(f) != 0 && err == 0) err = errno != 0 ? errno : EIO;
  if (err != 0) return absl::ErrnoToStatus(err, absl::StrFormat("gguf: cannot write '%s'", path));
  return absl::OkStatus();
}

}  // namespace pdserve::gguf
