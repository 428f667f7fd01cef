// A candidate deployment: x prefill and y decode nodes ("2P1D"), or N
// colocated nodes running both phases with chunked prefill ("colocated2").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve::planner {

struct Deployment {
  int32_t n_prefill = 0;
  int32_t n_decode = 0;
  int32_t n_mixed = 0;

  bool disaggregated() const { return n_mixed == 0; }
  int32_t n_nodes() const { return n_prefill + n_decode + n_mixed; }
  // "2P1D" or "colocated2".
  std::string Name() const;
};

// "xPyD" (x, y >= 1) or "colocatedN" / "CN" (N >= 1), case-insensitive.
absl::StatusOr<Deployment> ParseDeployment(const std::string& text);

// Every xPyD with x + y <= max_nodes and colocated1..colocated<max_nodes>.
std::vector<Deployment> EnumerateDeployments(int32_t max_nodes);

}  // namespace pdserve::planner
