#include "rpc/convert.h"

namespace pdserve::rpc {

SamplingParams FromProto(const v1::SamplingParams& p) {
  SamplingParams s;
  if (p.has_temperature()) s.temperature = p.temperature();
  if (p.has_top_p()) s.top_p = p.top_p();
  if (p.has_top_k()) s.top_k = p.top_k();
  if (p.has_min_p()) s.min_p = p.min_p();
  if (p.has_repetition_penalty()) s.repetition_penalty = p.repetition_penalty();
  if (p.has_presence_penalty()) s.presence_penalty = p.presence_penalty();
  if (p.has_frequency_penalty()) s.frequency_penalty = p.frequency_penalty();
  if (p.has_seed()) s.seed = p.seed();
  s.logprobs = p.logprobs();
  s.top_logprobs = p.top_logprobs();
  s.n = p.n() == 0 ? 1 : p.n();  // out of range: ValidateRequest says so
  switch (p.response_format().type()) {
    case v1::ResponseFormat::TYPE_JSON_OBJECT:
      s.response_format.kind = grammar::GrammarKind::kJsonObject;
      break;
    case v1::ResponseFormat::TYPE_JSON_SCHEMA:
      s.response_format.kind = grammar::GrammarKind::kJsonSchema;
      s.response_format.schema = p.response_format().json_schema();
      break;
    default:
      break;
  }
  return s;
}

StopParams FromProto(const v1::StopParams& p) {
  StopParams s;
  s.max_tokens = p.has_max_tokens() ? p.max_tokens() : kDefaultMaxTokens;
  s.stop_strings.assign(p.stop().begin(), p.stop().end());
  s.stop_token_ids.assign(p.stop_token_ids().begin(), p.stop_token_ids().end());
  s.ignore_eos = p.ignore_eos();
  return s;
}

void ToProto(const SamplingParams& s, v1::SamplingParams* p) {
  p->set_temperature(s.temperature);
  p->set_top_p(s.top_p);
  p->set_top_k(s.top_k);
  p->set_min_p(s.min_p);
  p->set_repetition_penalty(s.repetition_penalty);
  p->set_presence_penalty(s.presence_penalty);
  p->set_frequency_penalty(s.frequency_penalty);
  if (s.seed) p->set_seed(*s.seed);
  p->set_logprobs(s.logprobs);
  p->set_top_logprobs(s.top_logprobs);
  if (s.n != 1) p->set_n(s.n);
  switch (s.response_format.kind) {
    case grammar::GrammarKind::kJsonObject:
      p->mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_OBJECT);
      break;
    case grammar::GrammarKind::kJsonSchema:
      p->mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
      p->mutable_response_format()->set_json_schema(s.response_format.schema);
      break;
    case grammar::GrammarKind::kNone:
      break;
  }
}

void ToProto(const StopParams& s, v1::StopParams* p) {
  p->set_max_tokens(s.max_tokens);
  for (const std::string& x : s.stop_strings) p->add_stop(x);
  for (TokenId t : s.stop_token_ids) p->add_stop_token_ids(t);
  p->set_ignore_eos(s.ignore_eos);
}

RequestSpec FromProto(const v1::NodeRequest& r) {
  RequestSpec spec;
  spec.id = r.request_id();
  spec.prompt.assign(r.prompt().begin(), r.prompt().end());
  spec.sampling = FromProto(r.sampling());
  spec.stop = FromProto(r.stop());
  spec.n_resumed = r.n_resumed();
  return spec;
}

void ToProto(const RequestSpec& spec, v1::NodeRequest* r) {
  r->set_request_id(spec.id);
  r->mutable_prompt()->Assign(spec.prompt.begin(), spec.prompt.end());
  ToProto(spec.sampling, r->mutable_sampling());
  ToProto(spec.stop, r->mutable_stop());
  r->set_n_resumed(spec.n_resumed);
}

v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kAbort:
    case FinishReason::kError:
      return v1::FINISH_REASON_ABORT;
    case FinishReason::kNone:
      break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

FinishReason FromProto(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
      return FinishReason::kStop;
    case v1::FINISH_REASON_LENGTH:
      return FinishReason::kLength;
    case v1::FINISH_REASON_ABORT:
      return FinishReason::kAbort;
    default:
      return FinishReason::kNone;
  }
}

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace pdserve::rpc
