#!/usr/bin/env python3
"""Writes bench/top1_agreement.sh's $OUT.json and $OUT.md from its run logs
(llama-perplexity's and top1_agreement_bench's outputs, one file per run).

    tools/top1_agreement_report.py LOGS OUT BUILD_INFO CMD WORK_DIR NAME SRC TEXT \
        LLAMA_BASE PDS_BASE LOAD_START LOAD_END ROOT TYPE...

Called by the script; by hand only to re-summarize kept logs.
"""
import datetime, hashlib, json, os, re, subprocess, sys
(logs, out, info_path, cmd, work, name, src, text, llama_base, pds_base, load_start, load_end,
 root) = sys.argv[1:14]
types = sys.argv[14:]
import gguf

def read(tag):
    return open(os.path.join(logs, tag)).read()

def llama(tag):
    s = read(tag)
    m = re.search(r"Same top p:\s*([\d.]+)\s*±\s*([\d.]+)\s*%", s)
    k = re.search(r"Mean\s+KLD:\s*([-\d.]+)", s)
    p = re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", s)
    if not m:
        raise SystemExit(f"top1_agreement: no 'Same top p' in {tag}:\n{s[-2000:]}")
    return {"same_top_pct": float(m.group(1)), "unc_pct": float(m.group(2)),
            "kld_mean": float(k.group(1)) if k else None, "ppl": float(p.group(1)) if p else None}

def pds(tag):
    s = read(tag)
    res = {}
    head = re.search(r"model=\S+ chunks=(\d+) n_ctx=(\d+) scored=(\d+) ppl=([\d.]+).*seconds=([\d.]+)", s)
    for m in re.finditer(r"base=(\S+) same_top=(\d+) count=(\d+) same_top_pct=([\d.]+) "
                         r"unc_pct=([\d.]+) kld_mean=([-\d.]+)", s):
        key = "vs_llama" if m.group(1) == llama_base else "vs_pds"
        res[key] = {"same_top": int(m.group(2)), "count": int(m.group(3)),
                    "same_top_pct": float(m.group(4)), "unc_pct": float(m.group(5)),
                    "kld_mean": float(m.group(6)), "ppl": float(head.group(4))}
    if not head or not res:
        raise SystemExit(f"top1_agreement: no result in {tag}:\n{s[-2000:]}")
    res["scored"] = int(head.group(3))
    res["seconds"] = float(head.group(5))
    return res

def census(path):
    counts = {}
    for t in gguf.GGUFReader(path).tensors:
        if len(t.shape) < 2 or t.shape[1] == 1:
            continue  # norms
        n = t.tensor_type.name
        counts[n] = counts.get(n, 0) + 1
    return counts

base_log = read("F32.llama.base")
sysinfo = next((l.split("system_info:", 1)[1].strip().rstrip("|").strip()
                for l in base_log.splitlines() if "system_info:" in l), "")
rows = []
f32 = {"type": "F32", "llama_vs_llama": None, "llama_vs_pds": llama("F32.llama.vs_pds"),
       "pds": pds("F32.pds"), "tensors": census(os.path.join(work, f"{name}.F32.gguf")),
       "file_mib": os.path.getsize(os.path.join(work, f"{name}.F32.gguf")) / 2**20}
for t in types:
    path = os.path.join(work, f"{name}.{t}.gguf")
    rows.append({"type": t, "file_mib": os.path.getsize(path) / 2**20, "tensors": census(path),
                 "llama_vs_llama": llama(f"{t}.llama.vs_llama"), "llama_vs_pds": llama(f"{t}.llama.vs_pds"),
                 "pds": pds(f"{t}.pds")})
info = json.load(open(info_path))
commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
cpu = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "?")
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
result = {"command": cmd,
          "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
          "machine": {"cpu": cpu, "logical_cpus": os.cpu_count()},
          "load": {"start": load_start.strip(), "end": load_end.strip()},
          "pdserve_commit": commit, "peer": info, "peer_system_info": sysinfo,
          "source_model": os.path.basename(src), "source_sha256": sha(src),
          "text": os.path.relpath(text, root), "text_sha256": sha(text),
          "f32": f32, "rows": rows}
json.dump(result, open(out + ".json", "w"), indent=1)

def pct(r):
    return f"{r['same_top_pct']:.2f} ± {r['unc_pct']:.2f}"

def verdict(p, l):
    d = p["same_top_pct"] - l["same_top_pct"]
    return f"{d:+.2f}" + (" ok" if d >= 0 else " **below**")

def tensors(c):
    return ", ".join(f"{k.lower()} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))

scored = f32["pds"]["scored"]
lines = [
    "# Greedy top-1 agreement with the F32 model, pdserve against llama.cpp", "",
    f"`{cmd}`, {result['date_utc']} UTC, pdserve {commit}, on {cpu} ({os.cpu_count()} logical CPUs). "
    f"Load at start: `{load_start.strip()}`; at end: `{load_end.strip()}` (shared machine; "
    "the figures here are counts, the load changes none of them).", "",
    f"Model: {os.path.basename(src)} dequantized to F32 by tools/dequantize_gguf.py (the truth), "
    "each type made from it by llama-quantize. Text: "
    f"`{os.path.relpath(text, root)}` (sha256 {result['text_sha256'][:12]}), tokenized by llama.cpp, "
    f"{f32['pds']['scored'] // 255} chunks of 512 tokens, the second half of each scored: "
    f"{scored} teacher-forced positions, the same tokens for both engines.", "",
    f"Peer: {info['source']}, {info.get('llama_bench_version', '').strip()}; {info['cxx_version']}; "
    f"`{' '.join(info['cmake_flags'])}`; {info.get('native_flags', '')}"
    f"{'; ISA ' + ' '.join(info['native_isa']) if info.get('native_isa') else ''}. "
    f"llama.cpp system_info: `{sysinfo}`.", "",
    "Same top-1 %: positions where the argmax of the quantized model's logits equals the argmax "
    "of the F32 run's, ± the binomial standard error (llama-perplexity's \"Same top p\"; pdserve's "
    "side ports its statistic). vs llama F32: the truth is llama.cpp's F32 run; vs pdserve F32: "
    "pdserve's. KLD: mean KL(F32 || quantized), nats. Δ: pdserve minus llama.cpp, percentage points.", "",
    "| type | MiB | llama.cpp vs llama F32 | pdserve vs llama F32 | Δ | llama.cpp vs pdserve F32 "
    "| pdserve vs pdserve F32 | Δ | KLD llama.cpp / pdserve (vs own F32) | PPL llama.cpp / pdserve |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
ll, lp_ = f32["llama_vs_pds"], f32["pds"]["vs_llama"]
lines.append(f"| F32 (noise floor) | {f32['file_mib']:.0f} | 100 (itself) | {pct(lp_)} | – | {pct(ll)} | "
             f"100 (itself) | – | {ll['kld_mean']:.6f} / {lp_['kld_mean']:.6f} (each vs the other's) | "
             f"{ll['ppl']:.3f} / {lp_['ppl']:.3f} |")
ok = True
for r in rows:
    l1, l2, p1, p2 = r["llama_vs_llama"], r["llama_vs_pds"], r["pds"]["vs_llama"], r["pds"]["vs_pds"]
    ok &= p1["same_top_pct"] >= l1["same_top_pct"] and p2["same_top_pct"] >= l2["same_top_pct"]
    lines.append(f"| {r['type']} | {r['file_mib']:.0f} | {pct(l1)} | {pct(p1)} | {verdict(p1, l1)} | "
                 f"{pct(l2)} | {pct(p2)} | {verdict(p2, l2)} | {l1['kld_mean']:.5f} / {p2['kld_mean']:.5f} | "
                 f"{l1['ppl']:.3f} / {p1['ppl']:.3f} |")
lines += ["", f"Bar (pdserve >= llama.cpp for every type, against both truths): "
          f"{'met' if ok else 'NOT met'}.", "", "Tensor types of each file (2-D tensors):", ""]
for r in [f32] + rows:
    lines.append(f"- {r['type']}: {tensors(r['tensors'])}")
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
