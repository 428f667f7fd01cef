// Child processes and free ports for the loadgen end-to-end tests.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace pdserve::testing {

struct RunResult {
  int exit_code = -1;  // -1: killed (hang guard) or did not start
  std::string out;
  std::string err;
};

// Starts `args` (args[0] is the program path) with stdout and stderr going
// to `log_path`; returns the pid or -1.
pid_t Spawn(const std::vector<std::string>& args, const std::string& log_path);
// Runs `args` to completion; kills it after `guard_s` (a hang guard, not a
// performance check).
RunResult Run(const std::vector<std::string>& args, int guard_s);
// SIGTERM, then SIGKILL after `grace_s`; reaps the child.
void Stop(pid_t pid, int grace_s);
// True while `pid` has not exited (reaps it when it has).
bool Alive(pid_t pid);

// A base port P for which every P + offset is free on 127.0.0.1 now,
// below the kernel's ephemeral range; 0 when none was found.
int FreePortBlock(const std::vector<int>& offsets);

std::string ReadFile(const std::string& path);
std::string TempPath(const std::string& name);

}  // namespace pdserve::testing
