#!/usr/bin/env python3
"""Fits a profile's decode terms on a saturation run (loadgen at rate inf).

Tried for docs/performance.md ("Validation against measured runs") and not
adopted; kept so the figures there can be reproduced. base_s and
prefill_token_s stay pinned by the idle run (TPOT p50 = base + D + K * ctx,
TTFT p50 = base + P * prompt), a grid over decode_seq_s (D) and
decode_context_token_s (K) is simulated with `pdserve plan` on the peak run's
workload, and the five best by squared relative error of throughput, ITL p50
and TPOT p50 (and ITL p90 for a colocated node) are printed.

  bench/plan_fit_peak.py colocated1 bench/results/plan_validation/profile_quiet_t2.json \\
      bench/results/disagg_vs_colocated/colocated.idle.json bench/results/disagg_vs_colocated/colocated.peak.json
  bench/plan_fit_peak.py 1P1D bench/results/plan_validation/profile_quiet_t1.json \\
      bench/results/disagg_vs_colocated/disaggregated.idle.json bench/results/disagg_vs_colocated/disaggregated.peak.json
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("PDSERVE_BIN", os.path.join(ROOT, "build/bin/pdserve"))
CTX = 540.0  # mean context of a decode step in that workload (512 +- 10% prompt, 64 out)
PROMPT = 504.0  # median prompt of the idle run


def main():
    dep, prof, idle, peak = sys.argv[1:5]
    idle_run = json.load(open(idle))["runs"][0]
    peak_run = json.load(open(peak))["runs"][0]
    base_profile = json.load(open(prof))
    ttft = idle_run["ttft_ms"]["p50"] / 1e3
    tpot = idle_run["tpot_ms"]["p50"] / 1e3
    tmp = tempfile.mkdtemp()

    def simulate(step):
        p = dict(base_profile, step=step)
        pf, of = os.path.join(tmp, "p.json"), os.path.join(tmp, "o.json")
        json.dump(p, open(pf, "w"))
        # 10,000 req/s: every request at once, as loadgen's rate inf.
        subprocess.run([BIN, "plan", "--profile", pf, "--deployments", dep, "--seed", "0",
                        "--num-prompts", "100", "--random-input-len", "512", "--random-output-len", "64",
                        "--random-range-ratio", "0.1", "--sweep", "10000", "--goodput", "ttft:1809.1", "tpot:17.4",
                        "--result-json", of],
                       check=True, capture_output=True)
        return json.load(open(of))["deployments"][0]["rates"][0]

    fits = []
    for d in [x * 1e-4 for x in range(2, 40, 3)]:
        for k in [x * 1e-7 for x in range(0, 40, 3)]:
            base = tpot - d - k * CTX
            if base <= 0:
                continue
            step = {"base_s": base, "prefill_token_s": (ttft - base) / PROMPT, "attention_pair_s": 0.0,
                    "decode_seq_s": d, "decode_context_token_s": k}
            r = simulate(step)
            errs = [r["request_throughput"] / peak_run["request_throughput"] - 1,
                    r["itl_ms"]["p50"] / peak_run["itl_ms"]["p50"] - 1,
                    r["tpot_ms"]["p50"] / peak_run["tpot_ms"]["p50"] - 1]
            if dep.startswith("colocated"):
                errs.append(r["itl_ms"]["p90"] / peak_run["itl_ms"]["p90"] - 1)
            fits.append((sum(e * e for e in errs), step, [round(e, 3) for e in errs]))
    fits.sort(key=lambda f: f[0])
    for score, step, errs in fits[:5]:
        print(round(score, 4), {k: float("%.4g" % v) for k, v in step.items()}, errs)


if __name__ == "__main__":
    main()
