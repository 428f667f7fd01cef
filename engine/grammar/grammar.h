// Structured outputs: a response format (any JSON object, or a JSON schema)
// compiled against a vocabulary into a matcher that says, before each
// token, which tokens keep the output inside the grammar (a bitmask the
// sampler applies), and follows the tokens actually chosen.
//
// The engine is xgrammar's C++ core (see CMakeLists.txt); nothing of it
// shows in this header. Every failure it reports (a bad schema, a token the
// grammar refuses) comes back as a Status.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pdserve::grammar {

enum class GrammarKind {
  kNone,
  kJsonObject,  // any JSON object (OpenAI's {"type": "json_object"})
  kJsonSchema,  // `schema` is a JSON schema
};

struct GrammarSpec {
  GrammarKind kind = GrammarKind::kNone;
  std::string schema;  // kJsonSchema: the schema's JSON text
  bool enabled() const { return kind != GrammarKind::kNone; }
};

// Schema keywords the grammar enforces, plus annotations that constrain
// nothing (title, description, ...). Anything else is ignored by the
// grammar; strict requests are refused when they use it.
bool IsSupportedSchemaKeyword(const std::string& keyword);

// Checks a JSON schema without a vocabulary (the router's 400): it must
// parse as JSON, be an object (or true), and convert to a grammar. With
// `strict`, keywords the grammar would ignore are refused, all named in
// the message. InvalidArgument with a message a client can act on.
absl::Status CheckSchema(const std::string& schema_json, bool strict);

// A bitmask over the vocabulary: bit t of word t / 32 is set when token t
// is allowed.
using TokenBitmask = std::vector<uint32_t>;
inline int32_t BitmaskWords(int32_t n_vocab) { return (n_vocab + 31) / 32; }
inline bool MaskAllows(const uint32_t* mask, int32_t token) {
  return (mask[token >> 5] >> (token & 31)) & 1u;
}

// One request's grammar state. Not thread-safe: one sequence owns it.
class TokenMatcher {
 public:
  virtual ~TokenMatcher() = default;
  // Writes the allowed next tokens into mask (BitmaskWords(n_vocab) words).
  // FailedPrecondition once terminated.
  virtual absl::Status FillMask(uint32_t* mask) = 0;
  // Advances past `token`; InvalidArgument when the grammar does not allow
  // it (a peer's token #1, or a bug).
  virtual absl::Status Accept(int32_t token) = 0;
  // The grammar is complete and a stop token was accepted: nothing more may
  // follow.
  virtual bool IsTerminated() const = 0;
};

// Compiles grammars for one vocabulary. Thread-safe; compiled grammars are
// cached by schema text, so a repeated schema costs one lookup.
class GrammarCompiler {
 public:
  // token_bytes[t]: what token t decodes to; empty for control tokens
  // (never allowed). stop_ids: tokens that end the output once the grammar
  // is complete (EOS, end-of-turn).
  static absl::StatusOr<std::unique_ptr<GrammarCompiler>> Create(
      const std::vector<std::string>& token_bytes, const std::vector<int32_t>& stop_ids);
  virtual ~GrammarCompiler() = default;

  virtual int32_t n_vocab() const = 0;
  // InvalidArgument for a schema CheckSchema refuses.
  virtual absl::StatusOr<std::unique_ptr<TokenMatcher>> NewMatcher(const GrammarSpec& spec) = 0;
};

}  // namespace pdserve::grammar
