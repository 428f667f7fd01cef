#include "loadgen/words.h"

namespace pdserve::loadgen {

const std::vector<std::string_view>& CommonWords() {
  static const auto* words = new std::vector<std::string_view>{
      "the",        "of",        "and",       "to",       "in",       "is",       "that",
      "for",        "it",        "as",        "was",      "with",     "be",       "by",
      "on",         "not",       "he",        "this",     "are",      "or",       "his",
      "from",       "at",        "which",     "but",      "have",     "an",       "had",
      "they",       "you",       "were",      "their",    "one",      "all",      "we",
      "can",        "her",       "has",       "there",    "been",     "if",       "more",
      "when",       "will",      "would",     "who",      "so",       "no",       "time",
      "people",     "year",      "way",       "day",      "man",      "thing",    "woman",
      "life",       "child",     "world",     "school",   "state",    "family",   "group",
      "country",    "problem",   "hand",      "part",     "place",    "case",     "week",
      "company",    "system",    "program",   "question", "work",     "number",   "night",
      "point",      "home",      "water",     "room",     "mother",   "area",     "money",
      "story",      "fact",      "month",     "lot",      "right",    "study",    "book",
      "eye",        "job",       "word",      "business", "issue",    "side",     "kind",
      "head",       "house",     "service",   "friend",   "father",   "power",    "hour",
      "game",       "line",      "end",       "member",   "law",      "car",      "city",
      "name",       "team",      "minute",    "idea",     "body",     "back",     "face",
      "level",      "office",    "door",      "health",   "person",   "art",      "war",
      "history",    "party",     "result",    "change",   "reason",   "research", "girl",
      "moment",     "air",       "teacher",   "force",    "good",     "new",      "first",
      "last",       "long",      "great",     "little",   "own",      "other",    "old",
      "big",        "high",      "different", "small",    "large",    "next",     "early",
      "young",      "important", "few",       "public",   "bad",      "same",     "able",
      "make",       "know",      "take",      "see",      "come",     "think",    "look",
      "want",       "give",      "use",       "find",     "tell",     "ask",      "feel",
      "try",        "leave",     "call",      "keep",     "let",      "begin",    "help",
      "show",       "play",      "run",       "move",     "live",     "write",    "sit",
      "stand",      "pay",       "include",   "continue", "set",      "learn",    "lead",
      "understand", "watch",     "follow",    "stop",     "create",   "read",     "grow",
      "open",       "walk",      "win",       "offer",    "remember", "love",     "consider",
      "buy",        "wait",      "send",      "expect",   "build",    "stay",     "fall",
      "cut",        "reach",     "light",     "music",    "food",     "market",   "road",
      "table",
  };
  return *words;
}

std::string RandomWords(int n_words, std::mt19937_64& rng) {
  const auto& words = CommonWords();
  std::uniform_int_distribution<size_t> pick(0, words.size() - 1);
  std::string out;
  out.reserve(static_cast<size_t>(n_words) * 7);
  for (int i = 0; i < n_words; ++i) {
    if (i > 0) out.push_back(' ');
    out.append(words[pick(rng)]);
  }
  return out;
}

}  // namespace pdserve::loadgen
