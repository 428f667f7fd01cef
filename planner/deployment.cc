#include "planner/deployment.h"

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace pdserve::planner {
namespace {

constexpr int32_t kMaxNodesPerPool = 4096;

bool ParseCount(absl::string_view digits, int32_t* out) {
  if (digits.empty() || digits.size() > 6) return false;
  for (char c : digits) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return absl::SimpleAtoi(digits, out) && *out >= 1 && *out <= kMaxNodesPerPool;
}

}  // namespace

std::string Deployment::Name() const {
  if (n_mixed > 0) return absl::StrCat("colocated", n_mixed);
  return absl::StrCat(n_prefill, "P", n_decode, "D");
}

absl::StatusOr<Deployment> ParseDeployment(const std::string& text) {
  const std::string s = absl::AsciiStrToLower(text);
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("deployment '", text,
                     "': use xPyD (e.g. 2P1D) or colocatedN / cN (e.g. colocated2), counts 1..",
                     kMaxNodesPerPool));
  };
  Deployment d;
  for (absl::string_view prefix : {"colocated", "c"}) {
    if (absl::StartsWith(s, prefix)) {
      if (!ParseCount(absl::string_view(s).substr(prefix.size()), &d.n_mixed)) return bad();
      return d;
    }
  }
  const size_t p = s.find('p');
  if (p == std::string::npos || s.empty() || s.back() != 'd') return bad();
  absl::string_view v(s);
  if (!ParseCount(v.substr(0, p), &d.n_prefill) ||
      !ParseCount(v.substr(p + 1, s.size() - p - 2), &d.n_decode)) {
    return bad();
  }
  return d;
}

std::vector<Deployment> EnumerateDeployments(int32_t max_nodes) {
  std::vector<Deployment> out;
  for (int32_t n = 1; n <= max_nodes; ++n) out.push_back(Deployment{0, 0, n});
  for (int32_t x = 1; x < max_nodes; ++x) {
    for (int32_t y = 1; x + y <= max_nodes; ++y) out.push_back(Deployment{x, y, 0});
  }
  return out;
}

}  // namespace pdserve::planner
