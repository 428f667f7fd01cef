// A strict reader of the Prometheus text exposition format 0.0.4, for tests:
// it rejects anything a lenient scraper might let slip (stray text, samples
// before their TYPE, split families, non-cumulative histograms).
#pragma once

#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pdserve::tracing::testing {

struct Sample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;  // Unescaped, in order.
  double value = 0;
};

struct Family {
  std::string name;
  std::string help;  // Unescaped.
  std::string type;
  std::vector<Sample> samples;
};

// Returns the families, or sets *error to the first problem (with its line).
inline std::vector<Family> ParseExposition(std::string_view text, std::string* error) {
  std::vector<Family> families;
  std::set<std::string> seen_families;
  std::set<std::string> seen_series;
  int line_number = 0;
  auto fail = [&](const std::string& why) {
    *error = "line " + std::to_string(line_number) + ": " + why;
    return std::vector<Family>{};
  };
  auto is_name_char = [](char c, bool first, bool colon_ok) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
    if (colon_ok && c == ':') return true;
    return !first && c >= '0' && c <= '9';
  };
  auto read_name = [&](std::string_view& rest, bool colon_ok) {
    size_t n = 0;
    while (n < rest.size() && is_name_char(rest[n], n == 0, colon_ok)) ++n;
    std::string name(rest.substr(0, n));
    rest.remove_prefix(n);
    return name;
  };
  auto parse_value = [](std::string_view text, double* value) {
    if (text == "+Inf") return *value = INFINITY, true;
    if (text == "-Inf") return *value = -INFINITY, true;
    if (text == "NaN") return *value = NAN, true;
    if (text.empty()) return false;
    std::string copy(text);
    char* end = nullptr;
    *value = std::strtod(copy.c_str(), &end);
    return end == copy.c_str() + copy.size() && copy.find_first_of("iInN") == std::string::npos;
  };
  // The family a sample name belongs to, given the family's type.
  auto belongs = [](const Family& family, const std::string& sample) {
    if (family.type != "histogram") return sample == family.name;
    return sample == family.name + "_bucket" || sample == family.name + "_sum" ||
           sample == family.name + "_count";
  };

  if (!text.empty() && text.back() != '\n') return fail("output must end with a newline");
  while (!text.empty()) {
    ++line_number;
    const size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(eol + 1);
    if (line.empty()) return fail("empty line");

    if (line[0] == '#') {
      std::string_view rest = line;
      const bool help = rest.substr(0, 7) == "# HELP ";
      const bool type = rest.substr(0, 7) == "# TYPE ";
      if (!help && !type) return fail("unexpected comment: " + std::string(line));
      rest.remove_prefix(7);
      const std::string name = read_name(rest, true);
      if (name.empty() || rest.empty() || rest[0] != ' ') return fail("bad metric name");
      rest.remove_prefix(1);
      if (families.empty() || families.back().name != name) {
        if (!seen_families.insert(name).second) return fail("family split or repeated: " + name);
        families.push_back(Family{name, "", "", {}});
      }
      Family& family = families.back();
      if (!family.samples.empty()) return fail("HELP/TYPE after samples of " + name);
      if (help) {
        if (!family.help.empty()) return fail("second HELP for " + name);
        std::string unescaped;
        for (size_t i = 0; i < rest.size(); ++i) {
          if (rest[i] == '\\') {
            if (i + 1 == rest.size()) return fail("dangling escape in HELP");
            const char next = rest[++i];
            if (next == 'n') {
              unescaped += '\n';
            } else if (next == '\\') {
              unescaped += '\\';
            } else {
              return fail("bad escape in HELP");
            }
          } else {
            unescaped += rest[i];
          }
        }
        family.help = unescaped;
      } else {
        if (!family.type.empty()) return fail("second TYPE for " + name);
        const std::string type_name(rest);
        if (type_name != "counter" && type_name != "gauge" && type_name != "histogram" &&
            type_name != "summary" && type_name != "untyped") {
          return fail("unknown type " + type_name);
        }
        family.type = type_name;
      }
      continue;
    }

    std::string_view rest = line;
    Sample sample;
    sample.name = read_name(rest, true);
    if (sample.name.empty()) return fail("bad sample name");
    if (!rest.empty() && rest[0] == '{') {
      rest.remove_prefix(1);
      while (true) {
        if (rest.empty()) return fail("unterminated labels");
        if (rest[0] == '}') {
          rest.remove_prefix(1);
          break;
        }
        if (!sample.labels.empty()) {
          if (rest[0] != ',') return fail("expected ',' between labels");
          rest.remove_prefix(1);
        }
        const std::string label = read_name(rest, false);
        if (label.empty() || rest.substr(0, 2) != "=\"") return fail("bad label");
        rest.remove_prefix(2);
        std::string value;
        while (true) {
          if (rest.empty()) return fail("unterminated label value");
          const char c = rest[0];
          rest.remove_prefix(1);
          if (c == '"') break;
          if (c == '\\') {
            if (rest.empty()) return fail("dangling escape in label value");
            const char next = rest[0];
            rest.remove_prefix(1);
            if (next == 'n') {
              value += '\n';
            } else if (next == '\\' || next == '"') {
              value += next;
            } else {
              return fail("bad escape in label value");
            }
          } else if (c == '\n') {
            return fail("raw newline in label value");
          } else {
            value += c;
          }
        }
        for (const auto& [existing, unused] : sample.labels) {
          if (existing == label) return fail("repeated label " + label);
        }
        sample.labels.emplace_back(label, value);
      }
    }
    if (rest.empty() || rest[0] != ' ') return fail("expected a space before the value");
    rest.remove_prefix(1);
    if (!parse_value(rest, &sample.value)) return fail("bad value '" + std::string(rest) + "'");

    if (families.empty() || !belongs(families.back(), sample.name)) {
      return fail("sample " + sample.name + " outside its family (TYPE must come first)");
    }
    Family& family = families.back();
    if (family.type == "counter" && !(sample.value >= 0)) return fail("negative counter");
    std::string series = sample.name;
    for (const auto& [k, v] : sample.labels) series += "|" + k + "=" + v;
    if (!seen_series.insert(series).second) return fail("duplicate series " + series);
    family.samples.push_back(std::move(sample));
  }

  // Histogram invariants, per label set (le excluded).
  for (const Family& family : families) {
    if (family.type.empty()) return fail("family " + family.name + " has no TYPE");
    if (family.type != "histogram") continue;
    struct Series {
      std::vector<std::pair<double, double>> buckets;  // (le, count) in order.
      double count = NAN;
      bool has_sum = false;
    };
    std::map<std::string, Series> series;
    for (const Sample& sample : family.samples) {
      std::string key;
      double le = NAN;
      bool has_le = false;
      for (const auto& [k, v] : sample.labels) {
        if (k == "le") {
          has_le = true;
          if (!parse_value(v, &le)) return fail("bad le " + v);
        } else {
          key += k + "=" + v + ",";
        }
      }
      Series& s = series[key];
      if (sample.name == family.name + "_bucket") {
        if (!has_le) return fail("bucket without le");
        s.buckets.emplace_back(le, sample.value);
      } else if (has_le) {
        return fail("le outside a bucket");
      } else if (sample.name == family.name + "_count") {
        s.count = sample.value;
      } else {
        s.has_sum = true;
      }
    }
    for (const auto& [key, s] : series) {
      if (s.buckets.empty() || !std::isinf(s.buckets.back().first)) {
        return fail(family.name + "{" + key + "} must end with le=\"+Inf\"");
      }
      for (size_t i = 1; i < s.buckets.size(); ++i) {
        if (!(s.buckets[i].first > s.buckets[i - 1].first)) return fail("le not increasing");
        if (s.buckets[i].second < s.buckets[i - 1].second) return fail("buckets not cumulative");
      }
      if (!s.has_sum || std::isnan(s.count)) return fail(family.name + " lacks _sum or _count");
      if (s.buckets.back().second != s.count) return fail("+Inf bucket != _count");
    }
  }
  return families;
}

}  // namespace pdserve::tracing::testing
