#include "rpc/model_fingerprint.h"

#include <openssl/evp.h>

#include <cstring>
#include <memory>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "common/check.h"

namespace pdserve::rpc {
namespace {

// SHA-256 over a canonical encoding: every item is typed and
// length-prefixed, so no two different headers encode alike.
class Hasher {
 public:
  Hasher() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    PDS_CHECK(ctx_ != nullptr && EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1)
        << "cannot start SHA-256";
  }
  void Bytes(const void* p, size_t n) { EVP_DigestUpdate(ctx_.get(), p, n); }
  void U64(uint64_t v) { Bytes(&v, sizeof(v)); }
  void Str(std::string_view s) {
    U64(s.size());
    Bytes(s.data(), s.size());
  }
  void F64(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    U64(bits);
  }
  std::string Hex16() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_.get(), digest, &n);
    return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), 8));
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

bool IsIntegerType(gguf::ValueType t) {
  using T = gguf::ValueType;
  return t == T::kUint8 || t == T::kInt8 || t == T::kUint16 || t == T::kInt16 || t == T::kUint32 ||
         t == T::kInt32 || t == T::kUint64 || t == T::kInt64;
}

void HashScalar(Hasher& h, const gguf::Value& v) {
  if (v.type() == gguf::ValueType::kString) {
    h.Str(v.AsString().value_or(""));
  } else if (v.type() == gguf::ValueType::kBool) {
    h.U64(v.AsBool().value_or(false) ? 1 : 0);
  } else if (v.is_float()) {
    h.F64(v.AsDouble().value_or(0));
  } else if (auto i = v.AsInt()) {
    h.U64(static_cast<uint64_t>(*i));
  } else {
    h.U64(v.AsUint().value_or(0));
  }
}

void HashArray(Hasher& h, const gguf::Value& v) {
  h.U64(static_cast<uint64_t>(v.array_type()));
  h.U64(v.array_size());
  if (v.array_type() == gguf::ValueType::kString) {
    for (std::string_view s : v.array_strings()) h.Str(s);
    return;
  }
  for (uint64_t i = 0; i < v.array_size(); ++i) {
    if (v.array_type() == gguf::ValueType::kBool) {
      h.U64(v.ArrayBoolAt(i).value_or(false) ? 1 : 0);
    } else if (IsIntegerType(v.array_type())) {
      if (auto x = v.ArrayIntAt(i)) {
        h.U64(static_cast<uint64_t>(*x));
      } else {
        h.U64(v.ArrayUintAt(i).value_or(0));
      }
    } else {
      h.F64(v.ArrayDoubleAt(i).value_or(0));
    }
  }
}

}  // namespace

std::string ModelFingerprint(const gguf::GgufFile& file) {
  Hasher h;
  h.U64(file.metadata().size());
  for (const gguf::Metadatum& m : file.metadata()) {
    h.Str(m.key);
    h.U64(static_cast<uint64_t>(m.value.type()));
    if (m.value.type() == gguf::ValueType::kArray) {
      HashArray(h, m.value);
    } else {
      HashScalar(h, m.value);
    }
  }
  int64_t tensor_bytes = 0;
  h.U64(file.tensors().size());
  for (const gguf::TensorInfo& t : file.tensors()) {
    h.Str(t.name);
    h.U64(static_cast<uint64_t>(t.type));
    h.U64(t.dims.size());
    for (int64_t d : t.dims) h.U64(static_cast<uint64_t>(d));
    h.U64(t.offset);
    tensor_bytes += t.n_bytes;
  }
  const std::string arch(file.GetStringOr("general.architecture", "unknown").value_or("unknown"));
  return absl::StrFormat("%s/%dt/%dB/%s", arch, file.tensors().size(), tensor_bytes, h.Hex16());
}

}  // namespace pdserve::rpc
