#include "router/openai_protocol.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <grpcpp/support/status_code_enum.h>

#include "absl/strings/str_cat.h"
#include "engine/grammar/grammar.h"
#include "engine/text/request.h"
#include "nlohmann/json.hpp"

namespace pdserve::router::openai {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;  // keys in OpenAI's order

constexpr int64_t kMaxChoices = kMaxSamples;

// Token pieces need not be valid UTF-8 (a byte of a multi-byte character):
// replace rather than throw.
std::string Dump(const ojson& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// Reads the fields of a request object, refusing wrong types with the
// parameter's name. Absent and null both mean "not set".
class Reader {
 public:
  explicit Reader(const json& object) : object_(object) {}

  const json* Get(const char* name) const {
    auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  std::optional<ApiError> Bool(const char* name, std::optional<bool>* out) const {
    const json* v = Get(name);
    if (v == nullptr) return std::nullopt;
    if (!v->is_boolean()) return BadRequest(absl::StrCat("'", name, "' must be a boolean"), name);
    *out = v->get<bool>();
    return std::nullopt;
  }

  std::optional<ApiError> Int(const char* name, int64_t min, int64_t max,
                              std::optional<int64_t>* out) const {
    const json* v = Get(name);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number_integer()) {
      return BadRequest(absl::StrCat("'", name, "' must be an integer"), name);
    }
    // Unsigned values past int64 read as negative through get<int64_t>.
    if (v->is_number_unsigned() &&
        v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return BadRequest(absl::StrCat("'", name, "' is out of range"), name);
    }
    const int64_t x = v->get<int64_t>();
    if (x < min || x > max) {
      return BadRequest(absl::StrCat("'", name, "' must be in [", min, ", ", max, "], got ", x),
                        name);
    }
    *out = x;
    return std::nullopt;
  }

  std::optional<ApiError> Number(const char* name, double min, double max,
                                 std::optional<double>* out) const {
    const json* v = Get(name);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number()) return BadRequest(absl::StrCat("'", name, "' must be a number"), name);
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < min || x > max) {
      return BadRequest(absl::StrCat("'", name, "' must be in [", min, ", ", max, "], got ", x),
                        name);
    }
    *out = x;
    return std::nullopt;
  }

  std::optional<ApiError> String(const char* name, std::optional<std::string>* out) const {
    const json* v = Get(name);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) return BadRequest(absl::StrCat("'", name, "' must be a string"), name);
    *out = v->get<std::string>();
    return std::nullopt;
  }

 private:
  const json& object_;
};

#define PDS_API_TRY(expr)                               \
  do {                                                  \
    if (std::optional<ApiError> _e = (expr)) return _e; \
  } while (0)

// A token id in a JSON list: an integer in [0, n_vocab) (any int32 when
// n_vocab is 0). Unsigned values past int64 are caught before get<int64_t>
// would wrap them.
std::optional<ApiError> ReadTokenId(const json& t, const char* name, int32_t n_vocab,
                                    int32_t* out) {
  if (!t.is_number_integer()) {
    return BadRequest(absl::StrCat("token ids in '", name, "' must be integers"), name);
  }
  const int64_t limit = n_vocab > 0 ? n_vocab : int64_t{std::numeric_limits<int32_t>::max()} + 1;
  const bool too_big = t.is_number_unsigned() ? t.get<uint64_t>() >= static_cast<uint64_t>(limit)
                                              : t.get<int64_t>() >= limit;
  if (too_big || (!t.is_number_unsigned() && t.get<int64_t>() < 0)) {
    return BadRequest(
        absl::StrCat("token id ", t.dump(), " in '", name, "' is outside [0, ", limit, ")"), name);
  }
  *out = static_cast<int32_t>(t.get<int64_t>());
  return std::nullopt;
}

std::optional<ApiError> ParsePrompt(const json& prompt, int32_t n_vocab, v1::GenerateRequest* req) {
  auto token_ids = [&](const json& arr) -> std::optional<ApiError> {
    v1::TokenIds* ids = req->mutable_token_ids();
    for (const json& t : arr) {
      int32_t id = 0;
      PDS_API_TRY(ReadTokenId(t, "prompt", n_vocab, &id));
      ids->add_ids(id);
    }
    return std::nullopt;
  };
  if (prompt.is_string()) {
    req->set_text(prompt.get<std::string>());
    return std::nullopt;
  }
  if (!prompt.is_array()) {
    return BadRequest("'prompt' must be a string, a list of strings or a list of token ids",
                      "prompt");
  }
  if (prompt.empty()) return BadRequest("'prompt' is empty", "prompt");
  if (prompt[0].is_number()) return token_ids(prompt);
  // A list of prompts: OpenAI answers each as its own choice, which we do
  // not batch; one prompt in a list is fine.
  if (prompt.size() > 1) {
    return BadRequest("a list of several prompts is not supported; send one request per prompt",
                      "prompt");
  }
  if (prompt[0].is_string()) {
    req->set_text(prompt[0].get<std::string>());
    return std::nullopt;
  }
  if (prompt[0].is_array() && !prompt[0].empty()) return token_ids(prompt[0]);
  return BadRequest("'prompt' must be a string, a list of strings or a list of token ids",
                    "prompt");
}

// An assistant message's tool_calls: [{id, type: function, function: {name,
// arguments: JSON text}}].
std::optional<ApiError> CheckToolCalls(const json& calls, const std::string& param) {
  if (!calls.is_array()) return BadRequest(absl::StrCat(param, " must be a list"), param);
  for (size_t i = 0; i < calls.size(); ++i) {
    const json& c = calls[i];
    const std::string p = absl::StrCat(param, "[", i, "]");
    auto fn = c.is_object() ? c.find("function") : c.end();
    if (fn == c.end() || !fn->is_object()) {
      return BadRequest(absl::StrCat(p, ".function must be an object"), p + ".function");
    }
    auto name = fn->find("name");
    auto args = fn->find("arguments");
    if (name == fn->end() || !name->is_string() || args == fn->end() || !args->is_string()) {
      return BadRequest(absl::StrCat(p, ".function needs a string name and string arguments"),
                        p + ".function");
    }
  }
  return std::nullopt;
}

std::optional<ApiError> ParseMessages(const json& messages, v1::GenerateRequest* req) {
  if (!messages.is_array() || messages.empty()) {
    return BadRequest("'messages' must be a non-empty list", "messages");
  }
  v1::ChatPrompt* chat = req->mutable_chat();
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string param = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return BadRequest(absl::StrCat(param, " must be an object"), param);
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      return BadRequest(absl::StrCat(param, ".role must be a string"), param + ".role");
    }
    std::string role_name = role->get<std::string>();
    if (role_name == "developer") role_name = "system";  // OpenAI's newer name for it
    if (role_name != "system" && role_name != "user" && role_name != "assistant" &&
        role_name != "tool") {
      return BadRequest(
          absl::StrCat(param, ".role '", role_name,
                       "' is not supported (system, developer, user, assistant, tool)"),
          param + ".role");
    }
    v1::ChatMessage* out = chat->add_messages();
    if (role_name == "assistant") {
      if (auto calls = m.find("tool_calls"); calls != m.end() && !calls->is_null()) {
        PDS_API_TRY(CheckToolCalls(*calls, param + ".tool_calls"));
        if (!calls->empty()) out->set_tool_calls_json(calls->dump());
      }
    }
    if (role_name == "tool") {
      auto id = m.find("tool_call_id");
      if (id == m.end() || !id->is_string()) {
        return BadRequest(absl::StrCat(param, ".tool_call_id must be a string"),
                          param + ".tool_call_id");
      }
      out->set_tool_call_id(id->get<std::string>());
    }
    std::string text;
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      if (role_name != "assistant") {
        return BadRequest(absl::StrCat(param, ".content is required"), param + ".content");
      }
    } else if (content->is_string()) {
      text = content->get<std::string>();
    } else if (content->is_array()) {
      // Content parts: only text parts (images and audio need a model that reads them).
      for (const json& part : *content) {
        auto type = part.is_object() ? part.find("type") : part.end();
        auto part_text = part.is_object() ? part.find("text") : part.end();
        if (type == part.end() || !type->is_string() || type->get<std::string>() != "text" ||
            part_text == part.end() || !part_text->is_string()) {
          return BadRequest(absl::StrCat(param, ".content: only text parts are supported"),
                            param + ".content");
        }
        text += part_text->get<std::string>();
      }
    } else {
      return BadRequest(absl::StrCat(param, ".content must be a string or a list of text parts"),
                        param + ".content");
    }
    out->set_role(role_name);
    out->set_content(std::move(text));
  }
  return std::nullopt;
}

std::optional<ApiError> ParseStop(const json& stop, v1::StopParams* out) {
  if (stop.is_string()) {
    if (!stop.get<std::string>().empty()) out->add_stop(stop.get<std::string>());
    return std::nullopt;
  }
  if (!stop.is_array()) return BadRequest("'stop' must be a string or a list of strings", "stop");
  for (const json& s : stop) {
    if (!s.is_string()) return BadRequest("'stop' must be a string or a list of strings", "stop");
    if (!s.get<std::string>().empty()) out->add_stop(s.get<std::string>());
  }
  return std::nullopt;
}

// Fields we know but cannot honour: refused rather than silently ignored,
// since ignoring them would change what the client gets.
std::optional<ApiError> RefuseUnsupported(const Reader& r, Endpoint endpoint) {
  if (const json* e = r.Get("echo"); e != nullptr && (!e->is_boolean() || e->get<bool>())) {
    return BadRequest("'echo' is not supported", "echo");
  }
  if (const json* s = r.Get("suffix");
      s != nullptr && (!s->is_string() || !s->get<std::string>().empty())) {
    return BadRequest("'suffix' is not supported", "suffix");
  }
  if (const json* b = r.Get("logit_bias"); b != nullptr && (!b->is_object() || !b->empty())) {
    return BadRequest("'logit_bias' is not supported", "logit_bias");
  }
  if (const json* t = r.Get("functions"); t != nullptr && (!t->is_array() || !t->empty())) {
    return BadRequest("'functions' (the deprecated form) is not supported; send 'tools'",
                      "functions");
  }
  if (r.Get("function_call") != nullptr) {
    return BadRequest("'function_call' (the deprecated form) is not supported; send 'tool_choice'",
                      "function_call");
  }
  if (endpoint == Endpoint::kCompletions) {
    for (const char* name : {"tools", "tool_choice"}) {
      if (r.Get(name) != nullptr) {
        return BadRequest(absl::StrCat("'", name, "' needs /v1/chat/completions"), name);
      }
    }
  }
  (void)endpoint;
  return std::nullopt;
}

// n (choices returned) and, for completions, best_of (samples generated,
// the n with the highest cumulative logprob returned). They share one
// prefill: the nodes fork the prompt's KV (SamplingParams.n).
std::optional<ApiError> ParseSampleCount(const Reader& r, Endpoint endpoint, ParsedRequest* out) {
  std::optional<int64_t> n, best_of;
  PDS_API_TRY(r.Int("n", 1, kMaxChoices, &n));
  out->n = static_cast<int32_t>(n.value_or(1));
  if (endpoint == Endpoint::kCompletions) {
    PDS_API_TRY(r.Int("best_of", 1, kMaxChoices, &best_of));
  } else if (const json* b = r.Get("best_of"); b != nullptr && !b->is_null()) {
    return BadRequest("'best_of' is a /v1/completions parameter", "best_of");
  }
  out->best_of = static_cast<int32_t>(best_of.value_or(out->n));
  if (out->best_of < out->n) {
    return BadRequest(
        absl::StrCat("'best_of' (", out->best_of, ") must be at least 'n' (", out->n, ")"),
        "best_of");
  }
  if (out->best_of > 1 && best_of.has_value() && out->stream) {
    return BadRequest("'best_of' cannot be used with 'stream'", "best_of");
  }
  v1::SamplingParams* sp = out->request.mutable_sampling();
  if (out->best_of > 1) sp->set_n(out->best_of);
  // Choosing the best needs every sample's logprobs, asked for or not.
  if (out->best_of > out->n) sp->set_logprobs(true);
  return std::nullopt;
}

// response_format: text, json_object, or json_schema {name, schema, strict}.
// The schema is checked here (a 400 naming the problem) and travels as JSON
// text, in the client's key order (the order the properties are generated in).
std::optional<ApiError> ParseResponseFormat(const json& f, std::string_view body,
                                            v1::SamplingParams* sp) {
  constexpr const char* kParam = "response_format";
  if (!f.is_object()) return BadRequest("'response_format' must be an object", kParam);
  auto type = f.find("type");
  if (type == f.end() || !type->is_string()) {
    return BadRequest("'response_format.type' must be a string", "response_format.type");
  }
  const std::string t = type->get<std::string>();
  if (t == "text") return std::nullopt;
  if (t == "json_object") {
    sp->mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_OBJECT);
    return std::nullopt;
  }
  if (t != "json_schema") {
    return BadRequest(absl::StrCat("'response_format.type' '", t,
                                   "' is not supported (text, json_object, json_schema)"),
                      "response_format.type");
  }
  auto js = f.find("json_schema");
  if (js == f.end() || !js->is_object()) {
    return BadRequest("'response_format.json_schema' must be an object with a 'schema'",
                      "response_format.json_schema");
  }
  if (auto name = js->find("name"); name != js->end() && !name->is_string()) {
    return BadRequest("'response_format.json_schema.name' must be a string",
                      "response_format.json_schema.name");
  }
  bool strict = false;
  if (auto st = js->find("strict"); st != js->end() && !st->is_null()) {
    if (!st->is_boolean()) {
      return BadRequest("'response_format.json_schema.strict' must be a boolean",
                        "response_format.json_schema.strict");
    }
    strict = st->get<bool>();
  }
  auto schema = js->find("schema");
  if (schema == js->end() || !schema->is_object()) {
    return BadRequest("'response_format.json_schema.schema' must be a JSON schema object",
                      "response_format.json_schema.schema");
  }
  // Re-read the schema with its keys in the client's order.
  ojson ordered = ojson::parse(body, nullptr, /*allow_exceptions=*/false);
  std::string text = Dump(ordered["response_format"]["json_schema"]["schema"]);
  if (absl::Status s = grammar::CheckSchema(text, strict); !s.ok()) {
    return BadRequest(absl::StrCat("response_format.json_schema.schema: ", s.message()),
                      "response_format.json_schema.schema");
  }
  sp->mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
  sp->mutable_response_format()->set_json_schema(std::move(text));
  return std::nullopt;
}

int64_t Clamp32(int64_t x) { return std::min<int64_t>(x, std::numeric_limits<int32_t>::max()); }

}  // namespace

std::string ErrorBody(const ApiError& e) {
  ojson body;
  body["error"]["message"] = e.message;
  body["error"]["type"] = e.type;
  body["error"]["param"] = e.param.empty() ? ojson(nullptr) : ojson(e.param);
  body["error"]["code"] = e.code.empty() ? ojson(nullptr) : ojson(e.code);
  return Dump(body);
}

ApiError BadRequest(std::string message, std::string param) {
  ApiError e;
  e.http_status = 400;
  e.message = std::move(message);
  e.type = "invalid_request_error";
  e.param = std::move(param);
  return e;
}

ApiError ErrorForStatus(int grpc_code, std::string message) {
  ApiError e;
  e.message = std::move(message);
  switch (static_cast<grpc::StatusCode>(grpc_code)) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
      e.http_status = 400;
      e.type = "invalid_request_error";
      break;
    case grpc::StatusCode::ALREADY_EXISTS:
      e.http_status = 409;
      e.type = "invalid_request_error";
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      e.http_status = 401;
      e.type = "invalid_request_error";
      e.code = "invalid_api_key";
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      e.http_status = 429;
      e.type = "rate_limit_error";
      e.code = "server_overloaded";
      e.retry_after_s = "1";
      break;
    case grpc::StatusCode::UNAVAILABLE:
      e.http_status = 503;
      e.type = "server_error";
      e.code = "service_unavailable";
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      e.http_status = 504;
      e.type = "server_error";
      e.code = "timeout";
      break;
    case grpc::StatusCode::CANCELLED:
      e.http_status = 499;  // nginx's "client closed request"; nobody reads it
      e.type = "invalid_request_error";
      e.code = "cancelled";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      break;
  }
  return e;
}

std::optional<ApiError> ParseRequest(Endpoint endpoint, std::string_view body,
                                     const ParseOptions& options, ParsedRequest* out) {
  json root = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return BadRequest(
        "could not parse the JSON body of your request; send a JSON object (Content-Type: "
        "application/json)");
  }
  if (!root.is_object()) return BadRequest("the request body must be a JSON object");
  const Reader r(root);
  out->endpoint = endpoint;

  std::optional<std::string> model;
  PDS_API_TRY(r.String("model", &model));
  if (!model || model->empty()) return BadRequest("you must provide a model parameter", "model");
  if (std::find(options.model_names.begin(), options.model_names.end(), *model) ==
      options.model_names.end()) {
    ApiError e;
    e.http_status = 404;
    e.type = "invalid_request_error";
    e.param = "model";
    e.code = "model_not_found";
    e.message = absl::StrCat("The model `", *model, "` does not exist; this server serves `",
                             options.model_names.empty() ? "" : options.model_names[0], "`");
    return e;
  }
  out->model = *model;
  PDS_API_TRY(RefuseUnsupported(r, endpoint));

  v1::GenerateRequest& req = out->request;
  if (endpoint == Endpoint::kCompletions) {
    const json* prompt = r.Get("prompt");
    if (prompt == nullptr) return BadRequest("'prompt' is required", "prompt");
    PDS_API_TRY(ParsePrompt(*prompt, options.n_vocab, &req));
  } else {
    const json* messages = r.Get("messages");
    if (messages == nullptr) return BadRequest("'messages' is required", "messages");
    PDS_API_TRY(ParseMessages(*messages, &req));
  }

  std::optional<bool> stream;
  PDS_API_TRY(r.Bool("stream", &stream));
  out->stream = stream.value_or(false);
  if (const json* so = r.Get("stream_options")) {
    if (!so->is_object()) return BadRequest("'stream_options' must be an object", "stream_options");
    if (!out->stream) {
      return BadRequest("'stream_options' is only allowed when 'stream' is true", "stream_options");
    }
    std::optional<bool> usage;
    PDS_API_TRY(Reader(*so).Bool("include_usage", &usage));
    out->include_usage = usage.value_or(false);
  }

  // max_completion_tokens is the chat API's newer name; it wins when both are set.
  std::optional<int64_t> max_tokens, max_completion_tokens;
  PDS_API_TRY(r.Int("max_tokens", 1, std::numeric_limits<int32_t>::max(), &max_tokens));
  PDS_API_TRY(r.Int("max_completion_tokens", 1, std::numeric_limits<int32_t>::max(),
                    &max_completion_tokens));
  if (max_completion_tokens) max_tokens = max_completion_tokens;
  if (max_tokens) {
    req.mutable_stop()->set_max_tokens(static_cast<int32_t>(Clamp32(*max_tokens)));
  } else if (endpoint == Endpoint::kChat) {
    req.mutable_stop()->set_max_tokens(options.chat_default_max_tokens);
  }

  v1::SamplingParams* sp = req.mutable_sampling();
  std::optional<double> x;
  PDS_API_TRY(r.Number("temperature", 0, 2, &x));
  // 1/T must stay finite: a tiny positive temperature is refused, not
  // silently turned into greedy sampling.
  if (x && *x != 0 && static_cast<float>(*x) < kMinSamplingTemperature) {
    return BadRequest(absl::StrCat("'temperature' must be 0 (greedy) or in [",
                                   kMinSamplingTemperature, ", 2], got ", *x),
                      "temperature");
  }
  if (x) sp->set_temperature(static_cast<float>(*x));
  x.reset();
  PDS_API_TRY(r.Number("top_p", 0, 1, &x));
  if (x && !(static_cast<float>(*x) > 0)) {
    return BadRequest(absl::StrCat("'top_p' must be in (0, 1], got ", *x), "top_p");
  }
  if (x) sp->set_top_p(static_cast<float>(*x));
  x.reset();
  PDS_API_TRY(r.Number("presence_penalty", -2, 2, &x));
  if (x) sp->set_presence_penalty(static_cast<float>(*x));
  x.reset();
  PDS_API_TRY(r.Number("frequency_penalty", -2, 2, &x));
  if (x) sp->set_frequency_penalty(static_cast<float>(*x));
  // vLLM's extensions, accepted by name.
  x.reset();
  PDS_API_TRY(r.Number("min_p", 0, 1, &x));
  if (x) sp->set_min_p(static_cast<float>(*x));
  x.reset();
  PDS_API_TRY(r.Number("repetition_penalty", kMinRepetitionPenalty, kMaxRepetitionPenalty, &x));
  if (x) sp->set_repetition_penalty(static_cast<float>(*x));
  std::optional<int64_t> i;
  PDS_API_TRY(r.Int("top_k", -1, kMaxTopK, &i));
  if (i) sp->set_top_k(static_cast<int32_t>(std::max<int64_t>(0, *i)));  // vLLM: -1 = off
  i.reset();
  PDS_API_TRY(
      r.Int("seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), &i));
  if (i) sp->set_seed(static_cast<uint64_t>(*i));
  std::optional<bool> parse_special;
  PDS_API_TRY(r.Bool("parse_special", &parse_special));
  req.set_parse_special(parse_special.value_or(false));
  std::optional<bool> ignore_eos;
  PDS_API_TRY(r.Bool("ignore_eos", &ignore_eos));
  if (ignore_eos) req.mutable_stop()->set_ignore_eos(*ignore_eos);
  if (const json* ids = r.Get("stop_token_ids")) {
    if (!ids->is_array())
      return BadRequest("'stop_token_ids' must be a list of integers", "stop_token_ids");
    if (ids->size() > static_cast<size_t>(kMaxStopTokenIds)) {
      return BadRequest(absl::StrCat("at most ", kMaxStopTokenIds, " 'stop_token_ids'"),
                        "stop_token_ids");
    }
    for (const json& t : *ids) {
      int32_t id = 0;
      PDS_API_TRY(ReadTokenId(t, "stop_token_ids", options.n_vocab, &id));
      req.mutable_stop()->add_stop_token_ids(id);
    }
  }
  if (const json* stop = r.Get("stop")) PDS_API_TRY(ParseStop(*stop, req.mutable_stop()));

  if (endpoint == Endpoint::kCompletions) {
    i.reset();
    PDS_API_TRY(r.Int("logprobs", 0, 20, &i));
    if (i) {
      out->completion_logprobs = static_cast<int32_t>(*i);
      sp->set_logprobs(true);
      sp->set_top_logprobs(static_cast<int32_t>(*i));
    }
  } else {
    std::optional<bool> lp;
    PDS_API_TRY(r.Bool("logprobs", &lp));
    i.reset();
    PDS_API_TRY(r.Int("top_logprobs", 0, 20, &i));
    if (i && *i > 0 && !lp.value_or(false)) {
      return BadRequest("'top_logprobs' needs 'logprobs' set to true", "top_logprobs");
    }
    out->chat_logprobs = lp.value_or(false);
    out->chat_top_logprobs = static_cast<int32_t>(i.value_or(0));
    sp->set_logprobs(out->chat_logprobs);
    sp->set_top_logprobs(out->chat_logprobs ? out->chat_top_logprobs : 0);
  }
  if (const json* f = r.Get("response_format")) PDS_API_TRY(ParseResponseFormat(*f, body, sp));
  if (endpoint == Endpoint::kChat &&
      (r.Get("tools") != nullptr || r.Get("tool_choice") != nullptr)) {
    // Re-read with the client's key order: the definitions reach the
    // template, and their properties are generated in that order.
    const ojson ordered = ojson::parse(body, nullptr, /*allow_exceptions=*/false);
    auto field = [&](const char* name) -> const ojson* {
      auto it = ordered.find(name);
      return it == ordered.end() ? nullptr : &*it;
    };
    PDS_API_TRY(ParseTools(field("tools"), field("tool_choice"), &out->tools));
    std::optional<bool> parallel;
    PDS_API_TRY(r.Bool("parallel_tool_calls", &parallel));  // accepted; calls are parsed either way
    if (out->tools.enabled()) req.mutable_chat()->set_tools_json(ToolsJson(out->tools));
    if (out->tools.forced()) {
      if (sp->has_response_format()) {
        return BadRequest("'response_format' and a required tool call cannot be combined",
                          "response_format");
      }
      // The model writes {"name": ..., "arguments": {...}} under this schema.
      sp->mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
      sp->mutable_response_format()->set_json_schema(ForcedCallSchema(out->tools));
    }
  }
  PDS_API_TRY(ParseSampleCount(r, endpoint, out));
  std::optional<std::string> user;
  PDS_API_TRY(r.String("user", &user));
  out->user = user.value_or("");
  return std::nullopt;
}

std::string ModelObject(const std::string& name, int64_t created) {
  ojson m;
  m["id"] = name;
  m["object"] = "model";
  m["created"] = created;
  m["owned_by"] = "pdserve";
  return Dump(m);
}

std::string ModelList(const std::vector<std::string>& names, int64_t created) {
  ojson list;
  list["object"] = "list";
  list["data"] = ojson::array();
  if (!names.empty()) list["data"].push_back(ojson::parse(ModelObject(names[0], created)));
  return Dump(list);
}

std::string FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_ABORT:
      return "abort";  // vLLM's word; OpenAI has none
    default:
      return "stop";
  }
}

ResponseBuilder::ResponseBuilder(const ParsedRequest& request, std::string id, int64_t created,
                                 const Tokenizer* tokenizer)
    : endpoint_(request.endpoint),
      model_(request.model),
      id_(std::move(id)),
      created_(created),
      include_usage_(request.include_usage),
      want_logprobs_(request.endpoint == Endpoint::kCompletions ? request.completion_logprobs >= 0
                                                                : request.chat_logprobs),
      tokenizer_(tokenizer),
      tools_(request.tools),
      n_(request.n),
      choices_(std::max(request.n, request.best_of)) {}

std::vector<ResponseBuilder::TokenLogprob> ResponseBuilder::LogprobsOf(
    const v1::Chunk& chunk) const {
  std::vector<TokenLogprob> out;
  if (!want_logprobs_) return out;
  for (int k = 0; k < chunk.token_ids_size(); ++k) {
    TokenLogprob t;
    t.token_id = chunk.token_ids(k);
    t.logprob = k < chunk.logprobs_size() ? chunk.logprobs(k) : 0.0f;
    if (k < chunk.top_logprobs_size()) {
      for (const v1::TopLogprob& alt : chunk.top_logprobs(k).top()) {
        t.top.emplace_back(alt.token_id(), alt.logprob());
      }
    }
    out.push_back(std::move(t));
  }
  return out;
}

std::string ResponseBuilder::LogprobsJson(const std::vector<TokenLogprob>& tokens,
                                          int64_t text_offset) const {
  if (!want_logprobs_) return "null";
  auto piece = [this](int32_t id) { return tokenizer_ ? tokenizer_->TokenToBytes(id) : ""; };
  if (endpoint_ == Endpoint::kCompletions) {
    // The legacy shape: parallel lists.
    ojson lp;
    lp["tokens"] = ojson::array();
    lp["token_logprobs"] = ojson::array();
    lp["top_logprobs"] = ojson::array();
    lp["text_offset"] = ojson::array();
    for (const TokenLogprob& t : tokens) {
      const std::string text = piece(t.token_id);
      lp["tokens"].push_back(text);
      lp["token_logprobs"].push_back(t.logprob);
      ojson top = ojson::object();
      for (const auto& [id, logprob] : t.top) top[piece(id)] = logprob;
      lp["top_logprobs"].push_back(std::move(top));
      lp["text_offset"].push_back(text_offset);
      text_offset += static_cast<int64_t>(text.size());
    }
    return Dump(lp);
  }
  auto entry = [](const std::string& text, float logprob) {
    ojson e;
    e["token"] = text;
    e["logprob"] = logprob;
    e["bytes"] = ojson::array();
    for (unsigned char c : text) e["bytes"].push_back(static_cast<int>(c));
    return e;
  };
  ojson lp;
  lp["content"] = ojson::array();
  for (const TokenLogprob& t : tokens) {
    ojson e = entry(piece(t.token_id), t.logprob);
    e["top_logprobs"] = ojson::array();
    for (const auto& [id, logprob] : t.top) e["top_logprobs"].push_back(entry(piece(id), logprob));
    lp["content"].push_back(std::move(e));
  }
  lp["refusal"] = nullptr;
  return Dump(lp);
}

namespace {

ojson ChunkEnvelope(Endpoint endpoint, const std::string& id, int64_t created,
                    const std::string& model) {
  ojson c;
  c["id"] = id;
  c["object"] = endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion";
  c["created"] = created;
  c["model"] = model;
  c["system_fingerprint"] = nullptr;
  return c;
}

ojson UsageJson(const v1::Usage& u) {
  ojson usage;
  usage["prompt_tokens"] = u.prompt_tokens();
  usage["completion_tokens"] = u.completion_tokens();
  usage["total_tokens"] = u.prompt_tokens() + u.completion_tokens();
  if (u.cached_prompt_tokens() > 0) {
    usage["prompt_tokens_details"]["cached_tokens"] = u.cached_prompt_tokens();
  }
  return usage;
}

}  // namespace

ResponseBuilder::Choice* ResponseBuilder::ChoiceOf(const v1::Chunk& chunk) {
  // A node's index outside the request's samples is a broken peer: its
  // tokens go to choice 0 rather than out of bounds.
  const int32_t i = chunk.index();
  return &choices_[i >= 0 && i < static_cast<int32_t>(choices_.size()) ? i : 0];
}

std::vector<std::string> ResponseBuilder::StreamChunk(const v1::Chunk& chunk) {
  std::vector<std::string> out;
  Choice& ch = *ChoiceOf(chunk);
  const int32_t index = static_cast<int32_t>(&ch - choices_.data());
  const std::vector<TokenLogprob> lps = LogprobsOf(chunk);
  // With tools, text that may start a call is held until the end.
  const std::string text = endpoint_ == Endpoint::kChat && tools_.enabled()
                               ? ch.tool_streamer.Push(chunk.text())
                               : chunk.text();
  // A chunk whose text is withheld (part of a character, a possible stop
  // string) and that carries no logprobs has nothing to tell the client.
  const bool has_news = !text.empty() || !lps.empty();
  if (endpoint_ == Endpoint::kChat && !ch.role_sent) {
    ch.role_sent = true;
    ojson c = ChunkEnvelope(endpoint_, id_, created_, model_);
    ojson choice;
    choice["index"] = index;
    choice["delta"]["role"] = "assistant";
    choice["delta"]["content"] = "";
    choice["logprobs"] = nullptr;
    choice["finish_reason"] = nullptr;
    c["choices"] = ojson::array({std::move(choice)});
    if (include_usage_) c["usage"] = nullptr;
    out.push_back(Dump(c));
  }
  if (has_news) {
    ojson c = ChunkEnvelope(endpoint_, id_, created_, model_);
    ojson choice;
    if (endpoint_ == Endpoint::kChat) {
      choice["index"] = index;
      choice["delta"]["content"] = text;
      choice["logprobs"] = ojson::parse(LogprobsJson(lps, 0));
    } else {
      choice["text"] = chunk.text();
      choice["index"] = index;
      choice["logprobs"] = ojson::parse(LogprobsJson(lps, ch.streamed_bytes));
    }
    choice["finish_reason"] = nullptr;
    c["choices"] = ojson::array({std::move(choice)});
    if (include_usage_) c["usage"] = nullptr;
    for (const TokenLogprob& t : lps) {
      ch.streamed_bytes +=
          tokenizer_ ? static_cast<int64_t>(tokenizer_->TokenToBytes(t.token_id).size()) : 0;
    }
    out.push_back(Dump(c));
  }
  // n > 1: each sample ends on its own.
  if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    StreamFinish(index, chunk.finish_reason(), &out);
  }
  return out;
}

void ResponseBuilder::StreamFinish(int32_t index, v1::FinishReason reason,
                                   std::vector<std::string>* out) {
  Choice& ch = choices_[index];
  if (ch.finished) return;
  ch.finished = true;
  if (endpoint_ == Endpoint::kChat && !ch.role_sent) {
    v1::Chunk empty;
    empty.set_index(index);
    for (std::string& e : StreamChunk(empty)) out->push_back(std::move(e));
  }
  std::string finish = FinishReasonName(reason);
  if (endpoint_ == Endpoint::kChat && tools_.enabled()) {
    // The held text: content, then each call as OpenAI streams them (id,
    // type and name first, then the arguments).
    const ParsedOutput parsed = ch.tool_streamer.Finish(tools_);
    auto delta_chunk = [&](ojson delta) {
      ojson c = ChunkEnvelope(endpoint_, id_, created_, model_);
      ojson choice;
      choice["index"] = index;
      choice["delta"] = std::move(delta);
      choice["logprobs"] = nullptr;
      choice["finish_reason"] = nullptr;
      c["choices"] = ojson::array({std::move(choice)});
      if (include_usage_) c["usage"] = nullptr;
      out->push_back(Dump(c));
    };
    if (!parsed.content.empty()) delta_chunk(ojson{{"content", parsed.content}});
    for (size_t i = 0; i < parsed.calls.size(); ++i) {
      const ToolCall& call = parsed.calls[i];
      ojson head;
      head["index"] = i;
      head["id"] = call.id;
      head["type"] = "function";
      head["function"]["name"] = call.name;
      head["function"]["arguments"] = "";
      delta_chunk(ojson{{"tool_calls", ojson::array({head})}});
      ojson args;
      args["index"] = i;
      args["function"]["arguments"] = call.arguments;
      delta_chunk(ojson{{"tool_calls", ojson::array({args})}});
    }
    if (!parsed.calls.empty() && finish == "stop") finish = "tool_calls";
  }
  ojson c = ChunkEnvelope(endpoint_, id_, created_, model_);
  ojson choice;
  if (endpoint_ == Endpoint::kChat) {
    choice["index"] = index;
    choice["delta"] = ojson::object();
  } else {
    choice["text"] = "";
    choice["index"] = index;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish;
  c["choices"] = ojson::array({std::move(choice)});
  if (include_usage_) c["usage"] = nullptr;
  out->push_back(Dump(c));
}

std::vector<std::string> ResponseBuilder::StreamComplete(const v1::Complete& complete) {
  std::vector<std::string> out;
  // Samples that did not end on their own end with the request (n = 1:
  // always; n > 1: an abort, say).
  for (int32_t i = 0; i < static_cast<int32_t>(choices_.size()); ++i) {
    StreamFinish(i, complete.finish_reason(), &out);
  }
  if (include_usage_) {
    ojson u = ChunkEnvelope(endpoint_, id_, created_, model_);
    u["choices"] = ojson::array();
    u["usage"] = UsageJson(complete.usage());
    out.push_back(Dump(u));
  }
  return out;
}

void ResponseBuilder::Accumulate(const v1::Chunk& chunk) {
  Choice& ch = *ChoiceOf(chunk);
  ch.text += chunk.text();
  for (float lp : chunk.logprobs()) ch.cumulative_logprob += lp;
  for (TokenLogprob& t : LogprobsOf(chunk)) ch.logprobs.push_back(std::move(t));
  if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) ch.finish = chunk.finish_reason();
}

std::string ResponseBuilder::FinalBody(const v1::Complete& complete) const {
  ojson r;
  r["id"] = id_;
  r["object"] = endpoint_ == Endpoint::kChat ? "chat.completion" : "text_completion";
  r["created"] = created_;
  r["model"] = model_;
  // best_of > n: the n samples with the highest cumulative logprob, best
  // first (as vLLM orders them); otherwise every sample in index order.
  std::vector<const Choice*> picked;
  for (const Choice& ch : choices_) picked.push_back(&ch);
  if (static_cast<int32_t>(choices_.size()) > n_) {
    std::stable_sort(picked.begin(), picked.end(), [](const Choice* a, const Choice* b) {
      return a->cumulative_logprob > b->cumulative_logprob;
    });
    picked.resize(n_);
  }
  r["choices"] = ojson::array();
  for (size_t index = 0; index < picked.size(); ++index) {
    const Choice& ch = *picked[index];
    ojson choice;
    std::string finish = FinishReasonName(
        ch.finish != v1::FINISH_REASON_UNSPECIFIED ? ch.finish : complete.finish_reason());
    if (endpoint_ == Endpoint::kChat) {
      choice["index"] = index;
      choice["message"]["role"] = "assistant";
      choice["message"]["content"] = ch.text;
      choice["message"]["refusal"] = nullptr;
      if (tools_.enabled()) {
        const ParsedOutput parsed = ParseToolCalls(ch.text, tools_);
        if (!parsed.calls.empty()) {
          choice["message"]["content"] =
              parsed.content.empty() ? ojson(nullptr) : ojson(parsed.content);
          choice["message"]["tool_calls"] = ojson::array();
          for (const ToolCall& call : parsed.calls) {
            ojson tc;
            tc["id"] = call.id;
            tc["type"] = "function";
            tc["function"]["name"] = call.name;
            tc["function"]["arguments"] = call.arguments;
            choice["message"]["tool_calls"].push_back(std::move(tc));
          }
          if (finish == "stop") finish = "tool_calls";
        }
      }
    } else {
      choice["text"] = ch.text;
      choice["index"] = index;
    }
    choice["logprobs"] = ojson::parse(LogprobsJson(ch.logprobs, 0));
    choice["finish_reason"] = finish;
    r["choices"].push_back(std::move(choice));
  }
  // Usage counts every generated sample, best_of's unreturned ones too (as
  // OpenAI bills them).
  r["usage"] = UsageJson(complete.usage());
  r["system_fingerprint"] = nullptr;
  return Dump(r);
}

}  // namespace pdserve::router::openai
