#include "node/events/kv_trailer.h"

#include <cstdint>

#include "absl/strings/str_cat.h"

namespace pdserve::node {

v1::KvTrailer MakeKvTrailer(const SeqOutput& out) {
  v1::KvTrailer trailer;
  trailer.set_token_id(out.tokens.at(0));
  for (const SampleFirstToken& x : out.samples) trailer.add_samples()->set_token_id(x.token);
  return trailer;
}

absl::StatusOr<std::vector<TokenId>> ParseKvTrailer(std::string_view bytes, int32_t n_vocab) {
  v1::KvTrailer trailer;
  if (bytes.size() > static_cast<size_t>(INT32_MAX) ||
      !trailer.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("KV transfer trailer is malformed");
  }
  std::vector<TokenId> firsts;
  if (trailer.samples_size() == 0) {
    firsts.push_back(trailer.token_id());
  } else {
    for (const v1::KvTrailer::Sample& x : trailer.samples()) firsts.push_back(x.token_id());
  }
  for (TokenId t : firsts) {
    if (t < 0 || t >= n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV transfer trailer: token #1 (", t, ") is outside [0, ", n_vocab, ")"));
    }
  }
  return firsts;
}

}  // namespace pdserve::node
