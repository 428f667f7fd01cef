// pdserve: one multi-call binary; `pdserve <command> [flags]`.
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/command.h"

namespace pdserve::cli {
std::map<std::string, Command>& Commands() {
  static auto* commands = new std::map<std::string, Command>();
  return *commands;
}
}  // namespace pdserve::cli

namespace {
void PrintUsage(FILE* out) {
  std::fprintf(out, "usage: pdserve <command> [flags]   (pdserve <command> --help for flags)\n\n");
  std::fprintf(out, "commands:\n");
  for (const auto& [name, cmd] : pdserve::cli::Commands()) {
    std::fprintf(out, "  %-10s %s\n", name.c_str(), cmd.summary.c_str());
  }
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    PrintUsage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const auto& commands = pdserve::cli::Commands();
  auto it = commands.find(argv[1]);
  if (it == commands.end()) {
    std::fprintf(stderr, "pdserve: unknown command '%s'\n\n", argv[1]);
    PrintUsage(stderr);
    return 2;
  }
  return it->second.run(argc - 1, argv + 1);
}
