#include "engine/tokenizer/tokenizer_vocab.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace pdserve::tokenizer_internal {
namespace {

constexpr std::string_view kModelKey = "tokenizer.ggml.model";
constexpr std::string_view kPreKey = "tokenizer.ggml.pre";
constexpr std::string_view kTokensKey = "tokenizer.ggml.tokens";
constexpr std::string_view kTypesKey = "tokenizer.ggml.token_type";
constexpr std::string_view kScoresKey = "tokenizer.ggml.scores";

// GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*).
uint8_t AttrFromFileType(int64_t type) {
  switch (type) {
    case 1:
      return kAttrNormal;
    case 2:
      return kAttrUnknown;
    case 3:
      return kAttrControl;
    case 4:
      return kAttrUserDefined;
    case 5:
      return kAttrUnused;
    case 6:
      return kAttrByte;
    default:
      return 0;  // undefined: neither encoded into nor decoded
  }
}

// Reads an optional token id key into *id. A value outside the vocabulary
// leaves *id unchanged (with a warning), as llama.cpp does.
absl::Status ReadTokenId(const gguf::GgufFile& file, std::string_view key, int32_t n_vocab,
                         TokenId* id) {
  if (!file.Has(key)) return absl::OkStatus();
  auto value = file.GetInt(key);
  if (!value.ok()) return value.status();
  if (*value < 0 || *value >= n_vocab) {
    PDS_LOG(WARNING) << "tokenizer: " << key << " = " << *value << " is outside the vocabulary of "
                     << n_vocab << " tokens; ignored";
    return absl::OkStatus();
  }
  *id = static_cast<TokenId>(*value);
  return absl::OkStatus();
}

absl::Status ReadBool(const gguf::GgufFile& file, std::string_view key, bool* value) {
  PDS_ASSIGN_OR_RETURN(*value, file.GetBoolOr(key, *value));
  return absl::OkStatus();
}

// The first of `texts` (in order) that is in the vocabulary.
TokenId FindFirst(const Vocab& v, std::initializer_list<std::string_view> texts) {
  for (std::string_view t : texts) {
    TokenId id = v.Find(t);
    if (id >= 0) return id;
  }
  return -1;
}

// Ids the GGUF does not name are recognised by their text, as llama.cpp does
// (it picks among several candidates in hash order; we take the first in
// list order, so the choice is stable). Such tokens become control tokens.
void DetectByText(Vocab* v) {
  struct Rule {
    TokenId* id;
    std::initializer_list<std::string_view> texts;
  };
  const Rule rules[] = {
      {&v->eot,
       {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
        "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"}},
      {&v->eom, {"<|eom_id|>"}},
      {&v->fim_pre,
       {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
        "<|code_prefix|>", "<|prefix|>"}},
      {&v->fim_suf,
       {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
        "<|code_suffix|>", "<|suffix|>"}},
      {&v->fim_mid,
       {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
        "<|code_middle|>", "<|middle|>"}},
      {&v->fim_pad, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"}},
      {&v->fim_rep, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}},
      {&v->fim_sep, {"<|file_sep|>"}},
  };
  for (const Rule& rule : rules) {
    if (*rule.id >= 0) continue;
    *rule.id = FindFirst(*v, rule.texts);
    if (*rule.id >= 0) v->attrs[*rule.id] |= kAttrControl;
  }
}

// End-of-generation ids, following llama.cpp: FIM pad/repo/file-separator,
// tokens whose text marks an end, and EOS/EOT/EOM.
void BuildEogSet(Vocab* v) {
  std::vector<TokenId> eog;
  for (TokenId id : {v->fim_pad, v->fim_rep, v->fim_sep}) {
    if (id >= 0) eog.push_back(id);
  }
  static constexpr std::string_view kEndTexts[] = {"<|eot_id|>",
                                                   "<|im_end|>",
                                                   "<|end|>",
                                                   "<|return|>",
                                                   "<|call|>",
                                                   "<|flush|>",
                                                   "<|calls|>",
                                                   "<end_of_turn>",
                                                   "<|endoftext|>",
                                                   "</s>",
                                                   "<|eom_id|>",
                                                   "<EOT>",
                                                   "_<EOT>",
                                                   "[EOT]",
                                                   "[EOS]",
                                                   "<|end_of_text|>",
                                                   "<end_of_utterance>",
                                                   "<eos>",
                                                   "<turn|>",
                                                   "<|tool_response>",
                                                   "<｜end▁of▁sentence｜>",
                                                   "[e~["};
  for (std::string_view text : kEndTexts) {
    TokenId id = v->Find(text);
    if (id < 0) continue;
    eog.push_back(id);
    v->attrs[id] |= kAttrControl;
  }
  for (TokenId id : {v->eos, v->eot, v->eom}) {
    if (id >= 0) eog.push_back(id);
  }
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());

  auto erase = [&eog](TokenId id) {
    eog.erase(std::remove(eog.begin(), eog.end(), id), eog.end());
  };
  auto in_eog = [&eog, v](std::string_view text) {
    TokenId id = v->Find(text);
    return id >= 0 && std::binary_search(eog.begin(), eog.end(), id) ? id : TokenId{-1};
  };
  // gpt-oss and solar-open end a message with <|end|> but keep generating
  // after it; their <|return|>/<|call|> (or <|calls|>/<|flush|>) end instead.
  const TokenId end = in_eog("<|end|>");
  const bool has_return = in_eog("<|return|>") >= 0;
  const bool has_call = in_eog("<|call|>") >= 0 || in_eog("<|calls|>") >= 0;
  const bool has_flush = in_eog("<|flush|>") >= 0;
  if (end >= 0 && ((has_return && has_call) || (has_call && has_flush))) {
    erase(end);
    v->attrs[end] = kAttrUserDefined;
  }
  // Gemma 4 and PLaMo use </s> as an ordinary token.
  const TokenId s = in_eog("</s>");
  if (s >= 0 && (in_eog("<|tool_response>") >= 0 || in_eog("<|plamo:eos|>") >= 0)) {
    erase(s);
    v->attrs[s] = kAttrNormal;
  }
  v->eog = std::move(eog);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Vocab>> LoadVocab(const gguf::GgufFile& file) {
  auto v = std::make_unique<Vocab>();
  auto model = file.GetString(kModelKey);
  if (!model.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF has no usable tokenizer: ", model.status().message()));
  }
  v->model = std::string(*model);
  if (v->model == "gpt2") {
    v->type = VocabType::kBpe;
  } else if (v->model == "llama") {
    v->type = VocabType::kSpm;
  } else {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer model '", v->model, "' is not supported (supported: gpt2, llama)"));
  }

  PDS_ASSIGN_OR_RETURN(std::vector<std::string_view> tokens, file.GetStringArray(kTokensKey));
  if (tokens.empty()) return absl::InvalidArgumentError("tokenizer.ggml.tokens is empty");
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError("tokenizer.ggml.tokens has too many entries");
  }
  const int32_t n = static_cast<int32_t>(tokens.size());

  PDS_ASSIGN_OR_RETURN(std::string_view pre, file.GetStringOr(kPreKey, ""));
  v->pre = std::string(pre);  // SPM ignores it (it has no pre-tokenizer)
  if (v->type == VocabType::kBpe) {
    if (v->pre.empty()) v->pre = std::string(kDefaultPreTokenizer);
    v->preset = FindPreTokenizerPreset(v->pre);
    if (v->preset == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown pre-tokenizer '", v->pre,
                       "' (tokenizer.ggml.pre); supported: ", SupportedPreTokenizerNames()));
    }
  }

  v->attrs.assign(n, kAttrNormal);
  if (file.Has(kTypesKey)) {
    PDS_ASSIGN_OR_RETURN(std::vector<int64_t> types, file.GetIntArray(kTypesKey));
    if (types.size() < tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.token_type has ", types.size(),
                                                     " entries for ", n, " tokens"));
    }
    for (int32_t i = 0; i < n; ++i) v->attrs[i] = AttrFromFileType(types[i]);
  }

  v->scores.assign(n, 0.0f);
  if (file.Has(kScoresKey)) {
    auto scores = file.GetFloatArray(kScoresKey);
    if (!scores.ok()) {
      // Some converters store integer scores.
      PDS_ASSIGN_OR_RETURN(std::vector<int64_t> int_scores, file.GetIntArray(kScoresKey));
      scores = std::vector<float>(int_scores.begin(), int_scores.end());
    }
    if (scores->size() < tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.scores has ", scores->size(),
                                                     " entries for ", n, " tokens"));
    }
    for (int32_t i = 0; i < n; ++i) {
      // NaN would break the merge queue's ordering.
      const float s = (*scores)[i];
      v->scores[i] = std::isnan(s) ? -std::numeric_limits<float>::infinity() : s;
    }
  }

  v->texts.reserve(n);
  v->ids.reserve(n);
  for (int32_t i = 0; i < n; ++i) {
    v->texts.emplace_back(tokens[i]);
    if (tokens[i].empty()) continue;  // never matched or merged into
    auto [it, inserted] = v->ids.emplace(tokens[i], i);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.tokens: token ", i,
                                                     " repeats the text of token ", it->second));
    }
  }

  if (v->type == VocabType::kSpm) {
    // SentencePiece conventions when the file does not say otherwise.
    for (auto [id, def] : {std::pair{&v->bos, 1}, {&v->eos, 2}, {&v->unk, 0}}) {
      if (def < n) *id = def;
    }
    v->add_bos = true;
    v->add_space_prefix = true;
  } else {
    v->add_bos = v->preset->default_add_bos;
  }
  const std::pair<std::string_view, TokenId*> id_keys[] = {
      {"tokenizer.ggml.bos_token_id", &v->bos},
      {"tokenizer.ggml.eos_token_id", &v->eos},
      {"tokenizer.ggml.eot_token_id", &v->eot},
      {"tokenizer.ggml.eom_token_id", &v->eom},
      {"tokenizer.ggml.unknown_token_id", &v->unk},
      {"tokenizer.ggml.padding_token_id", &v->pad},
      {"tokenizer.ggml.fim_pre_token_id", &v->fim_pre},
      {"tokenizer.ggml.fim_suf_token_id", &v->fim_suf},
      {"tokenizer.ggml.fim_mid_token_id", &v->fim_mid},
      {"tokenizer.ggml.fim_pad_token_id", &v->fim_pad},
      {"tokenizer.ggml.fim_rep_token_id", &v->fim_rep},
      {"tokenizer.ggml.fim_sep_token_id", &v->fim_sep},
      // Older spellings of the FIM keys.
      {"tokenizer.ggml.prefix_token_id", &v->fim_pre},
      {"tokenizer.ggml.suffix_token_id", &v->fim_suf},
      {"tokenizer.ggml.middle_token_id", &v->fim_mid},
  };
  for (const auto& [key, id] : id_keys) PDS_RETURN_IF_ERROR(ReadTokenId(file, key, n, id));
  PDS_RETURN_IF_ERROR(ReadBool(file, "tokenizer.ggml.add_bos_token", &v->add_bos));
  PDS_RETURN_IF_ERROR(ReadBool(file, "tokenizer.ggml.add_eos_token", &v->add_eos));
  PDS_RETURN_IF_ERROR(ReadBool(file, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix));
  if (v->add_bos && v->bos < 0) {
    PDS_LOG(WARNING) << "tokenizer: add_bos_token is set but there is no BOS token; not adding it";
    v->add_bos = false;
  }
  if (v->add_eos && v->eos < 0) {
    PDS_LOG(WARNING) << "tokenizer: add_eos_token is set but there is no EOS token; not adding it";
    v->add_eos = false;
  }

  DetectByText(v.get());
  BuildEogSet(v.get());
  return v;
}

}  // namespace pdserve::tokenizer_internal
