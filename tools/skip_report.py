#!/usr/bin/env python3
"""Says which tests were skipped and why, after a test run.

usage: skip_report.py BUILD_DIR|- REPORT_XML... [--strict]

Reads each report for the skipped cases and why: ctest's JUnit report (ctest
--output-junit; the reason is the GoogleTest skip message in the case's
output) or a GoogleTest binary's own (--gtest_output=xml; the reason is the
<skipped> element's message). Labels come from `ctest --test-dir BUILD_DIR
--show-only=json-v1`; with BUILD_DIR `-` (test binaries run directly, as the
TSan step does) no case has a label. Prints one line per skipped case and a
count.
--strict (set by scripts/test.sh when CI=true): exit 1 if a case skipped that
is not labelled `gpu`; on this machine only tests that need a GPU may skip.
"""
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET


def labels_by_test(build_dir):
    if build_dir == "-":
        return {}
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


def skipped_cases(report):
    """(name, reason) of each skipped case in a ctest JUnit or GoogleTest XML report."""
    skipped = []
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.get("result") is not None:
            # GoogleTest's own report: <testcase name classname result="skipped">.
            if case.get("result") != "skipped" and case.find("skipped") is None:
                continue
            name = f"{case.get('classname')}.{case.get('name')}"
            element = case.find("skipped")
            why = (element.get("message") if element is not None else "") or ""
            why = why.strip().splitlines()[-1].strip() if why.strip() else "(no message)"
            skipped.append((name, why))
        elif case.get("status") in ("notrun", "disabled") or case.find("skipped") is not None:
            skipped.append((case.get("name"), skip_reason(case.findtext("system-out") or "")))
    return skipped


def main():
    args = [a for a in sys.argv[1:] if a != "--strict"]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    build_dir, reports = args[0], args[1:]
    strict = "--strict" in sys.argv[1:]
    labels = labels_by_test(build_dir)
    skipped = []
    for report in reports:
        skipped.extend(skipped_cases(report))
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
