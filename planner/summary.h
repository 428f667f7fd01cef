// Figures of one simulated run, defined as loadgen defines them for a
// measured one (loadgen/summary.cc), so the two can be set side by side.
#pragma once

#include <vector>

#include "loadgen/stats.h"
#include "nlohmann/json.hpp"
#include "planner/simulator.h"

namespace pdserve::planner {

struct SimSummary {
  int completed = 0;
  int rejected = 0;       // could never fit a node's KV cache
  double duration_s = 0;  // first arrival to last finish
  double request_throughput = 0;
  double output_throughput = 0;  // tokens/s
  int good_requests = 0;
  double goodput = 0;  // requests/s meeting every SLO set
  // Goodput without the drain tail: good requests per second of the run
  // less one median E2E (the last arrivals' own service time), or of the
  // arrivals' span if longer. A deployment keeping up shows about rate x
  // attainment however long its requests take; one falling behind shows
  // about the harmonic mean of its capacity and the rate. `goodput` keeps
  // loadgen's definition (first arrival to last finish).
  double steady_goodput = 0;
  // The arrivals span under 4 median E2Es: too short a run to tell a backlog
  // from a pipeline filling up; simulate more prompts.
  bool short_run = false;
  double slo_attainment = 0;  // good / all requests
  loadgen::Distribution ttft_ms, tpot_ms, itl_ms, e2e_ms;
};

SimSummary Summarize(const std::vector<SimRequest>& requests, const SimResult& result,
                     const loadgen::Slo& slo, const std::vector<double>& percentiles);

nlohmann::ordered_json SummaryToJson(const SimSummary& summary);

}  // namespace pdserve::planner
