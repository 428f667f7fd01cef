#include "transport/transfer_auth.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/secure_random.h"

namespace pdserve::transport {

namespace {

constexpr std::string_view kBeginDomain = "pdserve-kv-begin-v2";
constexpr std::string_view kTrailerDomain = "pdserve-kv-trailer-v2";

void AppendLe(uint64_t v, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

AuthTag Hmac(const TransferSecret& secret, std::string_view message) {
  AuthTag tag{};
  unsigned int len = 0;
  std::string_view key = secret.bytes();
  const unsigned char* out = HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                                  reinterpret_cast<const unsigned char*>(message.data()),
                                  message.size(), tag.data(), &len);
  // HMAC only fails on allocation failure or a broken libcrypto.
  PDS_CHECK(out != nullptr && len == kAuthTagBytes) << "HMAC-SHA256 failed (len " << len << ")";
  return tag;
}

}  // namespace

absl::StatusOr<TransferSecret> TransferSecret::FromBytes(std::string_view bytes) {
  if (bytes.size() != kTransferSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a KV transfer secret is ", kTransferSecretBytes,
                                                   " bytes, got ", bytes.size()));
  }
  TransferSecret s;
  std::memcpy(s.key_.data(), bytes.data(), bytes.size());
  return s;
}

TransferSecret TransferSecret::Random() {
  TransferSecret s;
  SecureRandomBytes(s.key_.data(), s.key_.size());
  return s;
}

AuthTag BeginTag(const TransferSecret& secret, TransferId xfer, uint32_t n_layers,
                 uint32_t budget_ms) {
  std::string m(kBeginDomain);
  AppendLe(xfer.value, 8, &m);
  AppendLe(n_layers, 4, &m);
  AppendLe(budget_ms, 4, &m);
  return Hmac(secret, m);
}

AuthTag TrailerTag(const TransferSecret& secret, TransferId xfer, std::string_view trailer) {
  std::string m(kTrailerDomain);
  m.reserve(m.size() + 8 + trailer.size());
  AppendLe(xfer.value, 8, &m);
  m.append(trailer);
  return Hmac(secret, m);
}

bool TagEquals(const AuthTag& a, const AuthTag& b) {
  return SecretEquals(std::string_view(reinterpret_cast<const char*>(a.data()), a.size()),
                      std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
}

}  // namespace pdserve::transport
