#include "planner/plan.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "loadgen/workload.h"
#include "planner/workload.h"
#include "tests/unit/planner/test_profiles.h"

namespace pdserve::planner {
namespace {

loadgen::WorkloadOptions Workload() {
  loadgen::WorkloadOptions w;
  w.num_prompts = 200;
  w.random_input_len = 100;
  w.random_output_len = 10;
  w.random_range_ratio = 0.2;
  w.token_ids = true;
  w.vocab_size = 1000;
  w.seed = 5;
  return w;
}

PlanOptions Options() {
  PlanOptions o;
  o.profile = o.colocated_profile = HandProfile();
  o.deployments = EnumerateDeployments(4);
  o.workload = Workload();
  o.rates = {1, 20};
  o.slo.ttft_ms = 1000;
  o.slo.tpot_ms = 200;
  return o;
}

// The simulated requests are loadgen's: the same lengths for the same
// workload flags, arrivals at the rate.
TEST(PlanTest, RequestsComeFromLoadgensGenerators) {
  const loadgen::WorkloadOptions w = Workload();
  absl::StatusOr<std::vector<loadgen::RequestInput>> inputs = loadgen::BuildWorkload(w, nullptr);
  absl::StatusOr<std::vector<SimRequest>> sim = BuildSimRequests(w, 4.0, 1.0);
  ASSERT_TRUE(inputs.ok() && sim.ok());
  ASSERT_EQ(inputs->size(), sim->size());
  for (size_t i = 0; i < sim->size(); ++i) {
    EXPECT_EQ((*sim)[i].input_tokens, (*inputs)[i].input_tokens);
    EXPECT_EQ((*sim)[i].output_tokens, (*inputs)[i].max_tokens);
  }
  EXPECT_EQ(sim->front().arrival_s, 0);
  // 200 Poisson arrivals at 4 req/s span about 50 s.
  EXPECT_GT(sim->back().arrival_s, 35);
  EXPECT_LT(sim->back().arrival_s, 65);
  EXPECT_FALSE(BuildSimRequests(w, 0, 1).ok());
  EXPECT_FALSE(BuildSimRequests(w, 1, 0).ok());
}

// A prompt seen whole is cached in full blocks, less the block of its last
// token: the committed loadgen sweep's two replayed warm-up prompts (476 and
// 547 tokens) were 464 + 544 = 1008 cached tokens.
TEST(PlanTest, CachedPrefixIsFullBlocksBeforeTheLastToken) {
  EXPECT_EQ(CachedPrefixTokens(476, 16), 464);
  EXPECT_EQ(CachedPrefixTokens(547, 16), 544);
  EXPECT_EQ(CachedPrefixTokens(32, 16), 16);
  EXPECT_EQ(CachedPrefixTokens(33, 16), 32);
  EXPECT_EQ(CachedPrefixTokens(16, 16), 0);
  EXPECT_EQ(CachedPrefixTokens(1, 16), 0);
}

// --cached-prompts: the first prompts are prefix-cache hits, so at a low
// rate their TTFT is a fraction of an uncached one's.
TEST(PlanTest, CachedPromptsShortenTheFirstRequests) {
  PlanOptions o = Options();
  o.deployments = {Deployment{0, 0, 1}};
  o.rates = {0.1};
  absl::StatusOr<PlanReport> plain = RunPlan(o);
  o.cached_prompts = 200;  // every prompt
  absl::StatusOr<PlanReport> cached = RunPlan(o);
  ASSERT_TRUE(plain.ok() && cached.ok());
  const SimSummary& a = plain->results[0].points[0].summary;
  const SimSummary& b = cached->results[0].points[0].summary;
  // 100-token prompts: 110 ms uncached; cached, at most a 15-token tail
  // (10 + 15 ms) and typically 10 + 1..16 ms.
  EXPECT_GT(a.ttft_ms.At(50), 80);
  EXPECT_LT(b.ttft_ms.At(50), 30);
  o.cached_prompts = -1;
  EXPECT_FALSE(RunPlan(o).ok());
}

// --detailed-csv: one row per simulated request, the same figures as the
// summary's (here: the TTFT of request 0 at each rate).
TEST(PlanTest, RequestsCsvHasARowPerRequestAndRate) {
  PlanOptions o = Options();
  o.deployments = {Deployment{0, 0, 1}};
  o.keep_requests = true;
  absl::StatusOr<PlanReport> report = RunPlan(o);
  ASSERT_TRUE(report.ok()) << report.status();
  const std::string csv = PlanRequestsCsv(*report);
  const std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 1u + 2 * 200);  // header, 200 requests at each of 2 rates
  EXPECT_TRUE(absl::StartsWith(lines[0], "deployment,request_rate,index,arrival_s,"));
  const PlanPoint& p = report->results[0].points[0];
  ASSERT_EQ(p.requests.size(), 200u);
  const std::vector<std::string> row0 = absl::StrSplit(lines[1], ',');
  ASSERT_EQ(row0.size(), 12u);
  EXPECT_EQ(row0[0], "colocated1");
  EXPECT_EQ(row0[2], "0");
  EXPECT_EQ(row0[7], "true");
  double ttft_ms = 0;
  ASSERT_TRUE(absl::SimpleAtod(row0[9], &ttft_ms));
  EXPECT_NEAR(ttft_ms, p.requests[0].ttft_s * 1e3, 1e-3);
  // Without keep_requests nothing is kept.
  o.keep_requests = false;
  report = RunPlan(o);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->results[0].points[0].requests.empty());
}

constexpr char kCsvHeader[] =
    "run,request_rate,id,start_offset_s,ttft_ms,tpot_ms,e2e_ms,input_tokens,output_tokens,"
    "success,status,error\n";

// A loadgen --detailed-csv file replays as it was sent: runs by rate, each
// run's requests by start offset; not-sent rows are left out; a quoted error
// with commas and quotes does not shift the columns.
TEST(PlanTest, ReplayCsvKeepsEachRunAsSent) {
  const std::string csv =
      absl::StrCat(kCsvHeader, "0,2,r0-1,0.500,1,1,1,40,5,true,ok,\n",
                   "0,2,r0-0,0.000,1,1,1,30,4,true,ok,\n", "0,2,r0-2,,,,,50,0,false,not_sent,\n",
                   "0,2,r0-3,0.700,,,,60,0,false,failed,\"deadline, \"\"x\"\"\"\n",
                   "1,0.5,r1-0,0.000,1,1,1,70,8,true,ok,\n");
  absl::StatusOr<std::vector<ReplayRun>> runs = ParseLoadgenCsv(csv);
  ASSERT_TRUE(runs.ok()) << runs.status();
  ASSERT_EQ(runs->size(), 2u);
  EXPECT_EQ((*runs)[0].rate, 0.5);
  ASSERT_EQ((*runs)[0].requests.size(), 1u);
  EXPECT_EQ((*runs)[0].requests[0].input_tokens, 70);
  const ReplayRun& r = (*runs)[1];
  EXPECT_EQ(r.rate, 2);
  ASSERT_EQ(r.requests.size(), 3u);
  EXPECT_EQ(r.requests[0].arrival_s, 0);
  EXPECT_EQ(r.requests[0].input_tokens, 30);
  EXPECT_EQ(r.requests[0].output_tokens, 4);
  EXPECT_EQ(r.requests[1].arrival_s, 0.5);
  EXPECT_EQ(r.requests[2].input_tokens, 60);
  EXPECT_EQ(r.requests[2].output_tokens, 1);  // failed with nothing: token #1 at least
}

TEST(PlanTest, ReplayCsvRefusesWhatItCannotReplay) {
  EXPECT_FALSE(ParseLoadgenCsv("").ok());
  EXPECT_FALSE(ParseLoadgenCsv("run,request_rate\n0,1\n").ok());  // columns missing
  EXPECT_FALSE(ParseLoadgenCsv(kCsvHeader).ok());                 // no request
  for (const char* row : {"0,inf,a,0.0,1,1,1,10,2,true,ok,\n", "0,1,a,-1,1,1,1,10,2,true,ok,\n",
                          "0,1,a,x,1,1,1,10,2,true,ok,\n", "0,1,a,0.0,1,1,1,0,2,true,ok,\n",
                          "0,1,a,0.0,1,1,1,10,1000001,true,ok,\n", "0,1,a,0.0,1,1,1,10,2,true,ok\n",
                          "x,1,a,0.0,1,1,1,10,2,true,ok,\n"}) {
    absl::StatusOr<std::vector<ReplayRun>> runs = ParseLoadgenCsv(absl::StrCat(kCsvHeader, row));
    EXPECT_FALSE(runs.ok()) << row;
    if (!runs.ok()) EXPECT_TRUE(absl::StrContains(runs.status().message(), "line 2")) << row;
  }
  EXPECT_FALSE(ParseLoadgenCsv(absl::StrCat(kCsvHeader, "0,1,a,0.0,1,1,1,10,2,true,ok,\n",
                                            "0,2,b,0.1,1,1,1,10,2,true,ok,\n"))
                   .ok());  // one run, two rates
}

// One replayed run of `requests` at `rate` on 1P1D, keeping each request.
PlanOptions ReplayOn1P1D(double rate, std::vector<SimRequest> requests) {
  PlanOptions o = Options();
  o.deployments = {Deployment{1, 1, 0}};
  o.rates.clear();
  ReplayRun run;
  run.rate = rate;
  run.requests = std::move(requests);
  o.replay = {std::move(run)};
  o.keep_requests = true;
  return o;
}

// With a replay the plan simulates exactly those requests: the same result
// as the simulator given them directly, at the replayed rate.
TEST(PlanTest, ReplayedRunsAreSimulatedAsGiven) {
  PlanOptions o = ReplayOn1P1D(3, {{0.0, 50, 3}, {0.02, 80, 2}, {0.03, 30, 1}});
  const ReplayRun& run = o.replay[0];
  absl::StatusOr<PlanReport> report = RunPlan(o);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->results[0].points.size(), 1u);
  const PlanPoint& p = report->results[0].points[0];
  EXPECT_EQ(p.rate, 3);
  SimOptions so;
  so.deployment = Deployment{1, 1, 0};
  so.prefill = so.decode = so.mixed = HandProfile();
  absl::StatusOr<SimResult> direct = Simulate(run.requests, so);
  ASSERT_TRUE(direct.ok());
  ASSERT_EQ(p.requests.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(p.requests[i].e2e_s, direct->requests[i].e2e_s);
  o.rates = {1};  // a replay brings its own rates
  EXPECT_FALSE(RunPlan(o).ok());
}

// A decode profile of its own: decode nodes step at its cost, prefill
// nodes at the main profile's; TTFT is the prefill node's alone.
TEST(PlanTest, DecodeNodesUseTheirOwnProfile) {
  PlanOptions o = ReplayOn1P1D(1, {{0.0, 50, 3}});
  DeviceProfile slow = HandProfile();
  slow.step.base_s *= 2;
  slow.step.decode_seq_s *= 2;
  o.decode_profile = slow;
  absl::StatusOr<PlanReport> report = RunPlan(o);
  ASSERT_TRUE(report.ok()) << report.status();
  const RequestResult& r = report->results[0].points[0].requests[0];
  EXPECT_NEAR(r.ttft_s, 0.06, 1e-9);   // 10 + 50 ms on the prefill node
  EXPECT_NEAR(r.tpot_s, 0.024, 1e-9);  // (20 + 4) ms per decode step
  EXPECT_TRUE(PlanToJson(o, *report).contains("decode_profile"));
}

// loadgen redraws the target's EOS/BOS ids in token-id prompts, and the
// redraws move every later length draw: the planner reproduces loadgen's
// lengths only with the same ids to avoid.
TEST(PlanTest, AvoidedTokenIdsMoveTheLengthsAsInLoadgen) {
  loadgen::WorkloadOptions w = Workload();
  w.vocab_size = 50;  // 100-token prompts: an avoided id is drawn in the first prompt
  w.avoid_token_ids = {0, 1};
  absl::StatusOr<std::vector<loadgen::RequestInput>> inputs = loadgen::BuildWorkload(w, nullptr);
  absl::StatusOr<std::vector<SimRequest>> same = BuildSimRequests(w, 4.0, 1.0);
  w.avoid_token_ids.clear();
  absl::StatusOr<std::vector<SimRequest>> without = BuildSimRequests(w, 4.0, 1.0);
  ASSERT_TRUE(inputs.ok() && same.ok() && without.ok());
  int differ = 0;
  for (size_t i = 0; i < inputs->size(); ++i) {
    EXPECT_EQ((*same)[i].input_tokens, (*inputs)[i].input_tokens);
    EXPECT_EQ((*same)[i].output_tokens, (*inputs)[i].max_tokens);
    differ += (*without)[i].input_tokens != (*inputs)[i].input_tokens;
  }
  EXPECT_GT(differ, 100);
}

// One prefill step holds one 100-token prompt (110 ms), so a node prefills
// about 9 prompts/s: one node cannot serve 20 req/s, and the recommendation
// is the smallest deployment that does.
TEST(PlanTest, RecommendsTheFewestNodesMeetingTheSloAtTheTargetRate) {
  PlanOptions o = Options();
  o.target_rate = 20;
  absl::StatusOr<PlanReport> report = RunPlan(o);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->results.size(), o.deployments.size());
  const Recommendation& rec = report->recommendation;
  ASSERT_TRUE(rec.found) << rec.reason;
  for (const DeploymentResult& r : report->results) {
    ASSERT_EQ(r.points.size(), 2u);
    const SimSummary& low = r.points[0].summary;
    const SimSummary& high = r.points[1].summary;
    EXPECT_TRUE(MeetsTarget(r.points[0], 0.9)) << r.deployment.Name() << " at 1 req/s";
    EXPECT_GE(low.slo_attainment, 0.9);
    if (r.deployment.Name() == rec.deployment.Name()) {
      EXPECT_TRUE(MeetsTarget(r.points[1], 0.9));
    } else if (r.deployment.n_nodes() < rec.deployment.n_nodes()) {
      EXPECT_FALSE(MeetsTarget(r.points[1], 0.9))
          << r.deployment.Name() << " is smaller and meets it";
    }
    if (r.deployment.n_nodes() == 1) {
      EXPECT_LT(high.slo_attainment, 0.5) << r.deployment.Name();
    }
  }
  EXPECT_GE(rec.deployment.n_nodes(), 3);
}

// Past capacity, a finite run can keep every request within its SLO while
// the backlog grows; the goodput falling behind the rate gives it away.
TEST(PlanTest, ABacklogDoesNotMeetTheTargetEvenWithinTheSlo) {
  PlanPoint p;
  p.rate = 10;
  p.summary.slo_attainment = 1.0;
  p.summary.steady_goodput = 9.5;
  EXPECT_TRUE(MeetsTarget(p, 0.9));
  p.summary.steady_goodput = 4;  // the requests took 2.5x as long to serve as to arrive
  EXPECT_FALSE(MeetsTarget(p, 0.9));
  p.summary.steady_goodput = 9.5;
  p.summary.slo_attainment = 0.8;
  EXPECT_FALSE(MeetsTarget(p, 0.9));
}

// 100 requests arriving every 0.1 s. Kept up with (each served in 4 s, all
// within the SLO), the whole run's goodput is 100 / 13.9 s = 7.2 req/s, below
// 90% of the rate only because of the drain after the last arrival; the
// steady goodput leaves one median E2E out: 100 / 9.9 s. Served one after
// another at 5 per second instead (median E2E 5.5 s, last finish at 20.3 s):
// 100 / 14.8 s, the harmonic mean of capacity and rate.
TEST(PlanTest, SteadyGoodputHasNoDrainTail) {
  std::vector<SimRequest> requests(100);
  SimResult kept_up, backlog;
  for (int i = 0; i < 100; ++i) {
    requests[i].arrival_s = 0.1 * i;
    RequestResult r;
    r.completed = true;
    r.arrival_s = requests[i].arrival_s;
    r.ttft_s = 0.1;
    r.tpot_s = 0.01;
    r.e2e_s = 4.0;
    kept_up.requests.push_back(r);
    r.e2e_s = 0.2 * i + 0.5 - 0.1 * i;  // finishes at 0.2 i + 0.5
    backlog.requests.push_back(r);
  }
  kept_up.end_s = 9.9 + 4.0;
  backlog.end_s = 0.2 * 99 + 0.5;
  loadgen::Slo slo;
  slo.ttft_ms = 250;
  const SimSummary k = Summarize(requests, kept_up, slo, {50});
  EXPECT_NEAR(k.goodput, 100 / 13.9, 1e-9);
  EXPECT_NEAR(k.steady_goodput, 100 / 9.9, 1e-9);
  EXPECT_TRUE(MeetsTarget(PlanPoint{10, k}, 0.9));
  const SimSummary b = Summarize(requests, backlog, slo, {50});
  EXPECT_DOUBLE_EQ(b.slo_attainment, 1.0);          // every TTFT within the SLO...
  EXPECT_NEAR(b.steady_goodput, 100 / 14.8, 1e-9);  // ...yet it falls behind
  EXPECT_FALSE(MeetsTarget(PlanPoint{10, b}, 0.9));
  EXPECT_TRUE(k.short_run);  // 9.9 s of arrivals against a 4 s median E2E: under 4x
}

TEST(PlanTest, SaysSoWhenNothingMeetsTheTarget) {
  PlanOptions o = Options();
  o.deployments = EnumerateDeployments(2);
  o.target_rate = 50;
  absl::StatusOr<PlanReport> report = RunPlan(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_FALSE(report->recommendation.found);
  EXPECT_NE(report->recommendation.reason.find("no candidate"), std::string::npos);
}

TEST(PlanTest, WritesJsonTableAndSvg) {
  PlanOptions o = Options();
  o.deployments = {Deployment{1, 1, 0}, Deployment{0, 0, 2}};
  absl::StatusOr<PlanReport> report = RunPlan(o);
  ASSERT_TRUE(report.ok()) << report.status();
  const nlohmann::ordered_json j = PlanToJson(o, *report);
  ASSERT_EQ(j["deployments"].size(), 2u);
  EXPECT_EQ(j["deployments"][0]["deployment"], "1P1D");
  EXPECT_EQ(j["deployments"][0]["rates"].size(), 2u);
  EXPECT_TRUE(j["deployments"][0]["rates"][0]["ttft_ms"].contains("p99"));
  EXPECT_TRUE(j["recommendation"].contains("reason"));
  const std::string table = PlanTable(o, *report);
  EXPECT_NE(table.find("colocated2"), std::string::npos);
  EXPECT_NE(table.find("recommended"), std::string::npos);
  const std::string svg = PlanSvg(o, *report);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("1P1D"), std::string::npos);
}

TEST(PlanTest, RejectsEmptyInputs) {
  PlanOptions o = Options();
  o.deployments.clear();
  EXPECT_FALSE(RunPlan(o).ok());
  o = Options();
  o.rates.clear();
  EXPECT_FALSE(RunPlan(o).ok());
  o = Options();
  o.rates = {-1};
  EXPECT_FALSE(RunPlan(o).ok());
}

}  // namespace
}  // namespace pdserve::planner
