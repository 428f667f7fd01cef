#!/usr/bin/env python3
"""Sets a running node's engine steps beside its profile.

Reads step logs (`pdserve prefill|decode|mixed --step-log-dir DIR`, one JSON
line per step) and the device profile the planner simulates that node with
(`pdserve bench --profile`), and prints, per kind of step (prefill only,
decode only, mixed):
  - the steps' measured time (whole engine steps, from the scheduling
    before the forward pass to the end of the sampling and output callbacks
    after it, as `pdserve bench --profile` times the steps it fits) against
    the profile's step cost for the same shape (the co-run cost for the
    part of a step that overlapped a step of another logged node, and the
    post-prefill extra on decode steps right after this node's prefill or,
    when no other node is mid-step, another's, as the simulator applies
    them);
  - the time a step spent outside the forward pass (scheduling before it,
    sampling and output callbacks after it): part of the step time above,
    which a serving node's callbacks (streaming tokens out, shipping KV)
    make longer than bench's.
With --json FILE it also writes the figures as JSON. Each node's speed
factor is its steps' measured time over the profile's for them;
--scaled-profile LOGS:OUT writes the profile with every step cost scaled by
the factor of LOGS (comma-separated; "all": every log given) to OUT: what the node cost
during the run, for `pdserve plan` to replay the run with (the machine's
speed during the run, apart from the simulator's queueing and scheduling).
With --by-kind the prompt's terms (prefill tokens, attention pairs) take the
factor of the steps that computed prompt tokens (prefill and mixed) and the
rest (base, decode terms, post-prefill extra) that of the decode-only steps:
a node's decode and prefill steps need not run at the same speed against
the profile (a colocated node: 1.35x and 1.05x in one run).
--since-ns T leaves out steps that started before MonoNowNs T (a warm-up),
--until-ns T those that started at or after it (a probe before a run).

usage: step_log_report.py --profile P.json [--since-ns T] [--until-ns T] [--json F]
                          [--by-kind] [--scaled-profile LOGS:OUT ...] LOG.steps.jsonl [LOG2 ...]
"""
import argparse
import bisect
import json
import math
import statistics
import sys


def step_seconds(c, s):
    return (c["base_s"] + c["prefill_token_s"] * s["prefill_tokens"] +
            c["attention_pair_s"] * s["attention_pairs"] + c["decode_seq_s"] * s["decode_seqs"] +
            c["decode_context_token_s"] * s["decode_context"])


def load(path):
    steps = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                steps.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
    return steps


def overlap(a0, a1, intervals):
    """Seconds of [a0, a1) covered by the sorted, disjoint intervals."""
    total = 0.0
    for b0, b1 in intervals:
        if b1 <= a0:
            continue
        if b0 >= a1:
            break
        total += min(a1, b1) - max(a0, b0)
    return total


def kind(s):
    if s["prefill_tokens"] and s["decode_seqs"]:
        return "mixed"
    return "prefill" if s["prefill_tokens"] else "decode"


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--json")
    ap.add_argument("--since-ns", type=int, default=0)
    ap.add_argument("--until-ns", type=int, default=None)
    ap.add_argument("--scaled-profile", action="append", default=[])
    ap.add_argument("--by-kind", action="store_true")
    ap.add_argument("logs", nargs="+")
    a = ap.parse_args()
    prof = json.load(open(a.profile))
    alone, co = prof["step"], prof.get("step_co_run")
    post, peer = prof.get("post_prefill"), prof.get("post_peer_prefill")
    until = math.inf if a.until_ns is None else a.until_ns
    logs = {p: [s for s in load(p) if a.since_ns <= s["start_ns"] < until] for p in a.logs}
    busy = {p: sorted((s["start_ns"] / 1e9, (s["start_ns"] + s["forward_ns"]) / 1e9) for s in st)
            for p, st in logs.items()}
    out = {"profile": a.profile, "nodes": {}}
    for path, steps in logs.items():
        others = sorted(iv for q, ivs in busy.items() if q != path for iv in ivs)
        peer_ends = sorted((x["start_ns"] + x["total_ns"]) / 1e9 for q, st in logs.items() if q != path
                           for x in st if x["prefill_tokens"])
        rows = {}
        last_prefill_end = -math.inf
        for s in steps:
            t0 = s["start_ns"] / 1e9
            fwd = s["forward_ns"] / 1e9
            pred = step_seconds(alone, s)
            if s["prefill_tokens"] == 0:
                # As the simulator: the larger of the extra after this
                # node's last prefill and, when no other node is mid-step,
                # after another node's.
                extra = 0.0
                if post and s["decode_seqs"] <= post["max_decode_seqs"]:
                    extra = post["excess_s"] * math.exp(-(t0 - last_prefill_end) / post["decay_s"])
                if peer and co and others and s["decode_seqs"] <= peer["max_decode_seqs"]:
                    i = bisect.bisect_right(peer_ends, t0)
                    j = bisect.bisect_right(others, (t0, math.inf))
                    busy_now = j > 0 and others[j - 1][1] > t0
                    if i > 0 and not busy_now:
                        extra = max(extra, peer["excess_s"] * math.exp(-(t0 - peer_ends[i - 1]) / peer["decay_s"]))
                pred += extra
            frac = overlap(t0, t0 + fwd, others) / fwd if (co and others and fwd > 0) else 0.0
            if frac > 0:
                # As the simulator does (planner::CoRunSlowdown): never faster
                # beside another node than alone.
                slowdown = max(1.0, step_seconds(co, s) / step_seconds(alone, s))
                pred = pred * (1 - frac) + pred * slowdown * frac
            if s["prefill_tokens"]:
                last_prefill_end = t0 + s["total_ns"] / 1e9
            r = rows.setdefault(kind(s), {"steps": 0, "forward_s": 0.0, "predicted_s": 0.0,
                                          "outside_s": 0.0, "co_run_s": 0.0, "ratios": [],
                                          "outside_ms": []})
            outside = (s["total_ns"] - s["forward_ns"] + s["schedule_ns"]) / 1e9
            r["steps"] += 1
            r["forward_s"] += fwd
            r["predicted_s"] += pred
            r["outside_s"] += outside
            r["co_run_s"] += frac * fwd
            r["ratios"].append((fwd + outside) / pred)
            r["outside_ms"].append(outside * 1e3)
        fwd_all = sum(r["forward_s"] for r in rows.values())
        for r in rows.values():
            r["step_s"] = r["forward_s"] + r["outside_s"]  # a whole step, as bench times it
        step_all = sum(r["step_s"] for r in rows.values())
        pred_all = sum(r["predicted_s"] for r in rows.values())
        node = {"steps": len(steps), "forward_s": fwd_all, "step_s": step_all, "predicted_s": pred_all,
                "speed_factor": step_all / pred_all if pred_all else None}
        print(f"{path}: {len(steps)} steps, {step_all:.3f} s (forward {fwd_all:.3f} s), profile {pred_all:.3f} s, "
              f"speed factor {node['speed_factor'] or float('nan'):.3f}")
        print(f"  {'kind':8} {'steps':>6} {'step s':>8} {'pred s':>8} {'fwd/pred':>8} "
              f"{'p50':>6} {'p90':>6} {'co-run':>7} {'outside ms/step p50 p99':>24}")
        for k in ("prefill", "mixed", "decode"):
            if k not in rows:
                continue
            r = rows[k]
            node[k] = {"steps": r["steps"], "forward_s": r["forward_s"], "step_s": r["step_s"],
                       "predicted_s": r["predicted_s"],
                       "forward_over_predicted": r["forward_s"] / r["predicted_s"],
                       "step_over_predicted": r["step_s"] / r["predicted_s"],
                       "ratio_p50": statistics.median(r["ratios"]), "ratio_p90": pct(r["ratios"], 0.9),
                       "co_run_fraction": r["co_run_s"] / r["forward_s"] if r["forward_s"] else 0,
                       "outside_s": r["outside_s"], "outside_ms_p50": statistics.median(r["outside_ms"]),
                       "outside_ms_p99": pct(r["outside_ms"], 0.99)}
            n = node[k]
            print(f"  {k:8} {r['steps']:6d} {r['step_s']:8.3f} {r['predicted_s']:8.3f} "
                  f"{n['forward_over_predicted']:8.3f} {n['ratio_p50']:6.3f} {n['ratio_p90']:6.3f} "
                  f"{n['co_run_fraction']:7.1%} {n['outside_ms_p50']:11.3f} {n['outside_ms_p99']:11.3f}")
        out["nodes"][path] = node
    for spec in a.scaled_profile:
        log, _, dest = spec.rpartition(":")
        names = list(out["nodes"]) if log == "all" else log.split(",")
        for n in names:
            if n not in out["nodes"]:
                sys.exit(f"--scaled-profile {spec}: {n} is not one of the logs given")
        nodes = [out["nodes"][n] for n in names]
        took = sum(n["step_s"] for n in nodes)
        pred = sum(n["predicted_s"] for n in nodes)
        if not pred:
            sys.exit(f"--scaled-profile {spec}: no steps to scale by")
        factor = took / pred
        # --by-kind: the prompt's terms by the factor of the steps that
        # computed prompt tokens (prefill and mixed), the rest (base, decode
        # terms, post-prefill extra) by the decode-only steps'; a side with
        # no steps takes the overall factor.
        sides = {}
        for side, kinds in (("prefill", ("prefill", "mixed")), ("decode", ("decode",))):
            t = sum(n[k]["step_s"] for n in nodes for k in kinds if k in n)
            p = sum(n[k]["predicted_s"] for n in nodes for k in kinds if k in n)
            sides[side] = t / p if (a.by_kind and p) else factor
        scale = {"prefill_token_s": sides["prefill"], "attention_pair_s": sides["prefill"]}
        scaled = json.loads(json.dumps(prof))
        for key in ("step", "step_co_run"):
            if scaled.get(key):
                scaled[key] = {k: v * scale.get(k, sides["decode"]) for k, v in scaled[key].items()}
        for key in ("post_prefill", "post_peer_prefill"):
            if scaled.get(key):
                scaled[key]["excess_s"] *= sides["decode"]
        label = (f"x{factor:.3f}" if not a.by_kind else
                 f"prefill x{sides['prefill']:.3f}, decode x{sides['decode']:.3f}")
        scaled["name"] = f"{prof['name']} {label}"
        scaled["notes"] = {"scaled_from": a.profile, "speed_factor": factor, "logs": names}
        if a.by_kind:
            scaled["notes"]["prefill_factor"] = sides["prefill"]
            scaled["notes"]["decode_factor"] = sides["decode"]
            what = "prompt terms by its prefill and mixed steps', the rest by its decode steps'"
        else:
            what = "every step cost by its steps'"
        scaled["source"] = (f"{a.profile} scaled {label}: {log}'s {what} measured time over this "
                            f"profile's for them (bench/step_log_report.py)")
        json.dump(scaled, open(dest, "w"), indent=1)
        out.setdefault("scaled_profiles", {})[dest] = {"logs": log, "speed_factor": factor,
                                                       "prefill_factor": sides["prefill"],
                                                       "decode_factor": sides["decode"]}
        print(f"wrote {dest}: {a.profile} {label}")
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
