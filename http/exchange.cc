#include "http/exchange.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace pdserve::http::internal {

Exchange::Exchange(std::shared_ptr<ExchangeSink> sink, size_t max_buffered_bytes)
    : max_buffered_bytes_(max_buffered_bytes), sink_(std::move(sink)) {}

void Exchange::Respond(HttpResponse response) {
  absl::MutexLock lock(&mu_);
  if (state_ != State::kAwaiting) {
    PDS_LOG(DEBUG) << "http: ignoring a second answer to one request";
    return;
  }
  state_ = State::kResponding;
  sink_->PostResponse(std::move(response));
}

bool Exchange::OpenStream(HttpStreamHead head) {
  absl::MutexLock lock(&mu_);
  if (state_ == State::kCancelled) return true;
  if (state_ != State::kAwaiting) return false;
  state_ = State::kStreaming;
  sink_->PostStreamHead(std::move(head));
  return true;
}

absl::Status Exchange::Write(std::string_view chunk) {
  absl::MutexLock lock(&mu_);
  if (state_ == State::kCancelled) {
    return absl::CancelledError(absl::StrCat("stream cancelled: ", cancel_reason_.message()));
  }
  if (state_ != State::kStreaming || close_requested_) {
    return absl::FailedPreconditionError("stream is closed");
  }
  if (chunk.empty()) return absl::OkStatus();  // An empty chunk would end the body.
  if (buffered_bytes_ + chunk.size() > max_buffered_bytes_) {
    absl::Status status = absl::ResourceExhaustedError(
        absl::StrCat("client is not reading: ", buffered_bytes_, " unsent bytes + ", chunk.size(),
                     " exceed the stream buffer bound of ", max_buffered_bytes_));
    CancelLocked(status);
    return status;
  }
  pending_.emplace_back(chunk);
  buffered_bytes_ += chunk.size();
  PostFlushLocked();
  return absl::OkStatus();
}

void Exchange::Close() {
  absl::MutexLock lock(&mu_);
  if (state_ != State::kStreaming || close_requested_) return;
  close_requested_ = true;
  PostFlushLocked();
}

void Exchange::Cancel(absl::Status reason) {
  absl::MutexLock lock(&mu_);
  CancelLocked(std::move(reason));
}

bool Exchange::cancelled() const {
  absl::MutexLock lock(&mu_);
  return state_ == State::kCancelled;
}

size_t Exchange::buffered_bytes() const {
  absl::MutexLock lock(&mu_);
  return buffered_bytes_;
}

void Exchange::SetCancelCallback(std::function<void()> callback) {
  std::function<void()> run_now;
  std::function<void()> old;  // Destroyed outside the lock: it may own anything.
  {
    absl::MutexLock lock(&mu_);
    if (state_ == State::kCancelled) {
      run_now = std::move(callback);
    } else if (state_ != State::kFinished) {
      old = std::exchange(on_cancel_, std::move(callback));
    }
  }
  if (run_now) run_now();
}

void Exchange::OnResponderReleased() {
  absl::MutexLock lock(&mu_);
  if (state_ != State::kAwaiting) return;
  state_ = State::kResponding;
  sink_->PostResponse(HttpResponse::Text(500, "handler released the request without answering\n"));
}

void Exchange::OnStreamReleased() {
  absl::MutexLock lock(&mu_);
  if (state_ != State::kStreaming || close_requested_) return;
  CancelLocked(absl::AbortedError("stream released without Close()"));
}

std::optional<Exchange::Pending> Exchange::TakePending() {
  absl::MutexLock lock(&mu_);
  flush_posted_ = false;
  if (state_ != State::kStreaming) return std::nullopt;
  Pending pending;
  size_t n_bytes = 0;
  for (const std::string& chunk : pending_) n_bytes += chunk.size();
  pending.data.reserve(n_bytes);
  for (const std::string& chunk : pending_) pending.data.append(chunk);
  pending_.clear();
  if (close_requested_ && !last_taken_) {
    pending.last = true;
    last_taken_ = true;
  }
  return pending;
}

void Exchange::OnSent(size_t n_bytes) {
  absl::MutexLock lock(&mu_);
  buffered_bytes_ -= std::min(n_bytes, buffered_bytes_);
}

void Exchange::Finish() {
  std::function<void()> dropped;
  std::shared_ptr<ExchangeSink> sink;
  {
    absl::MutexLock lock(&mu_);
    if (state_ == State::kCancelled || state_ == State::kFinished) return;
    state_ = State::kFinished;
    dropped = std::move(on_cancel_);
    sink = std::move(sink_);
  }
}

void Exchange::CancelFromConnection(absl::Status reason) {
  std::function<void()> callback;
  std::shared_ptr<ExchangeSink> sink;
  {
    absl::MutexLock lock(&mu_);
    if (state_ == State::kCancelled || state_ == State::kFinished) return;
    state_ = State::kCancelled;
    cancel_reason_ = std::move(reason);
    pending_.clear();
    buffered_bytes_ = 0;
    callback = std::move(on_cancel_);
    sink = std::move(sink_);
  }
  if (callback) callback();
}

void Exchange::CancelLocked(absl::Status reason) {
  if (state_ == State::kCancelled || state_ == State::kFinished) return;
  state_ = State::kCancelled;
  cancel_reason_ = reason;
  pending_.clear();
  buffered_bytes_ = 0;
  std::shared_ptr<ExchangeSink> sink = std::move(sink_);
  sink->PostCancel(std::move(reason), std::exchange(on_cancel_, nullptr));
}

void Exchange::PostFlushLocked() {
  if (flush_posted_) return;
  flush_posted_ = true;
  sink_->PostFlush();
}

namespace {

class StreamHandle final : public HttpStream {
 public:
  explicit StreamHandle(std::shared_ptr<Exchange> exchange) : exchange_(std::move(exchange)) {}
  ~StreamHandle() override { exchange_->OnStreamReleased(); }

  absl::Status Write(std::string_view chunk) override { return exchange_->Write(chunk); }
  void Close() override { exchange_->Close(); }
  void Cancel() override { exchange_->Cancel(absl::CancelledError("cancelled by the handler")); }
  bool cancelled() const override { return exchange_->cancelled(); }
  size_t buffered_bytes() const override { return exchange_->buffered_bytes(); }
  void SetCancelCallback(std::function<void()> callback) override {
    exchange_->SetCancelCallback(std::move(callback));
  }

 private:
  std::shared_ptr<Exchange> exchange_;
};

class ResponderHandle final : public HttpResponder {
 public:
  explicit ResponderHandle(std::shared_ptr<Exchange> exchange) : exchange_(std::move(exchange)) {}
  ~ResponderHandle() override { exchange_->OnResponderReleased(); }

  void Respond(HttpResponse response) override { exchange_->Respond(std::move(response)); }
  std::shared_ptr<HttpStream> OpenStream(HttpStreamHead head) override {
    if (!exchange_->OpenStream(std::move(head))) return nullptr;
    return std::make_shared<StreamHandle>(exchange_);
  }
  void SetCancelCallback(std::function<void()> callback) override {
    exchange_->SetCancelCallback(std::move(callback));
  }
  bool cancelled() const override { return exchange_->cancelled(); }

 private:
  std::shared_ptr<Exchange> exchange_;
};

}  // namespace

std::shared_ptr<HttpResponder> MakeResponder(std::shared_ptr<Exchange> exchange) {
  return std::make_shared<ResponderHandle>(std::move(exchange));
}

}  // namespace pdserve::http::internal
