// Bounds on one render, so a hostile template ends with a clear error.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pdserve::jinja {

struct Limits {
  // Nesting of expressions and blocks in the source.
  int max_nesting = 128;
  // Depth of macro calls (a macro calling itself).
  int max_call_depth = 64;
  // Statements and expressions evaluated.
  int64_t max_steps = 20'000'000;
  // Loop iterations, all loops together.
  int64_t max_loop_iterations = 1'000'000;
  // Size of the output and of any one string or list built.
  size_t max_output_bytes = 32u << 20;
  // Bytes of strings built in total (bounds quadratic concatenation).
  int64_t max_work_bytes = int64_t{1} << 30;
};

}  // namespace pdserve::jinja
