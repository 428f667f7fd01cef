// A server-streaming gRPC reactor fed from any thread. Producers (the engine
// thread, another RPC's callback) hold a shared Handle and queue events; the
// reactor writes them one at a time. A client that stops reading fills the
// bounded queue and its stream is ended (RESOURCE_EXHAUSTED) instead of
// growing memory. The Handle outlives the reactor: events for a stream that
// has ended are dropped.
//
// Only the thread that wins a flag under the mutex calls StartWrite or
// Finish, so gRPC never sees two writes in flight or a double Finish, and
// OnDone (which deletes the reactor) cannot run before that call is made.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace pdserve::rpc {

template <typename Event>
class StreamWriter : public grpc::ServerWriteReactor<Event> {
 public:
  class Handle {
   public:
    // Queues an event. False once the stream has ended (finished, cancelled,
    // or over its buffer bound): the producer should stop.
    bool Write(Event event) {
      StreamWriter* start = nullptr;
      StreamWriter* finish = nullptr;
      bool overflow = false;
      grpc::Status status;
      {
        absl::MutexLock lock(&mu_);
        if (reactor_ == nullptr || final_) return false;
        if (queue_.size() >= max_queued_) {
          overflow = true;
          final_ = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                "stream closed: the client is not reading it");
          if (!writing_ && !finished_) {
            finished_ = true;
            finish = reactor_;
            status = *final_;
          }
        } else {
          queue_.push_back(std::move(event));
          if (!writing_ && !finished_) {
            writing_ = true;
            current_ = std::move(queue_.front());
            queue_.pop_front();
            start = reactor_;
          }
        }
      }
      if (overflow) FireCancel();
      if (finish != nullptr) finish->Finish(status);
      if (start != nullptr) start->StartWrite(&current_);
      return !overflow;
    }

    // Ends the stream with `status` once the queued events are written.
    void Finish(grpc::Status status) {
      StreamWriter* finish = nullptr;
      {
        absl::MutexLock lock(&mu_);
        if (reactor_ == nullptr || final_) return;
        final_ = std::move(status);
        if (!writing_ && !finished_) {
          finished_ = true;
          finish = reactor_;
        }
      }
      if (finish != nullptr) finish->Finish(*final_);
    }

    // True once the stream has ended or is ending.
    bool done() const {
      absl::MutexLock lock(&mu_);
      return reactor_ == nullptr || final_.has_value();
    }

   private:
    friend class StreamWriter;

    // Runs the owner's cancel hook once, outside the lock.
    void FireCancel() {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        fn = std::move(on_cancel_);
        on_cancel_ = nullptr;
      }
      if (fn) fn();
    }

    mutable absl::Mutex mu_;
    StreamWriter* reactor_ ABSL_GUARDED_BY(mu_) = nullptr;  // null after OnDone
    std::deque<Event> queue_ ABSL_GUARDED_BY(mu_);
    Event current_;  // the message being written: owned by the write in flight
    bool writing_ ABSL_GUARDED_BY(mu_) = false;
    bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish() was called on the reactor
    std::optional<grpc::Status> final_ ABSL_GUARDED_BY(mu_);
    size_t max_queued_ = 1024;
    std::function<void()> on_cancel_ ABSL_GUARDED_BY(mu_);
  };

  // on_cancel runs once if the client cancels or disconnects, or the stream
  // overflows; use it to abort the request. It runs on a gRPC or producer
  // thread and must not block.
  StreamWriter(size_t max_queued, std::function<void()> on_cancel)
      : handle_(std::make_shared<Handle>()) {
    absl::MutexLock lock(&handle_->mu_);
    handle_->reactor_ = this;
    handle_->max_queued_ = max_queued;
    handle_->on_cancel_ = std::move(on_cancel);
  }

  std::shared_ptr<Handle> handle() const { return handle_; }

  void OnWriteDone(bool ok) override {
    bool start = false;
    bool finish = false;
    grpc::Status status;
    {
      absl::MutexLock lock(&handle_->mu_);
      if (ok && !handle_->queue_.empty() && !handle_->finished_) {
        handle_->current_ = std::move(handle_->queue_.front());
        handle_->queue_.pop_front();
        start = true;
      } else {
        handle_->writing_ = false;
        if (!ok && !handle_->final_) {
          handle_->final_ = grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
        }
        if (handle_->final_ && !handle_->finished_) {
          handle_->finished_ = true;
          finish = true;
          status = *handle_->final_;
        }
      }
    }
    if (start) this->StartWrite(&handle_->current_);
    if (finish) this->Finish(status);
  }

  void OnCancel() override {
    handle_->FireCancel();
    bool finish = false;
    {
      absl::MutexLock lock(&handle_->mu_);
      if (!handle_->final_) handle_->final_ = grpc::Status::CANCELLED;
      if (!handle_->writing_ && !handle_->finished_) {
        handle_->finished_ = true;
        finish = true;
      }
    }
    if (finish) this->Finish(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&handle_->mu_);
      handle_->reactor_ = nullptr;
    }
    delete this;
  }

 private:
  std::shared_ptr<Handle> handle_;
};

}  // namespace pdserve::rpc
