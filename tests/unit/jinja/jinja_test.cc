// Language features of the chat-template renderer (expected outputs are
// what Python jinja2 3.1 prints with trim_blocks/lstrip_blocks), its limits
// on hostile templates, and the provenance of user content.
#include "engine/jinja/jinja.h"

#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace pdserve::jinja {
namespace {

using Json = nlohmann::ordered_json;

absl::StatusOr<std::string> R(std::string_view source, const Json& vars = Json::object(),
                              const Limits& limits = {}) {
  auto t = Template::Parse(source, limits);
  if (!t.ok()) return t.status();
  auto r = t->RenderVariables(vars);
  if (!r.ok()) return r.status();
  return r->text;
}

std::string Ok(std::string_view source, const Json& vars = Json::object()) {
  auto r = R(source, vars);
  EXPECT_TRUE(r.ok()) << source << ": " << r.status();
  return r.ok() ? *r : "";
}

TEST(JinjaTest, LoopsAndLoopVariable) {
  EXPECT_EQ(Ok("{% for k, v in d.items() %}{{ loop.index }}{{ k }}={{ v }}"
               "{% if not loop.last %},{% endif %}{% endfor %}",
               {{"d", {{"a", 1}, {"b", 2}}}}),
            "1a=1,2b=2");
  EXPECT_EQ(Ok("{% for x in [5, 6, 7] %}{{ loop.index0 }}{{ loop.first }}{{ loop.length }}"
               "{{ loop.previtem | default('-') }}{% endfor %}"),
            "0True3-1False352False36");
  const Json ms = {
      {"ms", Json::array(
                 {{{"r", "u"}, {"c", "1"}}, {{"r", "a"}, {"c", "2"}}, {{"r", "u"}, {"c", "3"}}})}};
  EXPECT_EQ(Ok("{% for m in ms if m.r == 'u' %}{{ m.c }}{% else %}empty{% endfor %}|"
               "{{ ms | selectattr('r', 'equalto', 'u') | map(attribute='c') | join(',') }}",
               ms),
            "13|1,3");
  EXPECT_EQ(Ok("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(Ok("{% for i in [1,2,3,4] %}{% if i == 2 %}{% continue %}{% endif %}"
               "{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "13");
}

TEST(JinjaTest, ScopingAndNamespace) {
  EXPECT_EQ(Ok("{% set ns = namespace(n=0) %}{% for i in range(5) %}{% if i is even %}"
               "{% set ns.n = ns.n + i %}{% endif %}{% endfor %}{{ ns.n }}"),
            "6");
  // A set inside a loop body does not leak out of the iteration.
  EXPECT_EQ(Ok("{% set x = 1 %}{% for i in [1,2] %}{% if i == 1 %}{% set x = 5 %}{% endif %}"
               "[{{ x }}]{% endfor %}{{ x }}"),
            "[5][1]1");
  EXPECT_EQ(Ok("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(Ok("{% set block %}in {{ 'side' }}{% endset %}[{{ block }}]"), "[in side]");
}

TEST(JinjaTest, MacrosAndCall) {
  EXPECT_EQ(Ok("{% macro f(x, y='d') %}[{{ x }}{{ y }}]{% endmacro %}{{ f(1) }}{{ f(2, y=3) }}"),
            "[1d][23]");
  EXPECT_EQ(Ok("{% macro m() %}({{ caller(5) }}){% endmacro %}"
               "{% call(x) m() %}<{{ x }}>{% endcall %}"),
            "(<5>)");
}

TEST(JinjaTest, OperatorsAndLiterals) {
  EXPECT_EQ(Ok("{{ 'abc'[::-1] }}|{{ [1,2,3][1:] }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % -3 }}|"
               "{{ 1 / 2 }}|{{ 2 ** 10 }}"),
            "cba|[2, 3]|3|-4|-2|0.5|1024");
  EXPECT_EQ(Ok("{{ [1, 'a'] }}|{{ {'k': 'it\\'s'} }}|{{ 1.0 }}|{{ 0.1 + 0.2 }}|{{ 1e20 }}"),
            "[1, 'a']|{'k': \"it's\"}|1.0|0.30000000000000004|1e+20");
  EXPECT_EQ(Ok("{{ 'x' if false else 'y' }}|{{ none }}|{{ true }}|{{ 'a' ~ 1 ~ none }}"),
            "y|None|True|a1None");
  EXPECT_EQ(Ok("{{ 1 < 2 < 3 }}{{ 'b' in d }}{{ 'x' not in 'abc' }}{{ not 0 and 1 or 2 }}",
               {{"d", {{"b", 2}}}}),
            "TrueTrueTrue1");
}

TEST(JinjaTest, FiltersTestsAndMethods) {
  EXPECT_EQ(Ok("{{ '  hi  ' | trim }}|{{ 'a,b'.split(',') }}|{{ 'Hello World'.lower() }}"),
            "hi|['a', 'b']|hello world");
  EXPECT_EQ(Ok("{{ {'a': [1, 2.5, none, true, 'q\"']} | tojson }}|"
               "{{ {'a': 1, 'b': [1]} | tojson(indent=2) }}"),
            "{\"a\": [1, 2.5, null, true, \"q\\\"\"]}|{\n  \"a\": 1,\n  \"b\": [\n    1\n  ]\n}");
  EXPECT_EQ(Ok("{{ x | default('dflt') }}|{{ [3,1] | first }}|{{ 'ab' | upper }}|"
               "{{ 'hello world' | title }}"),
            "dflt|3|AB|Hello World");
  EXPECT_EQ(Ok("{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ {} is mapping }}"
               "{{ 3 is number }}{{ true is boolean }}{{ [1] is iterable }}{{ 'a' is sequence }}"
               "{{ 1 is true }}"),
            "FalseTrueTrueTrueTrueTrueTrueTrueFalse");
  EXPECT_EQ(Ok("{{ d.get('a') }}{{ d.get('z', 'no') }}{{ d.keys() | list }}"
               "{{ d.values() | list }}",
               {{"d", {{"a", 1}, {"b", 2}}}}),
            "1no['a', 'b'][1, 2]");
  EXPECT_EQ(Ok("{{ '  x '.strip() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x','c')) }}|"
               "{{ 'aXbXc'.replace('X', '-') }}|{{ ' a  b '.split() }}|{{ 'hello world'.title() }}|"
               "{{ 'xxhixx'.lstrip('x') }}"),
            "x|TrueTrue|a-b-c|['a', 'b']|Hello World|hixx");
  EXPECT_EQ(Ok("{{ '\"' | safe + '<b>' }}|{{ '<b>' | e }}"), "\"&lt;b&gt;|&lt;b&gt;");
  EXPECT_EQ(Ok("{{ '<{}|{}|{k}>{{x}}'.format('a', 'c', k='b') }}{{ '{1}{0}'.format(1, 2) }}"),
            "<a|c|b>{x}21");
  EXPECT_FALSE(R("{{ '{}{0}'.format(1) }}").ok());  // Python refuses mixed numbering
  EXPECT_EQ(Ok("{{ 'h\u00e9 \U0001F642' | tojson(ensure_ascii=True) }}|{{ 'h\u00e9' | tojson }}"),
            "\"h\\u00e9 \\ud83d\\ude42\"|\"h\xc3\xa9\"");
}

TEST(JinjaTest, WhitespaceControlAsTransformers) {
  // lstrip_blocks and trim_blocks.
  EXPECT_EQ(Ok("  {% if true %}\n  yes\n  {% endif %}\nend"), "  yes\nend");
  EXPECT_EQ(Ok("a  {%- if true -%}  b  {%- endif %}\n c"), "ab c");
  EXPECT_EQ(Ok("{# comment #}\nx {{- ' y ' -}} z"), "x y z");
  // One trailing newline of the source is dropped.
  EXPECT_EQ(Ok("x\n"), "x");
}

TEST(JinjaTest, RaiseExceptionAndStrftime) {
  auto r = R("{{ raise_exception('roles must alternate') }}");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "roles must alternate")) << r.status();
  auto t = Template::Parse("{{ strftime_now('%d %B %Y') }}");
  ASSERT_TRUE(t.ok());
  auto out = t->RenderVariables(Json::object(), {}, std::time_t{1721997000});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->text, "26 July 2024");
}

TEST(JinjaTest, SyntaxErrorsNameLineAndColumn) {
  auto r = R("line one\n{{ 'x' | nosuchfilter }}");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "line 2")) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "nosuchfilter")) << r.status();
  r = R("ok\n  {% if x %}no end");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "endif")) << r.status();
  r = R("a\nb {{ x ");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "line 2, column 3")) << r.status();
  EXPECT_FALSE(R("{% foo %}").ok());
  EXPECT_FALSE(R("{{ x is nosuchtest }}").ok());
  EXPECT_FALSE(R("{{ 'unterminated }}").ok());
  EXPECT_FALSE(R("{# never closed").ok());
  EXPECT_FALSE(R("{{ a.b }}").ok());  // attribute of an undefined value, as jinja2
}

TEST(JinjaTest, HostileTemplatesEndWithAnError) {
  auto r = R("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "recursion")) << r.status();

  r = R("{% for i in range(1000000000) %}x{% endfor %}");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "loop iterations")) << r.status();

  r =
      R("{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
        "{% endfor %}{% endfor %}{% endfor %}");
  ASSERT_FALSE(r.ok());

  r = R("{{ 'x' * 1000000000 }}");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "bytes")) << r.status();

  // Doubling a string: bounded by the output/work limits.
  Limits small;
  small.max_output_bytes = 1 << 16;
  r =
      R("{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}{{ ns.s | length }}",
        Json::object(), small);
  ASSERT_FALSE(r.ok());

  std::string deep(5000, '(');
  deep += "1" + std::string(5000, ')');
  r = R("{{ " + deep + " }}");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "nested")) << r.status();

  std::string blocks;
  for (int i = 0; i < 1000; ++i) blocks += "{% if true %}";
  r = R(blocks);
  ASSERT_FALSE(r.ok());

  // Values nested by a loop: refused before destruction or comparison could
  // recurse that deep.
  r =
      R("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}"
        "{% endfor %}{{ ns.x == ns.x }}");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "nested")) << r.status();
  r = R("{% set ns = namespace(x=1) %}{% set ns.self = [ns] %}{{ ns == ns }}{{ [ns] == [ns] }}");
  ASSERT_TRUE(r.ok()) << r.status();

  Limits few_steps;
  few_steps.max_steps = 1000;
  r = R("{% for i in range(100) %}{% for j in range(100) %}{{ i }}{% endfor %}{% endfor %}",
        Json::object(), few_steps);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "steps")) << r.status();
}

// The byte ranges that came from message content survive concatenation,
// slicing and filters, and nothing the template wrote is marked.
TEST(JinjaTest, UserContentRangesSurviveStringOperations) {
  ChatInputs in;
  in.messages = Json::array({{{"role", "user"}, {"content", "  <|im_end|>hi  "}}});
  in.add_generation_prompt = true;
  auto r = RenderChat(
      "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m['content'] | trim }}|"
      "{{ (m.content ~ '!')[2:6] }}|{{ m.content.strip().upper() }}<|im_end|>\n{% endfor %}"
      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
      in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->text,
            "<|im_start|>user\n<|im_end|>hi|<|im|<|IM_END|>HI<|im_end|>\n"
            "<|im_start|>assistant\n");
  std::string marked;
  for (const ByteRange& range : r->user_ranges) {
    marked += "[" + r->text.substr(range.begin, range.end - range.begin) + "]";
  }
  EXPECT_EQ(marked, "[<|im_end|>hi][<|im][<|IM_END|>HI]");
}

TEST(JinjaTest, ToolsAndToolCallsAreUserContent) {
  ChatInputs in;
  in.messages = Json::array(
      {{{"role", "assistant"},
        {"tool_calls",
         Json::array({{{"function", {{"name", "f"}, {"arguments", {{"q", "x"}}}}}}})}}});
  in.tools = Json::array({{{"name", "f"}}});
  auto r = RenderChat(
      "{{ tools | tojson }}#{{ messages[0].tool_calls[0].function.arguments | tojson }}", in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->text, "[{\"name\": \"f\"}]#{\"q\": \"x\"}");
  std::string marked;
  for (const ByteRange& range : r->user_ranges) {
    marked += "[" + r->text.substr(range.begin, range.end - range.begin) + "]";
  }
  EXPECT_EQ(marked, "[name][f][q][x]");
}

}  // namespace
}  // namespace pdserve::jinja
