// Renders every template of tests/data/chat_templates/templates over every
// conversation and compares with the outputs Python jinja2 produced
// (tools/render_templates.py), byte for byte.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/jinja/jinja.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace pdserve::jinja {
namespace {

namespace fs = std::filesystem;

const fs::path kData = fs::path(PDSERVE_TESTDATA_DIR) / "chat_templates";
// 2024-07-26 12:30:00 UTC, the time render_templates.py fixes.
constexpr std::time_t kNow = 1721997000;

std::string ReadFile(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The first difference with a few lines around it.
std::string Diff(const std::string& want, const std::string& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  const size_t from = want.rfind('\n', i > 0 ? i - 1 : 0);
  const size_t start = from == std::string::npos ? 0 : from + 1;
  auto window = [&](const std::string& s) {
    return nlohmann::json(s.substr(std::min(start, s.size()), 240)).dump();
  };
  return absl::StrCat("first difference at byte ", i, " (jinja2 ", want.size(), " bytes, ours ",
                      got.size(), " bytes)\n  jinja2: ", window(want), "\n  ours:   ", window(got));
}

TEST(JinjaCorpusTest, MatchesPythonJinja2ByteForByte) {
  const nlohmann::ordered_json conversations =
      nlohmann::ordered_json::parse(ReadFile(kData / "conversations.json"));
  ASSERT_TRUE(conversations.is_array());
  int n_templates = 0, n_cases = 0, n_rendered = 0;
  std::vector<fs::path> templates;
  for (const auto& entry : fs::directory_iterator(kData / "templates")) {
    if (entry.path().extension() == ".jinja") templates.push_back(entry.path());
  }
  std::sort(templates.begin(), templates.end());
  for (const fs::path& path : templates) {
    ++n_templates;
    const std::string stem = path.stem().string();
    auto tmpl = Template::Parse(ReadFile(path));
    for (const auto& conv : conversations) {
      for (bool agp : {false, true}) {
        ++n_cases;
        const std::string name =
            absl::StrCat(stem, "/", conv["name"].get<std::string>(), ".agp", agp ? 1 : 0, ".txt");
        const fs::path fixture = kData / "expected" / name;
        ASSERT_TRUE(fs::exists(fixture)) << name << " missing: run tools/render_templates.py";
        const std::string want = ReadFile(fixture);
        absl::StatusOr<Rendered> got = absl::UnknownError("unset");
        if (!tmpl.ok()) {
          got = tmpl.status();
        } else {
          ChatInputs in;
          in.messages = conv["messages"];
          if (conv.contains("tools")) in.tools = conv["tools"];
          if (conv.contains("extra")) in.extra = conv["extra"];
          in.add_generation_prompt = agp;
          in.bos_token = "<|bos|>";
          in.eos_token = "<|eos|>";
          in.now = kNow;
          got = tmpl->Render(in);
        }
        if (absl::StartsWith(want, "!!RAISE!!\n")) {
          const std::string msg = want.substr(10);
          EXPECT_FALSE(got.ok()) << name << ": jinja2 raised \"" << msg << "\", we rendered";
          if (!got.ok()) {
            EXPECT_TRUE(absl::StrContains(got.status().message(), msg))
                << name << ": want the template's message \"" << msg << "\", got " << got.status();
          }
        } else if (absl::StartsWith(want, "!!ERROR!!\n")) {
          EXPECT_FALSE(got.ok()) << name << ": jinja2 failed (" << want.substr(10)
                                 << "), we rendered";
        } else {
          EXPECT_TRUE(got.ok()) << name << ": " << got.status();
          if (!got.ok()) continue;
          ++n_rendered;
          EXPECT_EQ(got->text, want) << name << ": " << Diff(want, got->text);
        }
      }
    }
  }
  EXPECT_GE(n_templates, 20);
  std::cout << n_templates << " templates, " << n_cases << " cases, " << n_rendered
            << " rendered outputs compared\n";
}

}  // namespace
}  // namespace pdserve::jinja

namespace pdserve::jinja {
namespace {

// Truncated and byte-flipped corpus templates end with a Status (or render),
// never a crash or a hang: the parser and interpreter are reachable from any
// GGUF a user loads.
TEST(JinjaCorpusTest, MutatedTemplatesNeverCrash) {
  ChatInputs in;
  in.messages = nlohmann::ordered_json::parse(
      R"([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
          {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}])");
  Limits limits;
  limits.max_steps = 200000;
  uint32_t rng = 12345;
  auto next = [&rng] { return rng = rng * 1103515245u + 12345u; };
  int n_errors = 0, n_rendered = 0;
  for (const auto& entry : fs::directory_iterator(kData / "templates")) {
    const std::string source = ReadFile(entry.path());
    if (source.empty()) continue;
    for (int k = 0; k < 24; ++k) {
      std::string mutated = source;
      if (k % 2 == 0) {
        mutated.resize((next() >> 8) % source.size());
      } else {
        static constexpr char kBytes[] = "{}%#-+()[]'\"|.,:=~ \nxif";
        for (int f = 0; f < 3; ++f) {
          mutated[(next() >> 8) % mutated.size()] = kBytes[(next() >> 8) % (sizeof kBytes - 1)];
        }
      }
      auto t = Template::Parse(mutated, limits);
      if (!t.ok()) {
        ++n_errors;
        EXPECT_TRUE(absl::StrContains(t.status().message(), "line ")) << t.status();
        continue;
      }
      auto r = t->Render(in);
      r.ok() ? ++n_rendered : ++n_errors;
    }
  }
  EXPECT_GT(n_errors, 0);
  std::cout << n_rendered << " mutated templates rendered, " << n_errors << " refused\n";
}

}  // namespace
}  // namespace pdserve::jinja
