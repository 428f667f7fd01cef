// Internal to http/: the thread-safe state of one request's reply, shared by
// the handler's HttpResponder/HttpStream handles (any thread) and the
// connection that writes it (its strand). Beast-free so it compiles fast.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "http/http_stream.h"
#include "http/http_types.h"

namespace pdserve::http::internal {

// The connection side of an exchange. Each call posts work to the
// connection's strand and returns at once. Exchange calls them with its mutex
// held: a connection cancels its exchange (under that mutex) before it counts
// as closed, so no post can reach a server that already stopped.
class ExchangeSink {
 public:
  virtual ~ExchangeSink() = default;
  virtual void PostResponse(HttpResponse response) = 0;
  virtual void PostStreamHead(HttpStreamHead head) = 0;
  virtual void PostFlush() = 0;
  // Closes the connection, then runs `callback` (may be empty) on the strand.
  virtual void PostCancel(absl::Status reason, std::function<void()> callback) = 0;
};

class Exchange {
 public:
  Exchange(std::shared_ptr<ExchangeSink> sink, size_t max_buffered_bytes);

  // Handler side; any thread. See HttpResponder and HttpStream.
  void Respond(HttpResponse response);
  // False when the request was already answered; true (and the stream starts
  // cancelled) when the client is already gone.
  bool OpenStream(HttpStreamHead head);
  absl::Status Write(std::string_view chunk);
  void Close();
  void Cancel(absl::Status reason);
  bool cancelled() const;
  size_t buffered_bytes() const;
  void SetCancelCallback(std::function<void()> callback);
  void OnResponderReleased();  // Sends 500 when never answered.
  void OnStreamReleased();     // Cancels a stream that was never closed.

  // Connection side; on the connection's strand.
  struct Pending {
    std::string data;   // Queued chunks, concatenated.
    bool last = false;  // Close() was called: end the body after `data`.
  };
  // Takes the queued bytes; nullopt unless streaming. The bytes still count
  // in buffered_bytes() until OnSent.
  std::optional<Pending> TakePending();
  void OnSent(size_t n_bytes);
  // The reply went out completely: the cancel callback will never run.
  void Finish();
  // The connection closed first: runs the cancel callback on this thread.
  void CancelFromConnection(absl::Status reason);

 private:
  enum class State { kAwaiting, kResponding, kStreaming, kFinished, kCancelled };

  // Marks the exchange cancelled and posts the connection close plus the
  // callback to the strand.
  void CancelLocked(absl::Status reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PostFlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t max_buffered_bytes_;
  mutable absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kAwaiting;
  // Null once finished or cancelled: breaks the connection <-> exchange cycle.
  std::shared_ptr<ExchangeSink> sink_ ABSL_GUARDED_BY(mu_);
  absl::Status cancel_reason_ ABSL_GUARDED_BY(mu_);
  std::function<void()> on_cancel_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> pending_ ABSL_GUARDED_BY(mu_);
  size_t buffered_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // pending_ plus bytes being written.
  bool close_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool last_taken_ ABSL_GUARDED_BY(mu_) = false;
  bool flush_posted_ ABSL_GUARDED_BY(mu_) = false;
};

// The handles given to handlers; their destructors report an unanswered
// request or an unclosed stream.
std::shared_ptr<HttpResponder> MakeResponder(std::shared_ptr<Exchange> exchange);

}  // namespace pdserve::http::internal
