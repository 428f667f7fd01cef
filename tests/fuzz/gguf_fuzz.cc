// libFuzzer target for the GGUF reader: any input must parse or fail with a
// Status, never crash, leak or read out of bounds; whatever parses is read
// back in full so that ASan sees every pointer the reader hands out.
//   build-san/bin/gguf_fuzz -max_total_time=600 tests/fuzz/corpus/gguf
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/check.h"
#include "engine/gguf/gguf.h"

namespace {

using pdserve::gguf::GgufFile;
using pdserve::gguf::Metadatum;
using pdserve::gguf::TensorInfo;
using pdserve::gguf::Value;
using pdserve::gguf::ValueType;

// Keeps the compiler from dropping reads.
volatile uint64_t g_sink;

uint64_t Touch(std::string_view s) {
  uint64_t h = s.size();
  for (char c : s) h = h * 31 + static_cast<uint8_t>(c);
  return h;
}

uint64_t TouchValue(const GgufFile& f, std::string_view key, const Value& v) {
  uint64_t h = static_cast<uint32_t>(v.type());
  h += v.AsUint().value_or(1) + static_cast<uint64_t>(v.AsInt().value_or(2));
  h += static_cast<uint64_t>(v.AsDouble().value_or(3.0) != 0) + v.AsBool().value_or(false);
  h += Touch(v.AsString().value_or(""));
  if (v.type() == ValueType::kArray) {
    for (std::string_view s : v.array_strings()) h += Touch(s);
    for (uint64_t i = 0; i < v.array_size(); ++i) {
      h += v.ArrayUintAt(i).value_or(0) + static_cast<uint64_t>(v.ArrayIntAt(i).value_or(0));
      h +=
          static_cast<uint64_t>(v.ArrayDoubleAt(i).value_or(0) != 0) + v.ArrayBoolAt(i).value_or(0);
    }
  }
  // The typed getters must agree with Find and never crash on any type.
  PDS_CHECK(f.Find(key) == &v) << "Find('" << key << "') is not the parsed value";
  h += f.GetString(key).ok() + f.GetUint(key).ok() + f.GetInt(key).ok() + f.GetFloat(key).ok() +
       f.GetBool(key).ok() + f.GetUintOr(key, 0).ok() + f.GetBoolOr(key, false).ok() +
       f.GetFloatOr(key, 0).ok() + f.GetStringOr(key, "").ok();
  if (auto a = f.GetStringArray(key); a.ok()) h += a->size();
  if (auto a = f.GetIntArray(key); a.ok()) h += a->size();
  if (auto a = f.GetFloatArray(key); a.ok()) h += a->size();
  return h;
}

uint64_t TouchTensor(const GgufFile& f, const TensorInfo& t) {
  PDS_CHECK(f.FindTensor(t.name) == &t) << "FindTensor('" << t.name << "')";
  PDS_CHECK_EQ(t.offset % f.alignment(), 0u);
  PDS_CHECK_GT(t.n_bytes, 0);
  PDS_CHECK_LE(f.data_offset() + t.offset + static_cast<uint64_t>(t.n_bytes), f.file_size());
  uint64_t h = Touch(t.name) + static_cast<uint32_t>(t.type);
  int64_t n = 1;
  for (int64_t d : t.dims) {
    PDS_CHECK_GT(d, 0);
    n *= d;
  }
  PDS_CHECK_EQ(n, t.n_elements);
  for (int64_t i = 0; i < t.n_bytes; ++i) h += t.data[i];
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Small limits keep each run fast; the checks they guard are the same.
  pdserve::gguf::ReadLimits limits;
  limits.max_string_bytes = 1 << 12;
  limits.max_array_elements = 1 << 12;
  limits.max_kv_count = 256;
  limits.max_tensor_count = 256;
  auto file =
      GgufFile::FromBytes(std::string_view(reinterpret_cast<const char*>(data), size), limits);
  if (!file.ok()) {
    PDS_CHECK(!file.status().message().empty());
    return 0;
  }
  const GgufFile& f = **file;
  PDS_CHECK(f.version() == 2 || f.version() == 3) << f.version();
  PDS_CHECK(f.alignment() != 0 && (f.alignment() & (f.alignment() - 1)) == 0) << f.alignment();
  PDS_CHECK_EQ(f.data_offset() % f.alignment(), 0u);
  uint64_t h = 0;
  for (const Metadatum& m : f.metadata()) h += TouchValue(f, m.key, m.value);
  for (const TensorInfo& t : f.tensors()) h += TouchTensor(f, t);
  g_sink = h;
  return 0;
}
