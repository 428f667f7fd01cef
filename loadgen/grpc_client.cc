#include "loadgen/grpc_client.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/clock.h"

namespace pdserve::loadgen {

void GenerateStreamRecorder::OnResponse(const v1::GenerateResponse& response, int64_t now_ns) {
  if (response.has_chunk()) {
    const v1::Chunk& chunk = response.chunk();
    if (chunk.token_ids_size() > 0 || !chunk.text().empty()) {
      chunk_ns_.push_back(now_ns);
      chunk_tokens_ += chunk.token_ids_size();
    }
  } else if (response.has_complete()) {
    have_complete_ = true;
    complete_ = response.complete();
  } else if (response.has_error()) {
    stream_error_ =
        absl::StrCat(response.error().kind().empty() ? "error" : response.error().kind(), ": ",
                     response.error().message());
  }
}

void GenerateStreamRecorder::Finish(const grpc::Status& status, bool cancelled_by_us,
                                    RequestOutcome* out) {
  out->chunk_ns = std::move(chunk_ns_);
  out->output_tokens = chunk_tokens_;
  if (have_complete_) {
    out->output_tokens = complete_.usage().completion_tokens();
    out->output_tokens_from_usage = true;
    out->input_tokens = complete_.usage().prompt_tokens();
    out->cached_input_tokens = complete_.usage().cached_prompt_tokens();
    out->cached_input_tokens_reported = true;
    for (const v1::StageTiming& t : complete_.timings().stages()) {
      out->stages.push_back({t.stage(), t.duration_ns()});
    }
  }
  if (cancelled_by_us && !have_complete_) {
    out->cancelled = true;
    out->error = "cancelled at the time bound";
  } else if (!status.ok()) {
    out->error = absl::StrCat("grpc ", status.error_code(), ": ", status.error_message());
    if (!stream_error_.empty()) absl::StrAppend(&out->error, " (", stream_error_, ")");
  } else if (!stream_error_.empty()) {
    out->error = stream_error_;
  } else if (!have_complete_) {
    out->error = "stream ended without complete";
  } else if (complete_.finish_reason() == v1::FINISH_REASON_ABORT) {
    out->error = "aborted by the server";
  } else {
    out->success = true;
  }
}

class GrpcClient::Reactor : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  Reactor(GrpcClient* owner, std::shared_ptr<Call> call, DoneCallback done)
      : owner_(owner), call_(std::move(call)), done_(std::move(done)) {}

  void Start(v1::Generation::Stub* stub, v1::GenerateRequest request) {
    request_ = std::move(request);
    outcome_.send_ns = MonoNowNs();
    stub->async()->Generate(&call_->context, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // end of stream; OnDone follows
    recorder_.OnResponse(response_, MonoNowNs());
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    outcome_.end_ns = MonoNowNs();
    recorder_.Finish(status, call_->cancelled.load(), &outcome_);
    DoneCallback done = std::move(done_);
    RequestOutcome outcome = std::move(outcome_);
    GrpcClient* owner = owner_;
    const Call* call = call_.get();
    // live_ keeps the Call (and its context) alive until Finished, which
    // drops it under the owner's lock while the owner still holds the
    // channel: the context's channel reference must never be the last one
    // here, as destroying a channel on its own callback thread frees the
    // callback queue twice (seen under ASan).
    delete this;
    done(std::move(outcome));
    // Last: the owner's destructor waits for this, so `done` ran against a
    // live runner and the owner outlives this line.
    owner->Finished(call);
  }

 private:
  GrpcClient* owner_;
  std::shared_ptr<Call> call_;
  DoneCallback done_;
  v1::GenerateRequest request_;
  v1::GenerateResponse response_;
  GenerateStreamRecorder recorder_;
  RequestOutcome outcome_;
};

namespace {
std::shared_ptr<grpc::Channel> MakeLoadChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}
}  // namespace

GrpcClient::GrpcClient(const std::string& address)
    : channel_(MakeLoadChannel(address)), stub_(v1::Generation::NewStub(channel_)) {}

GrpcClient::~GrpcClient() {
  CancelAll();
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](decltype(live_)* live) { return live->empty(); }, &live_));
}

absl::StatusOr<ModelDescription> GrpcClient::GetModelInfo(absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::ModelInfo info;
  const grpc::Status st = stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  if (!st.ok()) {
    return absl::UnavailableError(
        absl::StrCat("GetModelInfo: grpc ", st.error_code(), ": ", st.error_message()));
  }
  ModelDescription d;
  d.name = info.model();
  d.vocab_size = info.vocab_size();
  d.context_length = info.context_length();
  d.eos_token_ids.assign(info.eos_token_ids().begin(), info.eos_token_ids().end());
  d.bos_token_id = info.bos_token_id();
  return d;
}

void GrpcClient::Send(const RequestInput& input, DoneCallback done) {
  v1::GenerateRequest req;
  req.set_request_id(input.id);
  if (!input.token_ids.empty()) {
    req.mutable_token_ids()->mutable_ids()->Assign(input.token_ids.begin(), input.token_ids.end());
  } else {
    req.set_text(input.text);
  }
  req.mutable_sampling()->set_temperature(input.temperature);
  req.mutable_stop()->set_max_tokens(input.max_tokens);
  req.mutable_stop()->set_ignore_eos(input.ignore_eos);
  auto call = std::make_shared<Call>();
  auto* reactor = new Reactor(this, call, std::move(done));
  {
    absl::MutexLock lock(&mu_);
    live_.push_back(std::move(call));
  }
  reactor->Start(stub_.get(), std::move(req));
}

void GrpcClient::CancelAll() {
  std::vector<std::shared_ptr<Call>> calls;
  {
    absl::MutexLock lock(&mu_);
    calls = live_;
  }
  // Outside the lock: a cancelled call may finish (and call Finished) inline.
  for (auto& c : calls) {
    c->cancelled.store(true);
    c->context.TryCancel();
  }
}

void GrpcClient::Finished(const Call* call) {
  absl::MutexLock lock(&mu_);
  auto it =
      std::find_if(live_.begin(), live_.end(), [&](const auto& c) { return c.get() == call; });
  if (it != live_.end()) {
    *it = std::move(live_.back());
    live_.pop_back();
  }
}

}  // namespace pdserve::loadgen
