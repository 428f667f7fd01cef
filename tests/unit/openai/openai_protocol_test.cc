#include "router/openai_protocol.h"

#include <limits>
#include <map>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <grpcpp/support/status_code_enum.h>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace pdserve::router::openai {
namespace {

using json = nlohmann::json;

ParseOptions Options() {
  ParseOptions o;
  o.model_names = {"smol", "SmolLM2 135M"};
  o.chat_default_max_tokens = 300;
  return o;
}

std::optional<ApiError> Parse(Endpoint ep, const std::string& body, ParsedRequest* out) {
  return ParseRequest(ep, body, Options(), out);
}

// The error a body gets, or a failure when it parses.
ApiError ErrorOf(Endpoint ep, const std::string& body) {
  ParsedRequest r;
  std::optional<ApiError> e = Parse(ep, body, &r);
  EXPECT_TRUE(e.has_value()) << body;
  return e.value_or(ApiError());
}

TEST(OpenAiParseTest, CompletionFieldsMapToTheGenerateRequest) {
  ParsedRequest r;
  ASSERT_FALSE(Parse(Endpoint::kCompletions,
                     R"({"model": "smol", "prompt": "Hello", "max_tokens": 7, "temperature": 0.5,
                         "top_p": 0.9, "stop": "\n", "seed": 42, "user": "u1", "logprobs": 2,
                         "presence_penalty": 0.5, "frequency_penalty": -0.5, "n": 1,
                         "some_future_field": {"x": 1}})",
                     &r));
  EXPECT_EQ(r.model, "smol");
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(r.user, "u1");
  EXPECT_EQ(r.completion_logprobs, 2);
  const v1::GenerateRequest& g = r.request;
  EXPECT_EQ(g.text(), "Hello");
  EXPECT_EQ(g.stop().max_tokens(), 7);
  EXPECT_THAT(g.stop().stop(), testing::ElementsAre("\n"));
  EXPECT_FLOAT_EQ(g.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().top_p(), 0.9f);
  EXPECT_EQ(g.sampling().seed(), 42u);
  EXPECT_TRUE(g.sampling().logprobs());
  EXPECT_EQ(g.sampling().top_logprobs(), 2);
  EXPECT_FLOAT_EQ(g.sampling().presence_penalty(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().frequency_penalty(), -0.5f);
}

TEST(OpenAiParseTest, PromptForms) {
  ParsedRequest r;
  ASSERT_FALSE(Parse(Endpoint::kCompletions, R"({"model": "smol", "prompt": ["one"]})", &r));
  EXPECT_EQ(r.request.text(), "one");
  r = ParsedRequest();
  ASSERT_FALSE(Parse(Endpoint::kCompletions, R"({"model": "smol", "prompt": [1, 2, 3]})", &r));
  EXPECT_THAT(r.request.token_ids().ids(), testing::ElementsAre(1, 2, 3));
  r = ParsedRequest();
  ASSERT_FALSE(Parse(Endpoint::kCompletions, R"({"model": "smol", "prompt": [[4, 5]]})", &r));
  EXPECT_THAT(r.request.token_ids().ids(), testing::ElementsAre(4, 5));
  // Completions without max_tokens keep the API's default (16, applied downstream).
  EXPECT_FALSE(r.request.stop().has_max_tokens());

  EXPECT_EQ(ErrorOf(Endpoint::kCompletions, R"({"model": "smol", "prompt": ["a", "b"]})").param,
            "prompt");
  EXPECT_EQ(ErrorOf(Endpoint::kCompletions, R"({"model": "smol", "prompt": []})").param, "prompt");
  EXPECT_EQ(ErrorOf(Endpoint::kCompletions, R"({"model": "smol", "prompt": [1, "x"]})").param,
            "prompt");
  EXPECT_EQ(ErrorOf(Endpoint::kCompletions, R"({"model": "smol", "prompt": 5})").param, "prompt");
  EXPECT_EQ(ErrorOf(Endpoint::kCompletions, R"({"model": "smol"})").param, "prompt");
}

TEST(OpenAiParseTest, ChatMessages) {
  ParsedRequest r;
  ASSERT_FALSE(Parse(Endpoint::kChat, R"({"model": "SmolLM2 135M", "messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null}],
      "max_completion_tokens": 9, "max_tokens": 100, "logprobs": true, "top_logprobs": 3})",
                     &r));
  ASSERT_EQ(r.request.chat().messages_size(), 3);
  EXPECT_EQ(r.request.chat().messages(0).role(), "system");
  EXPECT_EQ(r.request.chat().messages(1).content(), "Hi there");
  EXPECT_EQ(r.request.chat().messages(2).content(), "");
  EXPECT_EQ(r.request.stop().max_tokens(), 9);  // max_completion_tokens wins
  EXPECT_TRUE(r.chat_logprobs);
  EXPECT_EQ(r.request.sampling().top_logprobs(), 3);

  r = ParsedRequest();
  ASSERT_FALSE(Parse(Endpoint::kChat,
                     R"({"model": "smol", "messages": [{"role": "user", "content": "x"}]})", &r));
  EXPECT_EQ(r.request.stop().max_tokens(), 300);  // the configured chat default

  EXPECT_EQ(ErrorOf(Endpoint::kChat,
                    R"({"model": "smol", "messages": [{"role": "function", "content": "x"}]})")
                .param,
            "messages[0].role");
  EXPECT_EQ(
      ErrorOf(
          Endpoint::kChat,
          R"({"model": "smol", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})")
          .param,
      "messages[0].content");
  EXPECT_EQ(ErrorOf(Endpoint::kChat, R"({"model": "smol", "messages": []})").param, "messages");
  EXPECT_EQ(ErrorOf(Endpoint::kChat, R"({"model": "smol"})").param, "messages");
  EXPECT_EQ(
      ErrorOf(
          Endpoint::kChat,
          R"({"model": "smol", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})")
          .param,
      "top_logprobs");
}

TEST(OpenAiParseTest, BadInputGetsA400NamingTheParameter) {
  const ApiError malformed = ErrorOf(Endpoint::kCompletions, "{\"model\": ");
  EXPECT_EQ(malformed.http_status, 400);
  EXPECT_EQ(malformed.type, "invalid_request_error");
  EXPECT_EQ(ErrorOf(Endpoint::kCompletions, "[1, 2]").http_status, 400);
  struct Case {
    const char* body;
    const char* param;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"prompt": "x"})", "model"},
           {R"({"model": 3, "prompt": "x"})", "model"},
           {R"({"model": "smol", "prompt": "x", "max_tokens": "10"})", "max_tokens"},
           {R"({"model": "smol", "prompt": "x", "max_tokens": 0})", "max_tokens"},
           {R"({"model": "smol", "prompt": "x", "max_tokens": 1.5})", "max_tokens"},
           {R"({"model": "smol", "prompt": "x", "temperature": 3})", "temperature"},
           {R"({"model": "smol", "prompt": "x", "temperature": "hot"})", "temperature"},
           {R"({"model": "smol", "prompt": "x", "top_p": 1.5})", "top_p"},
           {R"({"model": "smol", "prompt": "x", "stop": 5})", "stop"},
           {R"({"model": "smol", "prompt": "x", "stop": ["a", 1]})", "stop"},
           {R"({"model": "smol", "prompt": "x", "n": 0})", "n"},
           {R"({"model": "smol", "prompt": "x", "n": 17})", "n"},
           {R"({"model": "smol", "prompt": "x", "n": 3, "best_of": 2})", "best_of"},
           {R"({"model": "smol", "prompt": "x", "best_of": 17})", "best_of"},
           {R"({"model": "smol", "prompt": "x", "best_of": 3, "stream": true})", "best_of"},
           {R"({"model": "smol", "prompt": "x", "echo": true})", "echo"},
           {R"({"model": "smol", "prompt": "x", "logit_bias": {"1": 5}})", "logit_bias"},
           {R"({"model": "smol", "prompt": "x", "logprobs": 21})", "logprobs"},
           {R"({"model": "smol", "prompt": "x", "stream": "yes"})", "stream"},
           {R"({"model": "smol", "prompt": "x", "stream_options": {"include_usage": true}})",
            "stream_options"},
           {R"({"model": "smol", "prompt": "x", "seed": 18446744073709551615})", "seed"},
           {R"({"model": "smol", "prompt": "x", "user": 7})", "user"},
       }) {
    const ApiError e = ErrorOf(Endpoint::kCompletions, c.body);
    EXPECT_EQ(e.http_status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
  }
}

TEST(OpenAiParseTest, NAndBestOfBecomeSamples) {
  ParsedRequest r;
  ASSERT_FALSE(Parse(Endpoint::kChat,
                     R"({"model": "smol", "messages": [{"role": "user", "content": "x"}], "n": 3,
                         "stream": true})",
                     &r));
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.request.sampling().n(), 3);
  EXPECT_FALSE(r.request.sampling().logprobs());
  ParsedRequest b;
  ASSERT_FALSE(
      Parse(Endpoint::kCompletions, R"({"model": "smol", "prompt": "x", "best_of": 3})", &b));
  EXPECT_EQ(b.n, 1);
  EXPECT_EQ(b.best_of, 3);
  EXPECT_EQ(b.request.sampling().n(), 3);
  EXPECT_TRUE(b.request.sampling().logprobs());  // to pick the best
  EXPECT_EQ(b.completion_logprobs, -1);          // but not shown
  ParsedRequest one;
  ASSERT_FALSE(Parse(Endpoint::kCompletions, R"({"model": "smol", "prompt": "x"})", &one));
  EXPECT_EQ(one.request.sampling().n(), 0);  // unset: one sample
  const ApiError e =
      ErrorOf(Endpoint::kChat,
              R"({"model": "smol", "messages": [{"role": "user", "content": "x"}], "best_of": 2})");
  EXPECT_EQ(e.param, "best_of");
}

TEST(OpenAiParseTest, ResponseFormatsBecomeTheRequestsGrammar) {
  ParsedRequest r;
  ASSERT_FALSE(Parse(Endpoint::kChat,
                     R"({"model": "smol", "messages": [{"role": "user", "content": "hi"}],
                         "response_format": {"type": "json_object"}})",
                     &r));
  EXPECT_EQ(r.request.sampling().response_format().type(), v1::ResponseFormat::TYPE_JSON_OBJECT);
  // The schema keeps the client's key order: properties are generated in it.
  ParsedRequest s;
  ASSERT_FALSE(Parse(Endpoint::kCompletions,
                     R"({"model": "smol", "prompt": "x", "response_format": {"type": "json_schema",
                         "json_schema": {"name": "p", "strict": true, "schema": {"type": "object",
                         "properties": {"z": {"type": "integer"}, "a": {"type": "string"}},
                         "required": ["z", "a"], "additionalProperties": false}}}})",
                     &s));
  const v1::ResponseFormat& f = s.request.sampling().response_format();
  EXPECT_EQ(f.type(), v1::ResponseFormat::TYPE_JSON_SCHEMA);
  EXPECT_LT(f.json_schema().find("\"z\""), f.json_schema().find("\"a\"")) << f.json_schema();
  ParsedRequest t;
  ASSERT_FALSE(Parse(Endpoint::kCompletions,
                     R"({"model": "smol", "prompt": "x", "response_format": {"type": "text"}})",
                     &t));
  EXPECT_FALSE(t.request.sampling().has_response_format());
}

TEST(OpenAiParseTest, BadResponseFormatsAre400s) {
  struct Case {
    const char* format;
    const char* param;
    const char* says;
  };
  for (const Case& c : std::vector<Case>{
           {R"("json")", "response_format", "must be an object"},
           {R"({"type": "regex"})", "response_format.type", "not supported"},
           {R"({"type": "json_schema"})", "response_format.json_schema", "must be an object"},
           {R"({"type": "json_schema", "json_schema": {"name": "x"}})",
            "response_format.json_schema.schema", "schema"},
           {R"({"type": "json_schema", "json_schema": {"schema": {"type": "banana"}}})",
            "response_format.json_schema.schema", "invalid JSON schema"},
           {R"({"type": "json_schema", "json_schema": {"strict": true, "schema":
               {"type": "object", "not": {"type": "null"}}}})",
            "response_format.json_schema.schema", "not"},
           {R"({"type": "json_schema", "json_schema": {"strict": "yes", "schema": {}}})",
            "response_format.json_schema.strict", "boolean"},
       }) {
    const std::string body =
        absl::StrCat(R"({"model": "smol", "prompt": "x", "response_format": )", c.format, "}");
    const ApiError e = ErrorOf(Endpoint::kCompletions, body);
    EXPECT_EQ(e.http_status, 400) << body;
    EXPECT_EQ(e.param, c.param) << body;
    EXPECT_THAT(e.message, testing::HasSubstr(c.says)) << body;
  }
}

TEST(OpenAiParseTest, OutOfRangeNumbersAre400sNamingTheField) {
  // Values that used to be narrowed or passed on: int64 token ids truncated
  // to int32, a subnormal temperature (1/T infinite), ids past the vocabulary.
  ParseOptions options = Options();
  options.n_vocab = 1000;
  struct Case {
    const char* body;
    const char* param;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"model": "smol", "prompt": "x", "stop_token_ids": [4294967298]})",
            "stop_token_ids"},
           {R"({"model": "smol", "prompt": "x", "stop_token_ids": [18446744073709551615]})",
            "stop_token_ids"},
           {R"({"model": "smol", "prompt": "x", "stop_token_ids": [-1]})", "stop_token_ids"},
           {R"({"model": "smol", "prompt": "x", "stop_token_ids": [1000]})", "stop_token_ids"},
           {R"({"model": "smol", "prompt": "x", "stop_token_ids": [1.5]})", "stop_token_ids"},
           {R"({"model": "smol", "prompt": [5, 4294967301]})", "prompt"},
           {R"({"model": "smol", "prompt": [[999, 1000]]})", "prompt"},
           {R"({"model": "smol", "prompt": "x", "temperature": 1e-40})", "temperature"},
           {R"({"model": "smol", "prompt": "x", "temperature": 0.0001})", "temperature"},
           {R"({"model": "smol", "prompt": "x", "top_p": 0})", "top_p"},
           {R"({"model": "smol", "prompt": "x", "top_p": 1e-50})", "top_p"},
           {R"({"model": "smol", "prompt": "x", "top_k": 4294967296})", "top_k"},
           {R"({"model": "smol", "prompt": "x", "top_k": -2})", "top_k"},
           {R"({"model": "smol", "prompt": "x", "repetition_penalty": 0})", "repetition_penalty"},
           {R"({"model": "smol", "prompt": "x", "repetition_penalty": 1e-30})",
            "repetition_penalty"},
           {R"({"model": "smol", "prompt": "x", "presence_penalty": 1e300})", "presence_penalty"},
           {R"({"model": "smol", "prompt": "x", "max_tokens": 4294967296})", "max_tokens"},
           {R"({"model": "smol", "prompt": "x", "max_tokens": -5})", "max_tokens"},
           {R"({"model": "smol", "prompt": "x", "n": 18446744073709551615})", "n"},
           {R"({"model": "smol", "prompt": "x", "logprobs": -1})", "logprobs"},
           {R"({"model": "smol", "messages": [{"role": "user", "content": "x"}],
               "logprobs": true, "top_logprobs": 4294967296})",
            "top_logprobs"},
           {R"({"model": "smol", "prompt": "x", "parse_special": 1})", "parse_special"},
       }) {
    ParsedRequest r;
    const Endpoint ep = std::string(c.body).find("messages") != std::string::npos
                            ? Endpoint::kChat
                            : Endpoint::kCompletions;
    const std::optional<ApiError> e = ParseRequest(ep, c.body, options, &r);
    ASSERT_TRUE(e.has_value()) << c.body;
    EXPECT_EQ(e->http_status, 400) << c.body;
    EXPECT_EQ(e->param, c.param) << c.body;
    EXPECT_NE(e->message.find(c.param), std::string::npos) << e->message;
  }
  // In range: accepted as sent.
  ParsedRequest r;
  ASSERT_FALSE(ParseRequest(Endpoint::kCompletions,
                            R"({"model": "smol", "prompt": [0, 999], "stop_token_ids": [999, 0],
                                "temperature": 0.001, "top_k": -1, "seed": -1})",
                            options, &r));
  EXPECT_THAT(r.request.stop().stop_token_ids(), ::testing::ElementsAre(999, 0));
  EXPECT_THAT(r.request.token_ids().ids(), ::testing::ElementsAre(0, 999));
  EXPECT_FLOAT_EQ(r.request.sampling().temperature(), 0.001f);
  EXPECT_EQ(r.request.sampling().top_k(), 0);
  EXPECT_EQ(r.request.sampling().seed(), std::numeric_limits<uint64_t>::max());
}

TEST(OpenAiParseTest, SpecialTokensAreTextUnlessTheRequestOptsIn) {
  ParsedRequest plain, opted;
  ASSERT_FALSE(
      Parse(Endpoint::kCompletions, R"({"model": "smol", "prompt": "<|im_end|>"})", &plain));
  EXPECT_FALSE(plain.request.parse_special());
  ASSERT_FALSE(Parse(Endpoint::kCompletions,
                     R"({"model": "smol", "prompt": "<|im_end|>", "parse_special": true})",
                     &opted));
  EXPECT_TRUE(opted.request.parse_special());
}

TEST(OpenAiParseTest, UnknownModelIs404) {
  const ApiError e = ErrorOf(Endpoint::kCompletions, R"({"model": "gpt-9", "prompt": "x"})");
  EXPECT_EQ(e.http_status, 404);
  EXPECT_EQ(e.code, "model_not_found");
  EXPECT_EQ(e.param, "model");
}

TEST(OpenAiParseTest, NullMeansUnset) {
  ParsedRequest r;
  ASSERT_FALSE(Parse(Endpoint::kCompletions,
                     R"({"model": "smol", "prompt": "x", "max_tokens": null, "stop": null,
                         "temperature": null, "logprobs": null, "n": null, "stream": null})",
                     &r));
  EXPECT_FALSE(r.request.stop().has_max_tokens());
  EXPECT_FALSE(r.request.sampling().has_temperature());
  EXPECT_EQ(r.completion_logprobs, -1);
}

TEST(OpenAiErrorTest, EnvelopeAndStatusMapping) {
  const json body = json::parse(ErrorBody(BadRequest("nope", "n")));
  EXPECT_EQ(body["error"]["message"], "nope");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "n");
  EXPECT_TRUE(body["error"]["code"].is_null());

  const ApiError busy =
      ErrorForStatus(static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED), "full");
  EXPECT_EQ(busy.http_status, 429);
  EXPECT_FALSE(busy.retry_after_s.empty());
  EXPECT_EQ(ErrorForStatus(static_cast<int>(grpc::StatusCode::UNAVAILABLE), "").http_status, 503);
  EXPECT_EQ(ErrorForStatus(static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT), "").http_status,
            400);
  EXPECT_EQ(ErrorForStatus(static_cast<int>(grpc::StatusCode::INTERNAL), "").http_status, 500);
}

v1::Chunk MakeChunk(std::string text, std::vector<int> ids) {
  v1::Chunk c;
  c.set_text(std::move(text));
  for (int id : ids) {
    c.add_token_ids(id);
    c.add_logprobs(-0.25f);
    v1::TokenLogprobs* top = c.add_top_logprobs();
    v1::TopLogprob* alt = top->add_top();
    alt->set_token_id(id);
    alt->set_logprob(-0.25f);
  }
  return c;
}

v1::Complete MakeComplete(v1::FinishReason reason, int prompt, int completion) {
  v1::Complete c;
  c.set_finish_reason(reason);
  c.mutable_usage()->set_prompt_tokens(prompt);
  c.mutable_usage()->set_completion_tokens(completion);
  return c;
}

TEST(OpenAiResponseTest, ChatStreamChunksInOpenAiShapes) {
  ParsedRequest req;
  ASSERT_FALSE(Parse(Endpoint::kChat,
                     R"({"model": "smol", "messages": [{"role": "user", "content": "x"}],
                         "stream": true, "stream_options": {"include_usage": true}})",
                     &req));
  ResponseBuilder b(req, "chatcmpl-1", 1700000000, nullptr);
  std::vector<std::string> first = b.StreamChunk(MakeChunk("Hi", {5}));
  ASSERT_EQ(first.size(), 2u);  // the role, then the content
  json role = json::parse(first[0]);
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["id"], "chatcmpl-1");
  EXPECT_EQ(role["created"], 1700000000);
  EXPECT_EQ(role["model"], "smol");
  EXPECT_EQ(role["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(role["usage"].is_null());
  json content = json::parse(first[1]);
  EXPECT_EQ(content["choices"][0]["delta"]["content"], "Hi");
  EXPECT_FALSE(content["choices"][0]["delta"].contains("role"));
  EXPECT_TRUE(content["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(content["choices"][0]["logprobs"].is_null());  // not asked for

  // A chunk whose text is withheld (a partial stop string) sends nothing.
  EXPECT_TRUE(b.StreamChunk(MakeChunk("", {6})).empty());

  std::vector<std::string> end = b.StreamComplete(MakeComplete(v1::FINISH_REASON_LENGTH, 10, 2));
  ASSERT_EQ(end.size(), 2u);
  json fin = json::parse(end[0]);
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(fin["choices"][0]["delta"].empty());
  json usage = json::parse(end[1]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["prompt_tokens"], 10);
  EXPECT_EQ(usage["usage"]["completion_tokens"], 2);
  EXPECT_EQ(usage["usage"]["total_tokens"], 12);
}

TEST(OpenAiResponseTest, CompletionStreamWithoutUsageHasNoUsageChunk) {
  ParsedRequest req;
  ASSERT_FALSE(
      Parse(Endpoint::kCompletions, R"({"model": "smol", "prompt": "x", "stream": true})", &req));
  ResponseBuilder b(req, "cmpl-1", 1, nullptr);
  std::vector<std::string> c = b.StreamChunk(MakeChunk(" Paris", {9}));
  ASSERT_EQ(c.size(), 1u);
  json j = json::parse(c[0]);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], " Paris");
  EXPECT_FALSE(j.contains("usage"));
  std::vector<std::string> end = b.StreamComplete(MakeComplete(v1::FINISH_REASON_STOP, 3, 1));
  ASSERT_EQ(end.size(), 1u);
  EXPECT_EQ(json::parse(end[0])["choices"][0]["finish_reason"], "stop");
}

TEST(OpenAiResponseTest, WholeBodiesWithLogprobs) {
  ParsedRequest req;
  ASSERT_FALSE(
      Parse(Endpoint::kCompletions, R"({"model": "smol", "prompt": "x", "logprobs": 1})", &req));
  ResponseBuilder b(req, "cmpl-2", 1, nullptr);
  b.Accumulate(MakeChunk(" Par", {1}));
  b.Accumulate(MakeChunk("is", {2}));
  json body = json::parse(b.FinalBody(MakeComplete(v1::FINISH_REASON_LENGTH, 4, 2)));
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["choices"][0]["text"], " Paris");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["choices"][0]["logprobs"]["token_logprobs"].size(), 2u);
  EXPECT_EQ(body["choices"][0]["logprobs"]["top_logprobs"].size(), 2u);
  EXPECT_EQ(body["usage"]["total_tokens"], 6);

  ParsedRequest chat;
  ASSERT_FALSE(Parse(
      Endpoint::kChat,
      R"({"model": "smol", "messages": [{"role": "user", "content": "x"}], "logprobs": true})",
      &chat));
  ResponseBuilder c(chat, "chatcmpl-2", 1, nullptr);
  c.Accumulate(MakeChunk("Hello", {3}));
  json cb = json::parse(c.FinalBody(MakeComplete(v1::FINISH_REASON_STOP, 4, 1)));
  EXPECT_EQ(cb["object"], "chat.completion");
  EXPECT_EQ(cb["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(cb["choices"][0]["message"]["content"], "Hello");
  ASSERT_EQ(cb["choices"][0]["logprobs"]["content"].size(), 1u);
  EXPECT_FLOAT_EQ(cb["choices"][0]["logprobs"]["content"][0]["logprob"].get<float>(), -0.25f);
}

v1::Chunk SampleChunk(int32_t index, std::string text, std::vector<int> ids, float logprob,
                      v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED) {
  v1::Chunk c = MakeChunk(std::move(text), std::move(ids));
  c.set_index(index);
  for (int i = 0; i < c.logprobs_size(); ++i) c.set_logprobs(i, logprob);
  c.set_finish_reason(finish);
  return c;
}

TEST(OpenAiResponseTest, ChatStreamInterleavesChoicesEachWithItsOwnFinish) {
  ParsedRequest req;
  ASSERT_FALSE(Parse(Endpoint::kChat,
                     R"({"model": "smol", "messages": [{"role": "user", "content": "x"}], "n": 2,
                         "stream": true, "stream_options": {"include_usage": true}})",
                     &req));
  ResponseBuilder b(req, "chatcmpl-3", 1, nullptr);
  std::vector<std::string> events;
  auto add = [&](std::vector<std::string> e) { events.insert(events.end(), e.begin(), e.end()); };
  add(b.StreamChunk(SampleChunk(1, "B", {5}, -1)));
  add(b.StreamChunk(SampleChunk(0, "A", {6}, -1)));
  add(b.StreamChunk(SampleChunk(1, "b", {7}, -1, v1::FINISH_REASON_STOP)));
  add(b.StreamComplete(MakeComplete(v1::FINISH_REASON_LENGTH, 4, 3)));
  std::map<int, std::string> text;
  std::map<int, std::string> finish;
  std::map<int, int> roles;
  json usage;
  for (const std::string& e : events) {
    json j = json::parse(e);
    if (j["choices"].empty()) {
      usage = j["usage"];
      continue;
    }
    ASSERT_EQ(j["choices"].size(), 1u);
    const json& c = j["choices"][0];
    const int i = c["index"];
    if (c["delta"].contains("role")) roles[i]++;
    if (c["delta"].contains("content")) text[i] += c["delta"]["content"].get<std::string>();
    if (!c["finish_reason"].is_null()) {
      EXPECT_EQ(finish.count(i), 0u) << "choice " << i << " finished twice";
      finish[i] = c["finish_reason"];
    }
  }
  EXPECT_EQ(roles, (std::map<int, int>{{0, 1}, {1, 1}}));
  EXPECT_EQ(text[0], "A");
  EXPECT_EQ(text[1], "Bb");
  EXPECT_EQ(finish[1], "stop");    // its own
  EXPECT_EQ(finish[0], "length");  // the request's, at the end
  EXPECT_EQ(usage["completion_tokens"], 3);
}

// best_of: the n samples with the highest cumulative logprob, best first;
// usage counts every sample generated.
TEST(OpenAiResponseTest, BestOfReturnsTheMostLikelySamples) {
  ParsedRequest req;
  ASSERT_FALSE(Parse(Endpoint::kCompletions,
                     R"({"model": "smol", "prompt": "x", "n": 2, "best_of": 3})", &req));
  ResponseBuilder b(req, "cmpl-3", 1, nullptr);
  b.Accumulate(SampleChunk(0, "zero", {1, 2}, -3, v1::FINISH_REASON_LENGTH));
  b.Accumulate(SampleChunk(1, "one", {3, 4}, -1, v1::FINISH_REASON_LENGTH));
  b.Accumulate(SampleChunk(2, "two", {5}, -1.5, v1::FINISH_REASON_STOP));
  json body = json::parse(b.FinalBody(MakeComplete(v1::FINISH_REASON_LENGTH, 4, 5)));
  ASSERT_EQ(body["choices"].size(), 2u);
  EXPECT_EQ(body["choices"][0]["text"], "two");  // -1.5 in all
  EXPECT_EQ(body["choices"][0]["index"], 0);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["choices"][1]["text"], "one");  // -2
  EXPECT_EQ(body["choices"][1]["index"], 1);
  EXPECT_TRUE(body["choices"][0]["logprobs"].is_null());  // not asked for
  EXPECT_EQ(body["usage"]["completion_tokens"], 5);
}

TEST(OpenAiModelsTest, ListsTheServedName) {
  json list = json::parse(ModelList({"smol", "alias"}, 5));
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 1u);
  EXPECT_EQ(list["data"][0]["id"], "smol");
  EXPECT_EQ(list["data"][0]["object"], "model");
}

}  // namespace
}  // namespace pdserve::router::openai
