#include "common/secure_random.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "common/check.h"

namespace pdserve {

void SecureRandomBytes(void* out, size_t bytes) {
  auto* p = static_cast<uint8_t*>(out);
  while (bytes > 0) {
    ssize_t n = getrandom(p, bytes, 0);
    if (n < 0) {
      PDS_CHECK(errno == EINTR) << "getrandom failed: " << std::strerror(errno);
      continue;
    }
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

uint64_t SecureRandomU64() {
  uint64_t v = 0;
  while (v == 0) SecureRandomBytes(&v, sizeof(v));
  return v;
}

std::string SecureRandomHex(size_t bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string raw(bytes, '\0');
  SecureRandomBytes(raw.data(), raw.size());
  std::string out(2 * bytes, '\0');
  for (size_t i = 0; i < bytes; ++i) {
    const auto b = static_cast<uint8_t>(raw[i]);
    out[2 * i] = kHex[b >> 4];
    out[2 * i + 1] = kHex[b & 15];
  }
  return out;
}

std::string SecureRandomSecret128() {
  std::string s(16, '\0');
  SecureRandomBytes(s.data(), s.size());
  return s;
}

bool SecretEquals(std::string_view a, std::string_view b) {
  // Compare over the longer length so a short guess costs the same time.
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

}  // namespace pdserve
