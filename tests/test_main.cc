// main() of every GoogleTest binary: gtest's, plus a stack trace on a
// crash, so that a test that dies on a loaded CI machine says where.
#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "gtest/gtest.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PDS_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PDS_TEST_SANITIZED 1
#endif

int main(int argc, char** argv) {
  absl::InitializeSymbolizer(argv[0]);
#ifndef PDS_TEST_SANITIZED
  // Sanitizers print better reports through their own handlers.
  absl::InstallFailureSignalHandler(absl::FailureSignalHandlerOptions());
#endif
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
