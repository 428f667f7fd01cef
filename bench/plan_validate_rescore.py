#!/usr/bin/env python3
"""Scores a finished bench/plan_validate.sh run again with other speed
corrections, from its kept step logs (KEEP_STEP_LOGS=1).

For every measured run in DIR it rebuilds the three corrected predictions
as plan_validate.sh makes them (the run's own node speeds, the probe before
it, the deployment's previous run) with bench/step_log_report.py, either
with one factor per node (--mode whole, what plan_validate.sh did before
--by-kind) or with the prompt's terms and the rest scaled apart
(--mode by-kind), replays each with `pdserve plan`, and scores them with
plan_validate.sh's own summary code against the same bounds.

Each run's windows are found from its committed step reports: the run is a
log's last N steps (N from RUN.steps.json), the probe the M steps before
(M from RUN.probe_steps.json). Profiles are the ones the run's reports
scaled (their notes.scaled_from).

usage: plan_validate_rescore.py [--mode whole|by-kind] [--out DIR] RUN_DIR RESULT.json
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "bench", "step_log_report.py")


def rate_of(base):
    return re.search(r"rate([\d.]+?)\.rep", base).group(1)


def rep_of(base):
    return int(re.search(r"\.rep(\d+)$", base).group(1))


def windows(base):
    """The logs, and the first start_ns of the probe and of the run."""
    logs = sorted(glob.glob(f"{base}.steps/*.steps.jsonl"))
    if not logs:
        sys.exit(f"{base}: no step logs (the run was not made with KEEP_STEP_LOGS=1)")
    run = {os.path.basename(k): v["steps"] for k, v in json.load(open(f"{base}.steps.json"))["nodes"].items()}
    probe = {os.path.basename(k): v["steps"]
             for k, v in json.load(open(f"{base}.probe_steps.json"))["nodes"].items()}
    t_run = t_probe = 0
    for log in logs:
        starts = [json.loads(line)["start_ns"] for line in open(log) if line.strip()]
        n, m = run[os.path.basename(log)], probe[os.path.basename(log)]
        if len(starts) < n + m + 1:
            sys.exit(f"{log}: fewer steps than its reports count")
        t_run = max(t_run, starts[len(starts) - n - 1] + 1)
        t_probe = max(t_probe, starts[len(starts) - n - m - 1] + 1)
    return logs, t_probe, t_run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("whole", "by-kind"), default="by-kind")
    ap.add_argument("--out", help="where the new reports and replays go (default: a temporary folder)")
    ap.add_argument("--bin", default=os.environ.get("PDSERVE_BIN", os.path.join(ROOT, "build", "bin", "pdserve")))
    ap.add_argument("run_dir")
    ap.add_argument("result")
    a = ap.parse_args()
    result = json.load(open(a.result))
    slo_ttft, slo_tpot = result["slo"]["ttft_ms"], result["slo"]["tpot_ms"]
    out = a.out or tempfile.mkdtemp(prefix="rescore.")
    os.makedirs(out, exist_ok=True)
    run_dir = os.path.abspath(a.run_dir)

    def replay(name, base, profiles, dest):
        subprocess.run([a.bin, "plan", *profiles, "--deployments", name, "--replay-csv", f"{base}.measured.csv",
                        "--goodput", f"ttft:{slo_ttft}", f"tpot:{slo_tpot}", "--result-json", f"{dest}.json",
                        "--detailed-csv", f"{dest}.csv"], check=True, stdout=subprocess.DEVNULL)

    def scale(name, profile, logs, since, until, dest):
        if name.startswith("colocated"):
            specs, profiles = [f"all:{dest}.json"], ["--profile", f"{dest}.json"]
        else:
            pre = ",".join(x for x in logs if "/prefill-" in x)
            dec = ",".join(x for x in logs if "/decode-" in x)
            specs = [f"{pre}:{dest}_prefill.json", f"{dec}:{dest}_decode.json"]
            profiles = ["--profile", f"{dest}_prefill.json", "--decode-profile", f"{dest}_decode.json"]
        cmd = [sys.executable, REPORT, "--profile", profile, "--since-ns", str(since)]
        if until is not None:
            cmd += ["--until-ns", str(until)]
        if a.mode == "by-kind":
            cmd.append("--by-kind")
        for s in specs:
            cmd += ["--scaled-profile", s]
        subprocess.run(cmd + logs, check=True, stdout=subprocess.DEVNULL)
        return profiles

    points = []
    for name in sorted({os.path.basename(p).split(".rate")[0] for p in glob.glob(f"{run_dir}/*.measured.json")}):
        bases = [p[:-len(".measured.json")] for p in glob.glob(f"{run_dir}/{name}.rate*.measured.json")]
        bases.sort(key=lambda b: (rep_of(b), float(rate_of(b))))  # the order plan_validate.sh ran them
        previous = None
        for base in bases:
            own = f"{base}.speed.json" if name.startswith("colocated") else f"{base}.speed_decode.json"
            profile = json.load(open(own))["notes"]["scaled_from"]
            logs, t_probe, t_run = windows(base)
            dest = os.path.join(out, os.path.basename(base))
            replay(name, base, scale(name, profile, logs, t_run, None, f"{dest}.speed"), f"{dest}.speed_corrected")
            replay(name, base, scale(name, profile, logs, t_probe, t_run, f"{dest}.probe"),
                   f"{dest}.probe_corrected")
            history = "-"
            if previous:
                profiles = (["--profile", f"{previous}.speed.json"] if name.startswith("colocated") else
                            ["--profile", f"{previous}.speed_prefill.json",
                             "--decode-profile", f"{previous}.speed_decode.json"])
                replay(name, base, profiles, f"{dest}.history_corrected")
                history = f"{dest}.history_corrected.json"
            previous = dest
            points.append(f"{name} {rate_of(base)} {base}.measured.json 0 {base}.predicted.json 0 {rep_of(base)} "
                          f"{dest}.speed_corrected.json {dest}.probe_corrected.json {history}")
    points_file = os.path.join(out, "points")
    open(points_file, "w").write("\n".join(points) + "\n")

    # plan_validate.sh's summary, as it is in the script.
    script = open(os.path.join(ROOT, "bench", "plan_validate.sh")).read()
    m = re.search(r'python3 - "\$POINTS" "\$RESULT"[^\n]*<<\'PY\'\n(.*?)\nPY\n', script, re.S)
    if not m:
        sys.exit("plan_validate.sh: its summary code was not found")
    summary = os.path.join(out, "summary.py")
    open(summary, "w").write(m.group(1))
    empty = os.path.join(out, "machine.json")
    open(empty, "w").close()
    drift = os.path.join(run_dir, "drift.json")
    print(f"{a.mode}: {run_dir}")
    subprocess.run([sys.executable, summary, points_file, os.path.join(out, "rescored.json"), "0", str(slo_ttft),
                    str(slo_tpot), empty, "rescored", "", drift if os.path.exists(drift) else ""], check=True,
                   cwd=ROOT)


if __name__ == "__main__":
    main()
