#include "http/auth.h"

#include <algorithm>

#include "absl/strings/match.h"

namespace pdserve::http {

bool HasBearerToken(const HttpRequest& request, std::string_view api_key) {
  if (api_key.empty()) return true;
  std::optional<std::string_view> header = request.Header("Authorization");
  constexpr std::string_view kBearer = "Bearer ";
  if (!header || header->size() < kBearer.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(header->data(), kBearer.size()),
                              absl::string_view(kBearer.data(), kBearer.size()))) {
    return false;
  }
  const std::string_view presented = header->substr(kBearer.size());
  // No early exit on the first differing byte: timing must not reveal the key.
  unsigned char diff = presented.size() == api_key.size() ? 0 : 1;
  for (size_t i = 0; i < presented.size(); ++i) {
    diff |= static_cast<unsigned char>(presented[i]) ^
            static_cast<unsigned char>(api_key[i % api_key.size()]);
  }
  return diff == 0;
}

}  // namespace pdserve::http
