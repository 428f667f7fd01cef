#!/usr/bin/env python3
"""Says which ctest cases were skipped and why, after a ctest run.

usage: skip_report.py BUILD_DIR JUNIT_XML [--strict]

Reads ctest's JUnit report (ctest --output-junit) for the skipped cases and
their output (the GoogleTest skip message), and `ctest --show-only=json-v1`
for their labels. Prints one line per skipped case and a count.
--strict (set by scripts/test.sh when CI=true): exit 1 if a case skipped that
is not labelled `gpu`; on this machine only tests that need a GPU may skip.
"""
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET


def labels_by_test(build_dir):
    out = subprocess.run(["ctest", "--test-dir", build_dir, "--show-only=json-v1"],
                         check=True, capture_output=True, text=True).stdout
    labels = {}
    for t in json.loads(out).get("tests", []):
        for p in t.get("properties", []):
            if p.get("name") == "LABELS":
                labels[t["name"]] = list(p.get("value", []))
        labels.setdefault(t["name"], [])
    return labels


def skip_reason(text):
    # GoogleTest prints "<file>:<line>: Skipped\n<message>" before "[  SKIPPED ]".
    m = re.search(r"Skipped\s*\n(.+?)\n", text or "")
    if m and m.group(1).strip():
        return m.group(1).strip()
    m = re.search(r"SKIP_RETURN_CODE|exit code 77|skipped:? (.+)", text or "", re.I)
    return m.group(0).strip() if m else "(no message)"


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    build_dir, junit = sys.argv[1], sys.argv[2]
    strict = "--strict" in sys.argv[3:]
    labels = labels_by_test(build_dir)
    root = ET.parse(junit).getroot()
    skipped = []
    for case in root.iter("testcase"):
        if case.get("status") in ("notrun", "disabled") or case.find("skipped") is not None:
            out = case.findtext("system-out") or ""
            skipped.append((case.get("name"), skip_reason(out)))
    bad = []
    for name, why in skipped:
        gpu = "gpu" in labels.get(name, [])
        print(f"skipped{' (gpu)' if gpu else ''}: {name}: {why}")
        if not gpu:
            bad.append(name)
    n_gpu = len(skipped) - len(bad)
    print(f"skip report: {len(skipped)} skipped ({n_gpu} need a GPU, {len(bad)} other)")
    if strict and bad:
        print(f"skip report: error: {len(bad)} test(s) that can run on this machine were skipped",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
