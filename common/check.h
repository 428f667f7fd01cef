// Invariant checks that print the offending values, then abort.
// Use them for programmer errors only; anything a request, a file or the
// network can trigger returns absl::Status instead.
#pragma once

#include <sstream>
#include <string>

namespace pdserve::internal {

// Collects the streamed message and aborts in its destructor.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Lets `PDS_CHECK(x) << "msg"` be a void expression in both branches.
struct Voidify {
  void operator&(std::ostream&) {}
};

template <typename A, typename B>
std::string FormatPair(const A& a, const B& b) {
  std::ostringstream os;
  os << "(" << a << " vs " << b << ") ";
  return os.str();
}

}  // namespace pdserve::internal

#define PDS_CHECK(cond)                     \
  (cond) ? (void)0                          \
         : ::pdserve::internal::Voidify() & \
               ::pdserve::internal::CheckFailure(__FILE__, __LINE__, #cond).stream()

#define PDS_CHECK_OP(a, op, b)                                                                \
  ((a)op(b))                                                                                  \
      ? (void)0                                                                               \
      : ::pdserve::internal::Voidify() &                                                      \
            ::pdserve::internal::CheckFailure(__FILE__, __LINE__, #a " " #op " " #b).stream() \
                << ::pdserve::internal::FormatPair((a), (b))

#define PDS_CHECK_EQ(a, b) PDS_CHECK_OP(a, ==, b)
#define PDS_CHECK_NE(a, b) PDS_CHECK_OP(a, !=, b)
#define PDS_CHECK_LT(a, b) PDS_CHECK_OP(a, <, b)
#define PDS_CHECK_LE(a, b) PDS_CHECK_OP(a, <=, b)
#define PDS_CHECK_GT(a, b) PDS_CHECK_OP(a, >, b)
#define PDS_CHECK_GE(a, b) PDS_CHECK_OP(a, >=, b)

#ifdef NDEBUG
#define PDS_DCHECK(cond) \
  while (false) PDS_CHECK(cond)
#else
#define PDS_DCHECK(cond) PDS_CHECK(cond)
#endif
