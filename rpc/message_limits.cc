#include "rpc/message_limits.h"

#include <algorithm>
#include <limits>

namespace pdserve::rpc {
namespace {
// gRPC takes an int; inputs are clamped so no product overflows.
int ClampToInt(int64_t bytes) {
  return static_cast<int>(std::clamp<int64_t>(bytes, 1, std::numeric_limits<int>::max()));
}
int64_t TokenBytes(int64_t n_ctx) {
  return std::clamp<int64_t>(n_ctx, 0, int64_t{1} << 32) * kMaxBytesPerTokenId;
}
}  // namespace

int ClientApiMaxMessageBytes(int64_t max_prompt_bytes, int64_t n_ctx) {
  const int64_t prompt =
      std::max(std::clamp<int64_t>(max_prompt_bytes, 0, int64_t{1} << 32), TokenBytes(n_ctx));
  return ClampToInt(prompt + kMessageOverheadBytes);
}

int NodeApiMaxMessageBytes(int64_t n_ctx) {
  return ClampToInt(std::max(kMinNodeMessageBytes, TokenBytes(n_ctx) + kMessageOverheadBytes));
}

}  // namespace pdserve::rpc
