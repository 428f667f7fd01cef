#include "engine/grammar/grammar.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <set>
#include <utility>

#include <dlpack/dlpack.h>
#include <xgrammar/xgrammar.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace pdserve::grammar {
namespace {

using json = nlohmann::json;

// Compact JSON (", " and ": " only): a small model that may choose free
// whitespace can emit newlines until max_tokens runs out.
constexpr bool kAnyWhitespace = false;
// OpenAI's strict mode: properties not named in the schema are not
// generated (additionalProperties defaults to false).
constexpr bool kStrictMode = true;
// "Any JSON object" for json_object: any properties allowed.
constexpr const char* kAnyObjectSchema = R"({"type": "object"})";

// Limits on a schema a client sends (the router checks them first).
constexpr size_t kMaxSchemaBytes = 64 * 1024;
constexpr int kMaxSchemaDepth = 32;

// Keywords that hold sub-schemas, by shape of their value.
const std::set<std::string>& SchemaValuedKeywords() {
  static const auto* k = new std::set<std::string>{"items", "additionalProperties", "propertyNames",
                                                   "unevaluatedProperties", "unevaluatedItems"};
  return *k;
}
const std::set<std::string>& SchemaListKeywords() {
  static const auto* k = new std::set<std::string>{"anyOf", "oneOf", "allOf", "prefixItems"};
  return *k;
}
const std::set<std::string>& SchemaMapKeywords() {
  static const auto* k =
      new std::set<std::string>{"properties", "patternProperties", "$defs", "definitions"};
  return *k;
}

// Collects keywords the grammar ignores, as "path: keyword".
void FindUnsupported(const json& schema, const std::string& path, int depth,
                     std::vector<std::string>* out) {
  if (!schema.is_object() || depth > kMaxSchemaDepth) return;
  for (const auto& [key, value] : schema.items()) {
    if (!IsSupportedSchemaKeyword(key)) {
      out->push_back(absl::StrCat(path.empty() ? "" : path + ".", key));
      continue;
    }
    if (SchemaValuedKeywords().count(key)) {
      FindUnsupported(value, absl::StrCat(path.empty() ? "" : path + ".", key), depth + 1, out);
    } else if (SchemaListKeywords().count(key) && value.is_array()) {
      for (size_t i = 0; i < value.size(); ++i) {
        FindUnsupported(value[i], absl::StrCat(path.empty() ? "" : path + ".", key, "[", i, "]"),
                        depth + 1, out);
      }
    } else if (SchemaMapKeywords().count(key) && value.is_object()) {
      for (const auto& [name, sub] : value.items()) {
        FindUnsupported(sub, absl::StrCat(path.empty() ? "" : path + ".", key, ".", name),
                        depth + 1, out);
      }
    }
  }
}

// xgrammar's messages start with "[time] /path/file.cc:line: "; the client
// needs only what follows.
std::string Clean(const char* what) {
  std::string m(what);
  if (const size_t cc = m.find(".cc:"); cc != std::string::npos) {
    if (const size_t colon = m.find(": ", cc); colon != std::string::npos) m = m.substr(colon + 2);
  }
  while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
  return m;
}

int Depth(const json& j, int limit) {
  if (limit < 0) return 0;
  int d = 0;
  if (j.is_object() || j.is_array()) {
    for (const json& v : j) d = std::max(d, Depth(v, limit - 1));
    return d + 1;
  }
  return 0;
}

class XgrammarMatcher final : public TokenMatcher {
 public:
  XgrammarMatcher(xgrammar::CompiledGrammar compiled, int32_t n_vocab)
      : matcher_(std::move(compiled)), n_vocab_(n_vocab) {}

  absl::Status FillMask(uint32_t* mask) override {
    if (matcher_.IsTerminated()) {
      return absl::FailedPreconditionError("the output is complete; no token may follow");
    }
    int64_t shape[1] = {BitmaskWords(n_vocab_)};
    DLTensor t;
    t.data = mask;
    t.device = DLDevice{kDLCPU, 0};
    t.ndim = 1;
    t.dtype = xgrammar::GetBitmaskDLType();
    t.shape = shape;
    t.strides = nullptr;
    t.byte_offset = 0;
    try {
      matcher_.FillNextTokenBitmask(&t);
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("grammar mask: ", Clean(e.what())));
    }
    return absl::OkStatus();
  }

  absl::Status Accept(int32_t token) override {
    if (token < 0 || token >= n_vocab_) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", token, " is outside the vocabulary"));
    }
    if (matcher_.IsTerminated()) {
      return absl::InvalidArgumentError("the output is complete; no token may follow");
    }
    try {
      if (!matcher_.AcceptToken(token)) {
        return absl::InvalidArgumentError(
            absl::StrCat("token ", token, " does not fit the response format"));
      }
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("grammar: ", Clean(e.what())));
    }
    return absl::OkStatus();
  }

  bool IsTerminated() const override { return matcher_.IsTerminated(); }

 private:
  xgrammar::GrammarMatcher matcher_;
  const int32_t n_vocab_;
};

class XgrammarCompiler final : public GrammarCompiler {
 public:
  XgrammarCompiler(xgrammar::TokenizerInfo info, int32_t n_vocab)
      : compiler_(info, /*max_threads=*/2, /*cache_enabled=*/true), n_vocab_(n_vocab) {}

  int32_t n_vocab() const override { return n_vocab_; }

  absl::StatusOr<std::unique_ptr<TokenMatcher>> NewMatcher(const GrammarSpec& spec) override {
    if (!spec.enabled()) return absl::InvalidArgumentError("no response format to compile");
    const bool any_object = spec.kind == GrammarKind::kJsonObject;
    if (!any_object) {
      if (absl::Status s = CheckSchema(spec.schema, /*strict=*/false); !s.ok()) return s;
    }
    try {
      xgrammar::CompiledGrammar compiled =
          compiler_.CompileJSONSchema(any_object ? kAnyObjectSchema : spec.schema, kAnyWhitespace,
                                      std::nullopt, std::nullopt, any_object ? false : kStrictMode);
      return std::unique_ptr<TokenMatcher>(new XgrammarMatcher(std::move(compiled), n_vocab_));
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot compile the JSON schema: ", Clean(e.what())));
    }
  }

 private:
  xgrammar::GrammarCompiler compiler_;
  const int32_t n_vocab_;
};

}  // namespace

bool IsSupportedSchemaKeyword(const std::string& keyword) {
  static const auto* k = new std::set<std::string>{
      // Enforced by the grammar.
      "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
      "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
      "pattern", "format", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
      "exclusiveMaximum", "multipleOf", "minProperties", "maxProperties", "patternProperties",
      "propertyNames", "unevaluatedProperties", "unevaluatedItems",
      // Annotations: they constrain nothing.
      "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
      "readOnly", "writeOnly"};
  return k->count(keyword) > 0;
}

absl::Status CheckSchema(const std::string& schema_json, bool strict) {
  if (schema_json.size() > kMaxSchemaBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the JSON schema is ", schema_json.size(),
                                                   " bytes; the limit is ", kMaxSchemaBytes));
  }
  json schema = json::parse(schema_json, nullptr, /*allow_exceptions=*/false);
  if (schema.is_discarded()) return absl::InvalidArgumentError("the JSON schema is not valid JSON");
  if (!schema.is_object() && !(schema.is_boolean() && schema.get<bool>())) {
    return absl::InvalidArgumentError("the JSON schema must be an object");
  }
  if (Depth(schema, kMaxSchemaDepth + 1) > kMaxSchemaDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("the JSON schema nests deeper than ", kMaxSchemaDepth, " levels"));
  }
  if (strict) {
    std::vector<std::string> unsupported;
    FindUnsupported(schema, "", 0, &unsupported);
    if (!unsupported.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the JSON schema uses keywords that cannot be enforced (strict mode): ",
                       absl::StrJoin(unsupported, ", ")));
    }
  }
  try {
    xgrammar::Grammar::FromJSONSchema(schema_json, kAnyWhitespace, std::nullopt, std::nullopt,
                                      kStrictMode);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON schema: ", Clean(e.what())));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<GrammarCompiler>> GrammarCompiler::Create(
    const std::vector<std::string>& token_bytes, const std::vector<int32_t>& stop_ids) {
  const int32_t n_vocab = static_cast<int32_t>(token_bytes.size());
  if (n_vocab == 0) return absl::InvalidArgumentError("empty vocabulary");
  for (int32_t id : stop_ids) {
    if (id < 0 || id >= n_vocab) {
      return absl::InvalidArgumentError(absl::StrCat("stop token ", id, " outside the vocabulary"));
    }
  }
  try {
    xgrammar::TokenizerInfo info(token_bytes, xgrammar::VocabType::RAW, n_vocab, stop_ids);
    return std::unique_ptr<GrammarCompiler>(new XgrammarCompiler(std::move(info), n_vocab));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot index the vocabulary: ", Clean(e.what())));
  }
}

}  // namespace pdserve::grammar
