#include "router/openai_server.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/log_escape.h"
#include "common/secure_random.h"
#include "http/auth.h"
#include "router/generate_call.h"
#include "tracing/span.h"

namespace pdserve::router {
namespace {

using openai::ApiError;
using openai::Endpoint;

std::string NewId(std::string_view prefix) {
  return absl::StrCat(absl::string_view(prefix.data(), prefix.size()), SecureRandomHex(12));
}

ApiError Unauthorized() {
  ApiError e;
  e.http_status = 401;
  e.type = "invalid_request_error";
  e.code = "invalid_api_key";
  e.message = "missing or invalid API key: send 'Authorization: Bearer <key>'";
  return e;
}

// Ties an HTTP exchange's cancel callback to the GenerateCall it started.
// The callback may fire before the call exists (the client left while the
// request was parsed), so the link remembers it.
class CancelLink {
 public:
  void Fire() {
    std::shared_ptr<GenerateCall> call;
    {
      absl::MutexLock lock(&mu_);
      fired_ = true;
      call = call_.lock();
    }
    if (call) call->Cancel();
  }
  void Attach(const std::shared_ptr<GenerateCall>& call) {
    {
      absl::MutexLock lock(&mu_);
      call_ = call;
      if (!fired_) return;
    }
    call->Cancel();
  }

 private:
  absl::Mutex mu_;
  bool fired_ ABSL_GUARDED_BY(mu_) = false;
  std::weak_ptr<GenerateCall> call_ ABSL_GUARDED_BY(mu_);
};

// One HTTP request's ResponseSink. The GenerateCall calls it under its own
// lock, one event at a time. A stream opens with the first event, so errors
// found before any token (bad request, queue full, no node) keep their HTTP
// status; once streaming, an error is an SSE event and the body ends
// without "[DONE]".
class OpenAiSink final : public ResponseSink {
 public:
  OpenAiSink(std::shared_ptr<http::HttpResponder> responder, const openai::ParsedRequest& request,
             openai::ResponseBuilder builder)
      : responder_(std::move(responder)),
        stream_mode_(request.stream),
        builder_(std::move(builder)) {}

  bool Write(v1::GenerateResponse response) override {
    absl::MutexLock lock(&mu_);
    if (answered_) return false;
    switch (response.event_case()) {
      case v1::GenerateResponse::kChunk:
        if (!stream_mode_) {
          builder_.Accumulate(response.chunk());
          return true;
        }
        return SendEvents(builder_.StreamChunk(response.chunk()));
      case v1::GenerateResponse::kComplete:
        if (!stream_mode_) {
          Answer(http::HttpResponse::Json(200, builder_.FinalBody(response.complete())));
          return true;
        } else {
          std::vector<std::string> events = builder_.StreamComplete(response.complete());
          events.push_back("[DONE]");
          const bool ok = SendEvents(events);
          if (stream_) stream_->Close();
          Release();
          return ok;
        }
      case v1::GenerateResponse::kError: {
        const ApiError e =
            openai::ErrorForStatus(response.error().code(), response.error().message());
        if (!stream_mode_) {
          Answer(ApiErrorResponse(e));
          return true;
        }
        const bool ok = SendEvents({openai::ErrorBody(e)});
        if (stream_) stream_->Close();
        Release();
        return ok;
      }
      default:
        return true;
    }
  }

  void Finish(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    if (answered_) return;
    if (stream_) {
      // Ended without a complete or error event (cancelled): cut the body
      // so the client cannot take it for a whole answer.
      stream_->Cancel();
      Release();
      return;
    }
    if (status.ok()) {
      Answer(ApiErrorResponse(openai::ErrorForStatus(13, "request ended without a result")));
      return;
    }
    Answer(ApiErrorResponse(openai::ErrorForStatus(status.error_code(), status.error_message())));
  }

 private:
  bool SendEvents(const std::vector<std::string>& events) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!stream_) {
      http::HttpStreamHead head;
      head.headers.emplace_back("Cache-Control", "no-cache");
      head.headers.emplace_back("X-Accel-Buffering", "no");  // proxies: do not buffer tokens
      stream_ = responder_->OpenStream(std::move(head));
      if (!stream_) {
        Release();
        return false;
      }
    }
    std::string bytes;
    for (const std::string& e : events) bytes += http::FormatSseEvent(e);
    // Over the buffer bound the stream cancels itself and its cancel
    // callback cancels the call: a reader that stalls costs bounded memory.
    return stream_->Write(bytes).ok();
  }

  void Answer(http::HttpResponse response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    responder_->Respond(std::move(response));
    Release();
  }

  // Lets the connection go as soon as the reply is out.
  void Release() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    answered_ = true;
    stream_.reset();
    responder_.reset();
  }

  absl::Mutex mu_;
  std::shared_ptr<http::HttpResponder> responder_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<http::HttpStream> stream_ ABSL_GUARDED_BY(mu_);
  const bool stream_mode_;
  openai::ResponseBuilder builder_ ABSL_GUARDED_BY(mu_);
  bool answered_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

http::HttpResponse ApiErrorResponse(const ApiError& error) {
  http::HttpResponse r = http::HttpResponse::Json(error.http_status, openai::ErrorBody(error));
  if (!error.retry_after_s.empty()) r.headers.emplace_back("Retry-After", error.retry_after_s);
  if (error.http_status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer");
  return r;
}

OpenAiFrontend::OpenAiFrontend(RouterContext* ctx, OpenAiOptions options,
                               std::function<std::string()> ready)
    : ctx_(ctx),
      options_(std::move(options)),
      ready_(std::move(ready)),
      created_(tracing::WallNowUnixNs() / 1000000000) {}

absl::StatusOr<std::string> OpenAiFrontend::Authenticate(const http::HttpRequest& request) const {
  if (!options_.authenticate) return std::string("anon");
  return options_.authenticate(request);
}

void OpenAiFrontend::Register(http::HttpServer* server) {
  server->HandleAsync("POST", "/v1/completions",
                      [this](const http::HttpRequest& r, std::shared_ptr<http::HttpResponder> out) {
                        HandleGenerate(Endpoint::kCompletions, r, std::move(out));
                      });
  server->HandleAsync("POST", "/v1/chat/completions",
                      [this](const http::HttpRequest& r, std::shared_ptr<http::HttpResponder> out) {
                        HandleGenerate(Endpoint::kChat, r, std::move(out));
                      });
  server->HandleAsync("GET", "/v1/models",
                      [this](const http::HttpRequest& r, std::shared_ptr<http::HttpResponder> out) {
                        HandleModels(r, std::move(out));
                      });
  // Health needs no key: probes and load balancers carry none.
  server->Handle("GET", "/health",
                 [](const http::HttpRequest&) { return http::HttpResponse::Text(200, "ok\n"); });
  server->Handle("GET", "/ready", [this](const http::HttpRequest&) {
    const std::string why = ready_();
    return why.empty() ? http::HttpResponse::Text(200, "ready\n")
                       : http::HttpResponse::Text(503, why + "\n");
  });
  // /v1/models/<id> and everything unknown.
  server->SetFallback([this](const http::HttpRequest& r, std::shared_ptr<http::HttpResponder> out) {
    if (!Authenticate(r).ok()) {
      out->Respond(ApiErrorResponse(Unauthorized()));
      return;
    }
    if (r.method == "GET" && absl::StartsWith(r.path, "/v1/models/")) {
      HandleModels(r, std::move(out));
      return;
    }
    ApiError e;
    e.http_status = 404;
    e.type = "invalid_request_error";
    e.message = absl::StrCat("Invalid URL (", r.method, " ", r.path, ")");
    out->Respond(ApiErrorResponse(e));
  });
}

void OpenAiFrontend::HandleModels(const http::HttpRequest& request,
                                  std::shared_ptr<http::HttpResponder> responder) {
  if (!Authenticate(request).ok()) {
    responder->Respond(ApiErrorResponse(Unauthorized()));
    return;
  }
  const std::string kPrefix = "/v1/models/";
  if (!absl::StartsWith(request.path, kPrefix)) {
    responder->Respond(
        http::HttpResponse::Json(200, openai::ModelList(options_.model_names, created_)));
    return;
  }
  const std::string name = http::PercentDecode(request.path.substr(kPrefix.size()), false);
  for (const std::string& known : options_.model_names) {
    if (known == name) {
      responder->Respond(http::HttpResponse::Json(200, openai::ModelObject(known, created_)));
      return;
    }
  }
  ApiError e;
  e.http_status = 404;
  e.type = "invalid_request_error";
  e.param = "model";
  e.code = "model_not_found";
  e.message = absl::StrCat("The model `", name, "` does not exist");
  responder->Respond(ApiErrorResponse(e));
}

void OpenAiFrontend::HandleGenerate(Endpoint endpoint, const http::HttpRequest& request,
                                    std::shared_ptr<http::HttpResponder> responder) {
  const int64_t arrival = MonoNowNs();
  absl::StatusOr<std::string> tenant = Authenticate(request);
  if (!tenant.ok()) {
    responder->Respond(ApiErrorResponse(Unauthorized()));
    return;
  }
  openai::ParseOptions po;
  po.model_names = options_.model_names;
  po.chat_default_max_tokens = options_.chat_default_max_tokens;
  po.n_vocab = ctx_->prompt.limits.n_vocab;
  openai::ParsedRequest parsed;
  if (std::optional<ApiError> e = openai::ParseRequest(endpoint, request.body, po, &parsed)) {
    ctx_->metrics.error(tracing::ErrorKind::kInvalidRequest).Increment();
    responder->Respond(ApiErrorResponse(*e));
    return;
  }
  const std::string id = NewId(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-");
  parsed.request.set_request_id(id);
  if (!parsed.user.empty()) {
    PDS_LOG(INFO) << id << ": user " << LogQuote(parsed.user) << " from " << request.remote_address;
  }
  openai::ResponseBuilder builder(parsed, id, tracing::WallNowUnixNs() / 1000000000,
                                  ctx_->prompt.tokenizer);
  auto sink = std::make_shared<OpenAiSink>(responder, parsed, std::move(builder));
  auto link = std::make_shared<CancelLink>();
  // Set before the call starts, never under the call's lock: the callback
  // runs at once when the client is already gone.
  responder->SetCancelCallback([link] { link->Fire(); });
  std::optional<std::string_view> traceparent = request.Header("traceparent");
  std::shared_ptr<GenerateCall> call =
      GenerateCall::Begin(ctx_, parsed.request, *tenant, traceparent, std::move(sink), arrival);
  link->Attach(call);
}

}  // namespace pdserve::router
