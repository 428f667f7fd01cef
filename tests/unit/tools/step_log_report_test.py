#!/usr/bin/env python3
"""bench/step_log_report.py against crafted step logs and a hand profile: each
step priced as the simulator would (the co-run cost for the part of a step
that overlapped another node's, never below the cost alone), the speed
factor per node and over several (whole steps: the time outside the forward
pass counts), --since-ns leaving out a warm-up,
--until-ns keeping only the steps before a run (a probe), another node's
prefill costing after it ends (post_peer_prefill) while the host is quiet, and
--scaled-profile writing the profile times that factor, and --by-kind
scaling the prompt's terms and the rest by their own steps' factors."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "bench",
                      "step_log_report.py")
MS = 1_000_000  # ns


def profile(co_scale):
    alone = {"base_s": 0.001, "prefill_token_s": 0.0001, "attention_pair_s": 0.0,
             "decode_seq_s": 0.001, "decode_context_token_s": 0.0}
    return {"name": "hand", "step": alone,
            "step_co_run": {k: v * co_scale for k, v in alone.items()}}


def load(path):
    with open(path) as f:
        return json.load(f)


def step(start_ms, forward_ms, prefill=0, decode=0):
    return {"start_ns": start_ms * MS, "schedule_ns": 0, "forward_ns": forward_ms * MS,
            "total_ns": forward_ms * MS, "idle_before_ns": 0, "prefill_tokens": prefill,
            "attention_pairs": 0, "decode_seqs": decode, "decode_context": 0}


class StepLogReportTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        # Node a: a decode step alone (2 ms in the profile, 3 measured), one
        # beside b's prefill step (4 ms with the co-run cost, 6 measured),
        # and a warm-up step before t = 5 ms. Node b: a 10-token prefill step
        # beside a's (4 ms with the co-run cost, 6 measured).
        self.a = self.write("a.steps.jsonl", [step(-50, 100, decode=1), step(0, 3, decode=1),
                                              step(10, 6, decode=1)])
        self.b = self.write("b.steps.jsonl", [step(10, 6, prefill=10)])

    def tearDown(self):
        shutil.rmtree(self.dir)

    def write(self, name, rows):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        return path

    def run_report(self, co_scale, *extra):
        prof = os.path.join(self.dir, "prof.json")
        with open(prof, "w") as f:
            json.dump(profile(co_scale), f)
        out = os.path.join(self.dir, "out.json")
        r = subprocess.run([sys.executable, SCRIPT, "--profile", prof, "--since-ns", str(-1 * MS),
                            "--json", out, *extra, self.a, self.b], capture_output=True, text=True)
        return r, (load(out) if r.returncode == 0 else None)

    def test_speed_factors_and_scaled_profiles(self):
        scaled_a = os.path.join(self.dir, "a.scaled.json")
        scaled_all = os.path.join(self.dir, "all.scaled.json")
        r, out = self.run_report(2.0, "--scaled-profile", f"{self.a}:{scaled_a}",
                                 "--scaled-profile", f"all:{scaled_all}")
        self.assertEqual(r.returncode, 0, r.stderr)
        a, b = out["nodes"][self.a], out["nodes"][self.b]
        self.assertEqual(a["steps"], 2, "the warm-up step is left out")
        self.assertAlmostEqual(a["forward_s"], 0.009)
        self.assertAlmostEqual(a["predicted_s"], 0.006)
        self.assertAlmostEqual(a["speed_factor"], 1.5)
        self.assertAlmostEqual(b["predicted_s"], 0.004)
        self.assertAlmostEqual(b["speed_factor"], 1.5)
        self.assertAlmostEqual(a["decode"]["co_run_fraction"], 6 / 9)
        s = load(scaled_a)
        self.assertAlmostEqual(s["step"]["base_s"], 0.0015)
        self.assertAlmostEqual(s["step_co_run"]["decode_seq_s"], 0.003)
        self.assertIn("x1.500", s["name"])
        self.assertAlmostEqual(load(scaled_all)["notes"]["speed_factor"], 15 / 10)

    def test_the_time_outside_the_forward_pass_counts_as_bench_times_whole_steps(self):
        # a's step at 0 ms: 0.5 ms of scheduling before it and 0.5 ms of
        # sampling and callbacks after its 3 ms forward pass: 4 ms against
        # the profile's 2 ms (bench --profile times whole Step() calls).
        rows = [step(0, 3, decode=1)]
        rows[0]["schedule_ns"] = MS // 2
        rows[0]["total_ns"] = 3 * MS + MS // 2
        self.a = self.write("a.steps.jsonl", rows)
        r, out = self.run_report(2.0, "--until-ns", str(5 * MS))
        self.assertEqual(r.returncode, 0, r.stderr)
        a = out["nodes"][self.a]
        self.assertAlmostEqual(a["forward_s"], 0.003)
        self.assertAlmostEqual(a["step_s"], 0.004)
        self.assertAlmostEqual(a["speed_factor"], 2.0)
        self.assertAlmostEqual(a["decode"]["outside_s"], 0.001)

    def test_a_co_run_cost_below_the_cost_alone_counts_as_alone(self):
        # As planner::CoRunSlowdown: a step beside another is never faster.
        r, out = self.run_report(0.5)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertAlmostEqual(out["nodes"][self.a]["predicted_s"], 0.004)
        self.assertAlmostEqual(out["nodes"][self.a]["speed_factor"], 9 / 4)

    def test_until_keeps_only_the_steps_that_started_before_it(self):
        # Until 5 ms: a's step at 0 ms alone (3 ms measured, 2 ms in the
        # profile; b's prefill at 10 ms is out, so no co-run cost), b none.
        r, out = self.run_report(2.0, "--until-ns", str(5 * MS))
        self.assertEqual(r.returncode, 0, r.stderr)
        a, b = out["nodes"][self.a], out["nodes"][self.b]
        self.assertEqual(a["steps"], 1)
        self.assertAlmostEqual(a["speed_factor"], 1.5)
        self.assertEqual(a["decode"]["co_run_fraction"], 0)
        self.assertEqual(b["steps"], 0)
        self.assertIsNone(b["speed_factor"])

    def test_another_nodes_prefill_costs_after_it_ends_while_the_host_is_quiet(self):
        # post_peer_prefill: 2 ms extra (decay long enough to stay whole).
        # a's step at 20 ms starts 4 ms after b's prefill ended with b idle:
        # 2 + 2 ms; at 0 ms no prefill of b ended before it; at 10 ms b is
        # mid-step (the co-run cost instead); at 30 ms b is mid-step again.
        self.a = self.write("a.steps.jsonl", [step(0, 3, decode=1), step(10, 6, decode=1),
                                              step(20, 4, decode=1), step(30, 2, decode=1)])
        self.b = self.write("b.steps.jsonl", [step(10, 6, prefill=10), step(29, 5, prefill=10)])
        prof = profile(1.0)
        prof["post_peer_prefill"] = {"excess_s": 0.002, "decay_s": 1e9, "max_decode_seqs": 4}
        path = os.path.join(self.dir, "prof.json")
        with open(path, "w") as f:
            json.dump(prof, f)
        out = os.path.join(self.dir, "out.json")
        scaled = os.path.join(self.dir, "scaled.json")
        r = subprocess.run([sys.executable, SCRIPT, "--profile", path, "--json", out,
                            "--scaled-profile", f"{self.a}:{scaled}", self.a, self.b],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        a = load(out)["nodes"][self.a]
        self.assertAlmostEqual(a["predicted_s"], 0.002 * 3 + 0.004)
        self.assertAlmostEqual(load(scaled)["post_peer_prefill"]["excess_s"], 0.002 * 15 / 10)

    def test_by_kind_scales_the_prompt_terms_and_the_rest_apart(self):
        # One node: a 10-token prefill step at the profile's 2 ms, two
        # decode steps at twice the profile's 2 ms. --by-kind: the prompt's
        # terms x1, base and decode terms x2; without it everything x10/6.
        self.a = self.write("a.steps.jsonl", [step(0, 2, prefill=10), step(10, 4, decode=1),
                                              step(20, 4, decode=1)])
        path = os.path.join(self.dir, "prof.json")
        with open(path, "w") as f:
            json.dump(profile(1.0), f)
        by_kind, whole = os.path.join(self.dir, "k.json"), os.path.join(self.dir, "w.json")
        for extra, dest in ((["--by-kind"], by_kind), ([], whole)):
            r = subprocess.run([sys.executable, SCRIPT, "--profile", path, *extra,
                                "--scaled-profile", f"all:{dest}", self.a],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
        k = load(by_kind)
        self.assertAlmostEqual(k["step"]["prefill_token_s"], 0.0001)
        self.assertAlmostEqual(k["step"]["base_s"], 0.002)
        self.assertAlmostEqual(k["step"]["decode_seq_s"], 0.002)
        self.assertAlmostEqual(k["step_co_run"]["decode_seq_s"], 0.002)
        self.assertAlmostEqual(k["notes"]["prefill_factor"], 1.0)
        self.assertAlmostEqual(k["notes"]["decode_factor"], 2.0)
        w = load(whole)
        self.assertAlmostEqual(w["step"]["prefill_token_s"], 0.0001 * 10 / 6)
        self.assertAlmostEqual(w["step"]["base_s"], 0.001 * 10 / 6)

    def test_by_kind_without_prefill_steps_takes_the_overall_factor(self):
        self.a = self.write("a.steps.jsonl", [step(10, 4, decode=1)])
        path = os.path.join(self.dir, "prof.json")
        with open(path, "w") as f:
            json.dump(profile(1.0), f)
        dest = os.path.join(self.dir, "k.json")
        r = subprocess.run([sys.executable, SCRIPT, "--profile", path, "--by-kind",
                            "--scaled-profile", f"all:{dest}", self.a], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertAlmostEqual(load(dest)["step"]["prefill_token_s"], 0.0002)

    def test_a_scaled_profile_of_a_log_not_given_is_refused(self):
        r, _ = self.run_report(2.0, "--scaled-profile", f"nope.jsonl:{self.dir}/x.json")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("nope.jsonl is not one of the logs given", r.stderr)

    def test_a_line_that_is_not_json_names_its_file_and_line(self):
        with open(self.b, "a") as f:
            f.write("{oops\n")
        r, _ = self.run_report(2.0)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("b.steps.jsonl:2: not JSON", r.stderr)


if __name__ == "__main__":
    unittest.main()
