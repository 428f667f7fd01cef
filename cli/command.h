// The multi-call binary's subcommand table. Each cmd_*.cc registers itself:
//   PDS_COMMAND(inspect, "print a GGUF model's architecture and tensors", RunInspect);
// and main() dispatches on argv[1].
#pragma once

#include <functional>
#include <map>
#include <string>

namespace pdserve::cli {

// argv[0] is the subcommand name; returns the process exit code.
using CommandFn = int (*)(int argc, char** argv);

struct Command {
  std::string summary;
  CommandFn run;
};

std::map<std::string, Command>& Commands();

struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* summary, CommandFn run) {
    Commands()[name] = Command{summary, run};
  }
};

}  // namespace pdserve::cli

#define PDS_COMMAND(name, summary, fn) \
  static ::pdserve::cli::CommandRegistrar pds_command_##name(#name, summary, fn)
