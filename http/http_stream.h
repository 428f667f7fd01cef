// How a handler answers a request: a whole response, or a stream of chunks.
// Both are small interfaces so code that serves HTTP (the router) can be
// tested with fakes; the server implements them in http_server.cc.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "http/http_types.h"

namespace pdserve::http {

// The body of a streamed response, sent with chunked transfer encoding
// (HTTP/1.1) or until the connection closes (HTTP/1.0). Thread-safe: any
// thread may Write, Close or Cancel.
//
// Unsent bytes are bounded (HttpServerOptions::max_stream_buffer_bytes): a
// client that does not read fills the bound, the next Write fails with
// RESOURCE_EXHAUSTED and the stream is cancelled, so memory stays bounded.
// Releasing the last reference without Close() cancels the stream: a client
// must never mistake a truncated body for a complete one.
class HttpStream {
 public:
  virtual ~HttpStream() = default;

  // Queues `chunk` (empty chunks are ignored). Fails with CANCELLED once the
  // stream is cancelled (client gone, write stalled, server stopped, Cancel()),
  // RESOURCE_EXHAUSTED when the chunk would exceed the buffer bound (the stream
  // is then cancelled), FAILED_PRECONDITION after Close().
  virtual absl::Status Write(std::string_view chunk) = 0;
  // Ends the body once the queued chunks are sent. Idempotent.
  virtual void Close() = 0;
  // Drops unsent data, closes the connection, fires the cancel callback.
  virtual void Cancel() = 0;
  virtual bool cancelled() const = 0;
  // Bytes accepted by Write and not yet sent: writers may use it to pace.
  virtual size_t buffered_bytes() const = 0;

  // `callback` runs once when the client disconnects or the stream is
  // cancelled before it completed; never after a completed Close(). It runs on
  // a server thread, or right away on the caller's thread when the stream is
  // already cancelled. It must not block. Replaces any earlier callback.
  virtual void SetCancelCallback(std::function<void()> callback) = 0;
};

// The reply channel of one request. Thread-safe; the handler may keep it and
// answer later from any thread. Exactly one of Respond/OpenStream counts;
// later calls are ignored (OpenStream returns nullptr). Releasing the last
// reference without answering sends 500.
class HttpResponder {
 public:
  virtual ~HttpResponder() = default;

  virtual void Respond(HttpResponse response) = 0;
  // Sends `head` and returns the stream for the body. When the client is
  // already gone the stream is returned cancelled.
  virtual std::shared_ptr<HttpStream> OpenStream(HttpStreamHead head) = 0;
  // Same contract as HttpStream::SetCancelCallback: lets an asynchronous
  // handler abort work when the client leaves before it answered.
  virtual void SetCancelCallback(std::function<void()> callback) = 0;
  virtual bool cancelled() const = 0;
};

// A handler that answers at once. Runs on a server thread: it must not block.
using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;
// A handler that answers through `responder`, now or later from any thread
// (a whole response, or a stream). Runs on a server thread: it must not block.
using HttpAsyncHandler =
    std::function<void(const HttpRequest&, std::shared_ptr<HttpResponder> responder)>;

}  // namespace pdserve::http
