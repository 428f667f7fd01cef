// Where a benchmark ran, for the result file.
#pragma once

#include <string>

namespace pdserve::loadgen {

struct MachineInfo {
  std::string hostname;
  std::string cpu_model;  // /proc/cpuinfo "model name"; empty when unknown
  int cores = 0;          // logical CPUs this process may use
  std::string date;       // UTC, ISO 8601
};

MachineInfo DescribeMachine();

}  // namespace pdserve::loadgen
