// Helpers for the transport tests: a node's KV memory with a known
// background so that stray writes show, and waiters that never hang a test.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "transport/kv_transport.h"

namespace pdserve::transport::testing {

inline Deadline In(std::chrono::milliseconds ms) { return MonoClock::now() + ms; }
inline Deadline Far() { return MonoClock::now() + std::chrono::seconds(60); }

// The secret of the tests' transfers (tests of wrong secrets make others).
inline const TransferSecret& TestSecret() {
  static const TransferSecret secret = *TransferSecret::FromBytes("pdserve-test-key");
  return secret;
}

// n_layers arrays of n_blocks blocks, block_bytes each: [layer][block][bytes].
class KvArena {
 public:
  KvArena(int n_layers, int n_blocks, size_t block_bytes)
      : n_layers_(n_layers),
        n_blocks_(n_blocks),
        block_bytes_(block_bytes),
        data_(static_cast<size_t>(n_layers) * n_blocks * block_bytes) {}

  uint8_t* Block(int layer, int block) {
    return data_.data() + (static_cast<size_t>(layer) * n_blocks_ + block) * block_bytes_;
  }
  const uint8_t* Block(int layer, int block) const {
    return data_.data() + (static_cast<size_t>(layer) * n_blocks_ + block) * block_bytes_;
  }
  size_t block_bytes() const { return block_bytes_; }
  const std::vector<uint8_t>& bytes() const { return data_; }

  void Fill(uint8_t v) { std::memset(data_.data(), v, data_.size()); }
  void FillRandom(uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i < data_.size(); i += 8) {
      uint64_t r = rng();
      std::memcpy(data_.data() + i, &r, std::min<size_t>(8, data_.size() - i));
    }
  }

  std::vector<ConstBlockView> SendViews(int layer, const std::vector<int>& ids) const {
    std::vector<ConstBlockView> views;
    for (int id : ids) views.push_back({Block(layer, id), block_bytes_});
    return views;
  }
  std::vector<std::vector<BlockView>> PostViews(const std::vector<int>& ids) {
    std::vector<std::vector<BlockView>> layers(n_layers_);
    for (int l = 0; l < n_layers_; ++l) {
      for (int id : ids) layers[l].push_back({Block(l, id), block_bytes_});
    }
    return layers;
  }

 private:
  int n_layers_;
  int n_blocks_;
  size_t block_bytes_;
  std::vector<uint8_t> data_;
};

// True when dst holds src's blocks src_ids at dst_ids for every layer, and
// every other byte of dst is still `background`.
inline ::testing::AssertionResult LandedExactly(const KvArena& src, const std::vector<int>& src_ids,
                                                const KvArena& dst, const std::vector<int>& dst_ids,
                                                int n_layers, int n_dst_blocks,
                                                uint8_t background) {
  const size_t bb = dst.block_bytes();
  for (int l = 0; l < n_layers; ++l) {
    for (int b = 0; b < n_dst_blocks; ++b) {
      const uint8_t* got = dst.Block(l, b);
      auto pos = std::find(dst_ids.begin(), dst_ids.end(), b);
      if (pos == dst_ids.end()) {
        for (size_t i = 0; i < bb; ++i) {
          if (got[i] != background) {
            return ::testing::AssertionFailure() << "stray write in unposted block " << b
                                                 << " of layer " << l << " at byte " << i;
          }
        }
      } else {
        const uint8_t* want = src.Block(l, src_ids[pos - dst_ids.begin()]);
        if (std::memcmp(got, want, bb) != 0) {
          return ::testing::AssertionFailure()
                 << "layer " << l << " block " << b << " differs from the sent block";
        }
      }
    }
  }
  return ::testing::AssertionSuccess();
}

inline bool AllBytesAre(const KvArena& arena, uint8_t v) {
  for (uint8_t b : arena.bytes()) {
    if (b != v) return false;
  }
  return true;
}

// Collects a receiver's on_done. The callback owns the state, so a test that
// fails early (and destroys this first) cannot make a late on_done crash.
class RecvResult {
 public:
  ReceiveDoneCallback Callback() {
    return [state = state_](absl::Status status, std::string trailer, ReceiveTiming timing) {
      absl::MutexLock lock(&state->mu);
      ++state->calls;
      state->status = std::move(status);
      state->trailer = std::move(trailer);
      state->timing = timing;
      state->done.Notify();
    };
  }
  // Waits (bounded, so a bug fails the test instead of hanging it).
  bool Wait() { return state_->done.WaitForNotificationWithTimeout(absl::Seconds(60)); }
  bool HasRun() { return state_->done.HasBeenNotified(); }
  absl::Status status() {
    absl::MutexLock lock(&state_->mu);
    return state_->status;
  }
  std::string trailer() {
    absl::MutexLock lock(&state_->mu);
    return state_->trailer;
  }
  ReceiveTiming timing() {
    absl::MutexLock lock(&state_->mu);
    return state_->timing;
  }
  int calls() {
    absl::MutexLock lock(&state_->mu);
    return state_->calls;
  }

 private:
  struct State {
    absl::Notification done;
    absl::Mutex mu;
    absl::Status status = absl::UnknownError("on_done never ran");
    std::string trailer;
    ReceiveTiming timing;
    int calls = 0;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

// KvSendHandle::Wait with a bound: a hang becomes a DeadlineExceeded failure
// with a distinctive message.
inline absl::Status WaitBounded(KvSendHandle& h) {
  absl::Time limit = absl::Now() + absl::Seconds(60);
  while (absl::Now() < limit) {
    if (auto s = h.Poll()) return *s;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return absl::DeadlineExceededError("TEST: sender never completed");
}

}  // namespace pdserve::transport::testing
