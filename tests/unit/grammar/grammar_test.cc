#include "engine/grammar/grammar.h"

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace pdserve::grammar {
namespace {

// A small vocabulary: single characters, a few multi-character pieces, a
// control token (empty: never allowed) and an end-of-generation token.
const std::vector<std::string>& Vocab() {
  static const auto* v = new std::vector<std::string>{
      "{",   "}",     "[",  "]", "\"", ":",    ",",     " ",    "a",     "b",
      "n",   "1",     "2",  "-", ".",  "true", "false", "null", "\"a\"", "{\"",
      "\":", "\"b\"", "12", "x", "\n", "e",    "ab",    "",  // 27: a control token
      "",                                                    // 28: end of generation
      "u",   "l",     "r",  "s",
  };
  return *v;
}
constexpr int32_t kControl = 27;
constexpr int32_t kEos = 28;

std::unique_ptr<GrammarCompiler> Compiler() {
  auto c = GrammarCompiler::Create(Vocab(), {kEos});
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(*c);
}

int32_t Id(const std::string& piece) {
  for (size_t i = 0; i < Vocab().size(); ++i) {
    if (Vocab()[i] == piece && !piece.empty()) return static_cast<int32_t>(i);
  }
  ADD_FAILURE() << "no token " << piece;
  return -1;
}

GrammarSpec Schema(std::string s) { return {GrammarKind::kJsonSchema, std::move(s)}; }

const char* kPoint = R"({"type": "object", "properties": {"a": {"type": "integer"},
    "b": {"type": "boolean"}}, "required": ["a", "b"], "additionalProperties": false})";

// Feeds pieces; returns the index of the first refused one (-1: all taken).
int Feed(TokenMatcher* m, const std::vector<std::string>& pieces) {
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (!m->Accept(Id(pieces[i])).ok()) return static_cast<int>(i);
  }
  return -1;
}

TEST(GrammarSchema, RefusesWhatIsNotASchema) {
  EXPECT_FALSE(CheckSchema("{", false).ok());
  EXPECT_FALSE(CheckSchema("[1, 2]", false).ok());
  EXPECT_FALSE(CheckSchema("42", false).ok());
  EXPECT_FALSE(CheckSchema(R"({"type": "banana"})", false).ok());
  EXPECT_TRUE(CheckSchema(kPoint, true).ok());
  EXPECT_TRUE(CheckSchema(R"({"type": "object"})", false).ok());
}

TEST(GrammarSchema, StrictNamesEveryUnsupportedKeyword) {
  const std::string s = R"({"type": "object", "properties": {"a": {"type": "string",
      "contentEncoding": "base64"}}, "if": {"type": "object"}})";
  EXPECT_TRUE(CheckSchema(s, /*strict=*/false).ok());
  absl::Status st = CheckSchema(s, /*strict=*/true);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("properties.a.contentEncoding"), std::string::npos) << st;
  EXPECT_NE(st.message().find("if"), std::string::npos) << st;
}

TEST(GrammarSchema, BoundsHostileSchemas) {
  std::string deep;
  for (int i = 0; i < 200; ++i) deep += R"({"type": "array", "items": )";
  deep += R"({"type": "integer"})";
  for (int i = 0; i < 200; ++i) deep += "}";
  absl::Status st = CheckSchema(deep, false);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("deeper"), std::string::npos) << st;
  EXPECT_FALSE(CheckSchema(std::string(1 << 20, ' ') + "{}", false).ok());
  // Huge repetition bounds compile (xgrammar counts repeats, it does not
  // unroll them) and still constrain.
  auto compiler = Compiler();
  auto m = compiler->NewMatcher(Schema(R"({"type": "array", "minItems": 2, "maxItems": 1000000,
      "items": {"type": "string", "minLength": 1, "maxLength": 1000000}})"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(Feed(m->get(), {"[", "\"", "a", "\"", "]"}), 4);  // one item is too few
}

TEST(GrammarMatcher, AcceptsAnObjectOfTheSchemaThenOnlyTheStopToken) {
  auto compiler = Compiler();
  auto m = compiler->NewMatcher(Schema(kPoint));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(
      Feed(m->get(), {"{\"", "a", "\":", " ", "12", ",", " ", "\"b\"", ":", " ", "true", "}"}), -1);
  EXPECT_FALSE(m->get()->IsTerminated());
  std::vector<uint32_t> mask(BitmaskWords(compiler->n_vocab()));
  ASSERT_TRUE(m->get()->FillMask(mask.data()).ok());
  for (int32_t t = 0; t < compiler->n_vocab(); ++t)
    EXPECT_EQ(MaskAllows(mask.data(), t), t == kEos);
  EXPECT_TRUE(m->get()->Accept(kEos).ok());
  EXPECT_TRUE(m->get()->IsTerminated());
  EXPECT_FALSE(m->get()->Accept(Id("1")).ok());
  EXPECT_FALSE(m->get()->FillMask(mask.data()).ok());
}

TEST(GrammarMatcher, RefusesWhatBreaksTheSchema) {
  auto compiler = Compiler();
  struct Case {
    std::vector<std::string> pieces;
    int refused_at;
  };
  const std::vector<Case> cases = {
      {{"{", "\"b\""}, 1},                      // b before the required a (compact, in order)
      {{"{\"", "x"}, 1},                        // no property x
      {{"{\"", "a", "\":", " ", "true"}, 4},    // a is an integer
      {{"{\"", "a", "\":", " ", "1", "."}, 5},  // ... not a number
      {{"[", "]"}, 0},                          // an object, not an array
      {{"{\"", "a", "\":", " ", "1", "}"}, 5},  // b is required
  };
  for (const Case& c : cases) {
    auto m = compiler->NewMatcher(Schema(kPoint));
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(Feed(m->get(), c.pieces), c.refused_at) << c.pieces.back();
  }
  auto m = compiler->NewMatcher(Schema(kPoint));
  EXPECT_FALSE(m->get()->Accept(kControl).ok());
  EXPECT_FALSE(m->get()->Accept(kEos).ok());  // nothing is complete yet
  EXPECT_FALSE(m->get()->Accept(-1).ok());
  EXPECT_FALSE(m->get()->Accept(compiler->n_vocab()).ok());
}

TEST(GrammarMatcher, JsonObjectTakesAnyObjectOnly) {
  auto compiler = Compiler();
  GrammarSpec any{GrammarKind::kJsonObject, ""};
  auto m = compiler->NewMatcher(any);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(Feed(m->get(), {"{\"", "x", "\":", " ", "[", "null", ",", " ", "12", "]", "}"}), -1);
  EXPECT_TRUE(m->get()->Accept(kEos).ok());
  auto arr = compiler->NewMatcher(any);
  EXPECT_EQ(Feed(arr->get(), {"["}), 0);
}

TEST(GrammarMatcher, BadSchemaIsAnError) {
  auto compiler = Compiler();
  EXPECT_EQ(compiler->NewMatcher(Schema("{")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(compiler->NewMatcher(Schema(R"({"type": 7})")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The mask against brute force: token t is allowed exactly when a matcher
// that replays the prefix accepts t. Random walks through several schemas.
TEST(GrammarMatcher, MaskMatchesBruteForce) {
  auto compiler = Compiler();
  const std::vector<GrammarSpec> specs = {
      Schema(kPoint),
      Schema(R"({"type": "array", "items": {"enum": ["a", "ab", 12, null]}, "minItems": 1,
                 "maxItems": 3})"),
      Schema(R"({"anyOf": [{"type": "string", "maxLength": 3}, {"type": "number"},
                 {"const": false}]})"),
      GrammarSpec{GrammarKind::kJsonObject, ""},
  };
  std::mt19937 rng(1234);
  const int32_t n_vocab = compiler->n_vocab();
  for (size_t si = 0; si < specs.size(); ++si) {
    for (int walk = 0; walk < 8; ++walk) {
      auto m = compiler->NewMatcher(specs[si]);
      ASSERT_TRUE(m.ok()) << m.status();
      std::vector<int32_t> prefix;
      std::vector<uint32_t> mask(BitmaskWords(n_vocab));
      for (int step = 0; step < 12 && !m->get()->IsTerminated(); ++step) {
        ASSERT_TRUE(m->get()->FillMask(mask.data()).ok());
        std::vector<int32_t> allowed;
        for (int32_t t = 0; t < n_vocab; ++t) {
          auto fresh = compiler->NewMatcher(specs[si]);
          for (int32_t p : prefix) ASSERT_TRUE(fresh->get()->Accept(p).ok());
          const bool accepts = fresh->get()->Accept(t).ok();
          EXPECT_EQ(MaskAllows(mask.data(), t), accepts)
              << "schema " << si << " step " << step << " token '" << Vocab()[t] << "'";
          if (accepts) allowed.push_back(t);
        }
        // The small vocabulary cannot spell everything (no "e" after "tru"
        // for instance): a walk may end with nothing allowed.
        if (allowed.empty()) break;
        const int32_t pick = allowed[rng() % allowed.size()];
        ASSERT_TRUE(m->get()->Accept(pick).ok());
        prefix.push_back(pick);
      }
    }
  }
}

}  // namespace
}  // namespace pdserve::grammar
