#include "loadgen/http_client.h"

#include <array>
#include <limits>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "loadgen/sse.h"
#include "nlohmann/json.hpp"

namespace pdserve::loadgen {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using boost::system::error_code;

constexpr auto kConnectTimeout = std::chrono::seconds(30);
constexpr size_t kMaxErrorBody = 2048;
constexpr const char* kUserAgent = "pdserve-loadgen";

std::string HostHeader(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos;
  return v6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

}  // namespace

struct HttpClient::Core {
  HttpClientOptions options;
  tcp::resolver::results_type endpoints;
  net::io_context ioc;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::thread thread;
  // I/O-thread state: the streams in flight and the idle keep-alive
  // connections.
  class Stream;
  std::unordered_set<std::shared_ptr<Stream>> live;
  std::vector<std::unique_ptr<beast::tcp_stream>> idle;
};

// One request: connection (pooled or new) -> POST -> SSE body. Every handler
// runs on the I/O thread.
class HttpClient::Core::Stream : public std::enable_shared_from_this<Stream> {
 public:
  Stream(Core* core, std::string body, DoneCallback done)
      : core_(core), body_(std::move(body)), done_(std::move(done)) {}

  void Start() {
    outcome_.send_ns = MonoNowNs();
    if (!core_->idle.empty()) {
      conn_ = std::move(core_->idle.back());
      core_->idle.pop_back();
      reused_ = true;
      Write();
    } else {
      Connect();
    }
  }

  void Cancel() {
    cancelled_ = true;
    if (conn_) conn_->cancel();
  }

 private:
  void Connect() {
    reused_ = false;
    conn_ = std::make_unique<beast::tcp_stream>(core_->ioc);
    conn_->expires_after(kConnectTimeout);
    conn_->async_connect(core_->endpoints,
                         [self = shared_from_this()](error_code ec, const tcp::endpoint&) {
                           if (ec) return self->Fail(ec, "connect");
                           self->Write();
                         });
  }

  void Write() {
    if (cancelled_) return Fail(net::error::operation_aborted, "send");
    request_ = {};
    request_.method(bhttp::verb::post);
    request_.target(core_->options.completions_path);
    request_.version(11);
    request_.set(bhttp::field::host, HostHeader(core_->options.host, core_->options.port));
    request_.set(bhttp::field::user_agent, kUserAgent);
    request_.set(bhttp::field::content_type, "application/json");
    request_.set(bhttp::field::accept, "text/event-stream");
    request_.keep_alive(true);
    request_.body() = body_;
    request_.prepare_payload();
    conn_->expires_after(kConnectTimeout);
    bhttp::async_write(*conn_, request_, [self = shared_from_this()](error_code ec, size_t) {
      if (ec) return self->RetryOrFail(ec, "send");
      self->conn_->expires_never();  // the time bound cancels streams that hang
      self->ReadHeader();
    });
  }

  void ReadHeader() {
    if (cancelled_) return Fail(net::error::operation_aborted, "read header");
    parser_.emplace();
    // A stream has no length bound. Not boost::none: Boost 1.74 compares a
    // Content-Length against an empty limit as "exceeded".
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    bhttp::async_read_header(*conn_, buffer_, *parser_,
                             [self = shared_from_this()](error_code ec, size_t) {
                               if (ec) return self->RetryOrFail(ec, "read header");
                               self->status_ = self->parser_->get().result_int();
                               self->ReadBody();
                             });
  }

  void ReadBody() {
    // Cancel() only aborts a pending operation; one whose handler was already
    // queued must not start another.
    if (cancelled_) return Fail(net::error::operation_aborted, "read body");
    parser_->get().body().data = chunk_.data();
    parser_->get().body().size = chunk_.size();
    bhttp::async_read_some(
        *conn_, buffer_, *parser_,
        [self = shared_from_this()](error_code ec, size_t) { self->OnBody(ec); });
  }

  void OnBody(error_code ec) {
    if (ec == bhttp::error::need_buffer) ec = {};
    const int64_t now = MonoNowNs();
    const size_t got = chunk_.size() - parser_->get().body().size;
    std::string_view bytes(chunk_.data(), got);
    if (status_ != 200) {
      error_body_.append(
          bytes.substr(0, kMaxErrorBody - std::min(kMaxErrorBody, error_body_.size())));
    } else {
      events_.clear();
      sse_.Feed(bytes, &events_);
      for (const SseParser::Event& e : events_) OnEvent(e, now);
    }
    if (ec) {
      // Bytes after [DONE] do not matter; a server that drops the connection
      // there still delivered everything.
      if (saw_done_ && !cancelled_) return Finish(/*reuse=*/false);
      return Fail(ec, "read body");
    }
    if (parser_->is_done()) return Finish(parser_->keep_alive());
    ReadBody();
  }

  void OnEvent(const SseParser::Event& e, int64_t now) {
    absl::StatusOr<CompletionEvent> ev = ParseCompletionEvent(e.data);
    if (!ev.ok()) {
      if (event_error_.empty()) event_error_ = std::string(ev.status().message());
      return;
    }
    if (ev->done) {
      saw_done_ = true;
      return;
    }
    if (!ev->error.empty()) {
      event_error_ = absl::StrCat("server error event: ", ev->error);
      return;
    }
    if (ev->has_choice && !ev->text.empty()) {
      outcome_.chunk_ns.push_back(now);
    }
    if (ev->completion_tokens) usage_completion_ = ev->completion_tokens;
    if (ev->prompt_tokens) outcome_.input_tokens = *ev->prompt_tokens;
    if (ev->cached_tokens) {
      outcome_.cached_input_tokens = *ev->cached_tokens;
      outcome_.cached_input_tokens_reported = true;
    }
  }

  // A pooled connection the server closed while idle fails before any
  // response byte arrives: try once more on a fresh one.
  void RetryOrFail(error_code ec, const char* where) {
    if (reused_ && !cancelled_ && !retried_ && buffer_.size() == 0) {
      retried_ = true;
      buffer_.clear();
      return Connect();
    }
    Fail(ec, where);
  }

  void Fail(error_code ec, const char* where) {
    if (cancelled_) {
      outcome_.cancelled = true;
      outcome_.error = "cancelled at the time bound";
    } else {
      outcome_.error = absl::StrCat("http ", where, ": ", ec.message());
    }
    Complete(/*reuse=*/false);
  }

  void Finish(bool reuse) {
    if (status_ != 200) {
      outcome_.error = absl::StrCat("http status ", status_, ": ", error_body_);
    } else if (!event_error_.empty()) {
      outcome_.error = event_error_;
    } else {
      outcome_.success = true;
    }
    Complete(reuse && !cancelled_);
  }

  void Complete(bool reuse) {
    outcome_.end_ns = MonoNowNs();
    outcome_.output_tokens = static_cast<int32_t>(outcome_.chunk_ns.size());
    if (usage_completion_) {
      outcome_.output_tokens = *usage_completion_;
      outcome_.output_tokens_from_usage = true;
    }
    if (reuse && conn_ && buffer_.size() == 0) {
      core_->idle.push_back(std::move(conn_));
    } else if (conn_) {
      error_code ignored;
      conn_->socket().close(ignored);
    }
    auto self = shared_from_this();
    core_->live.erase(self);
    DoneCallback done = std::move(done_);
    done(std::move(outcome_));
  }

  Core* core_;
  std::string body_;
  DoneCallback done_;
  RequestOutcome outcome_;
  std::unique_ptr<beast::tcp_stream> conn_;
  bool reused_ = false;
  bool retried_ = false;
  bool cancelled_ = false;
  bhttp::request<bhttp::string_body> request_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::response_parser<bhttp::buffer_body>> parser_;
  std::array<char, 16384> chunk_;
  int status_ = 0;
  std::string error_body_;
  SseParser sse_;
  std::vector<SseParser::Event> events_;
  bool saw_done_ = false;
  std::string event_error_;
  std::optional<int> usage_completion_;
};

HttpClient::HttpClient(std::unique_ptr<Core> core) : core_(std::move(core)) {}

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(const HttpClientOptions& options) {
  auto core = std::make_unique<Core>();
  core->options = options;
  error_code ec;
  tcp::resolver resolver(core->ioc);
  core->endpoints = resolver.resolve(options.host, std::to_string(options.port), ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve ", options.host, ": ", ec.message()));
  }
  core->work.emplace(core->ioc.get_executor());
  Core* raw = core.get();
  core->thread = std::thread([raw] { raw->ioc.run(); });
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(core)));
}

HttpClient::~HttpClient() {
  CancelAll();
  core_->work.reset();  // run() returns once the cancelled streams finish
  core_->thread.join();
  core_->idle.clear();
}

bool HttpClient::IsChatPath(const std::string& path) {
  constexpr std::string_view kChat = "/chat/completions";
  return path.size() >= kChat.size() &&
         path.compare(path.size() - kChat.size(), kChat.size(), kChat) == 0;
}

std::string HttpClient::RequestBody(const std::string& model, const RequestInput& input,
                                    bool chat) {
  nlohmann::json body = {
      {"model", model},
      {"max_tokens", input.max_tokens},
      {"temperature", input.temperature},
      {"stream", true},
      {"stream_options", {{"include_usage", true}}},
  };
  // Not OpenAI's own parameter, so only sent when asked for (vLLM,
  // llama-server and pdserve take it).
  if (input.ignore_eos) body["ignore_eos"] = true;
  // The streamed chunks differ too (choices[0].delta.content against
  // choices[0].text); ParseSseEvent reads both.
  if (chat) {
    body["messages"] = nlohmann::json::array({{{"role", "user"}, {"content", input.text}}});
  } else {
    body["prompt"] = input.text;
  }
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void HttpClient::Send(const RequestInput& input, DoneCallback done) {
  auto stream = std::make_shared<Core::Stream>(
      core_.get(),
      RequestBody(core_->options.model, input, IsChatPath(core_->options.completions_path)),
      std::move(done));
  net::post(core_->ioc, [core = core_.get(), stream] {
    core->live.insert(stream);
    stream->Start();
  });
}

void HttpClient::CancelAll() {
  net::post(core_->ioc, [core = core_.get()] {
    for (const auto& s : core->live) s->Cancel();
  });
}

absl::StatusOr<ModelDescription> HttpClient::GetModelInfo(absl::Duration timeout) {
  // A private io_context: this runs before the load and blocks the caller.
  net::io_context ioc;
  beast::tcp_stream conn(ioc);
  conn.expires_after(absl::ToChronoNanoseconds(timeout));
  bhttp::request<bhttp::empty_body> req(bhttp::verb::get, core_->options.models_path, 11);
  req.set(bhttp::field::host, HostHeader(core_->options.host, core_->options.port));
  req.set(bhttp::field::user_agent, kUserAgent);
  beast::flat_buffer buffer;
  bhttp::response<bhttp::string_body> res;
  error_code result;
  const char* where = "connect";
  conn.async_connect(core_->endpoints, [&](error_code ec, const tcp::endpoint&) {
    if (ec) {
      result = ec;
      return;
    }
    where = "send";
    bhttp::async_write(conn, req, [&](error_code ec2, size_t) {
      if (ec2) {
        result = ec2;
        return;
      }
      where = "read";
      bhttp::async_read(conn, buffer, res, [&](error_code ec3, size_t) { result = ec3; });
    });
  });
  ioc.run();
  const std::string url = absl::StrCat(
      "http://", HostHeader(core_->options.host, core_->options.port), core_->options.models_path);
  if (result) {
    return absl::UnavailableError(absl::StrCat("GET ", url, ": ", where, ": ", result.message()));
  }
  if (res.result_int() != 200) {
    return absl::UnavailableError(
        absl::StrCat("GET ", url, ": status ", res.result_int(), ": ", res.body().substr(0, 200)));
  }
  nlohmann::json j = nlohmann::json::parse(res.body(), nullptr, false);
  ModelDescription d;
  if (j.is_object() && j.contains("data") && j["data"].is_array() && !j["data"].empty() &&
      j["data"][0].is_object() && j["data"][0].contains("id") && j["data"][0]["id"].is_string()) {
    d.name = j["data"][0]["id"].get<std::string>();
    // vLLM reports the context length here; others may not.
    if (j["data"][0].contains("max_model_len") &&
        j["data"][0]["max_model_len"].is_number_integer()) {
      d.context_length = j["data"][0]["max_model_len"].get<int>();
    }
  } else {
    return absl::UnavailableError(absl::StrCat("GET ", url, ": no model listed in the response"));
  }
  if (core_->options.model.empty()) core_->options.model = d.name;
  return d;
}

}  // namespace pdserve::loadgen
