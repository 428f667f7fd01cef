// Jinja source -> syntax tree. The lexer applies whitespace control as
// transformers renders chat templates (trim_blocks and lstrip_blocks on,
// `-`/`+` modifiers, one trailing newline of the source dropped).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/jinja/value.h"

namespace pdserve::jinja {

struct SourcePos {
  int line = 1;
  int column = 1;
};

enum class ExprKind {
  kLiteral,   // literal
  kName,      // name
  kList,      // args
  kTuple,     // args
  kDict,      // args: key, value, key, value, ...
  kGetAttr,   // args[0].name
  kGetItem,   // args[0][args[1]]
  kSlice,     // args[0][args[1]:args[2]:args[3]] (null = omitted)
  kCall,      // args[0](args[1..], kwargs)
  kFilter,    // args[0] | name(args[1..], kwargs)
  kTest,      // args[0] is [not] name(args[1..])
  kUnary,     // name in {not, -, +}; args[0]
  kBinary,    // name is the operator; args[0], args[1]
  kAnd,       // args[0] and args[1]
  kOr,        // args[0] or args[1]
  kCompare,   // args[0] ops[0] args[1] ops[1] args[2] ...
  kCondExpr,  // args[0] if args[1] else args[2] (args[2] may be null)
};

struct Expr {
  ExprKind kind;
  SourcePos pos;
  Value literal;
  std::string name;
  bool negated = false;  // kTest: `is not`
  std::vector<std::unique_ptr<Expr>> args;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  std::vector<std::string> ops;  // kCompare
};

enum class StmtKind {
  kText,       // text
  kOutput,     // {{ expr }}
  kIf,         // if expr: body else else_body (elif = a single kIf in else_body)
  kFor,        // for targets in expr [if filter]: body else else_body
  kSet,        // set targets = expr; or set targets[0].attr = expr
  kSetBlock,   // {% set targets[0] %}body{% endset %}
  kMacro,      // macro name(targets = defaults): body
  kCallBlock,  // {% call(targets) expr %}body{% endcall %}
  kBreak,
  kContinue,
  kFilterBlock,  // {% filter expr %}body{% endfilter %} (expr is a kFilter with null input)
  kScope,        // body run as is ({% generation %} of transformers)
};

struct Stmt {
  StmtKind kind;
  SourcePos pos;
  std::string text;  // kText; kMacro name; kSet attribute name (when set_attr)
  bool set_attr = false;
  std::unique_ptr<Expr> expr;
  std::unique_ptr<Expr> filter;
  std::vector<std::string> targets;
  std::vector<std::unique_ptr<Expr>> defaults;  // kMacro/kCallBlock, one per target (may be null)
  std::vector<std::unique_ptr<Stmt>> body;
  std::vector<std::unique_ptr<Stmt>> else_body;
};

using Body = std::vector<std::unique_ptr<Stmt>>;

// Parses a template; errors name the line and column.
// `max_depth` bounds nesting of expressions and blocks.
absl::StatusOr<Body> Parse(std::string_view source, int max_depth);

}  // namespace pdserve::jinja
