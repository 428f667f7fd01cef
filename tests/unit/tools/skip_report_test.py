#!/usr/bin/env python3
"""tools/skip_report.py against crafted reports: a skip of a test that is not
labelled gpu fails --strict, in ctest's JUnit report and in a GoogleTest
binary's own XML (the TSan step's); a gpu-labelled skip does not."""
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tools",
                      "skip_report.py")

CTEST_JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="(empty)" tests="3" failures="0" disabled="0" skipped="{n_skipped}">
  <testcase name="Cpu.Runs" classname="Cpu.Runs" time="0.1" status="run"/>
  <testcase name="Gpu.Kernel" classname="Gpu.Kernel" time="0.1" status="run">
    <skipped message="Skipped"/>
    <system-out>x.cc:3: Skipped
no usable CUDA device; GPU test skipped
[  SKIPPED ] Gpu.Kernel</system-out>
  </testcase>
  {cpu_skip}
</testsuite>
"""
CPU_SKIP = """<testcase name="Cpu.Skips" classname="Cpu.Skips" time="0.1" status="run">
    <skipped message="Skipped"/>
    <system-out>y.cc:9: Skipped
model not found: run scripts/fetch_model.sh
[  SKIPPED ] Cpu.Skips</system-out>
  </testcase>"""

GTEST_XML = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="2" failures="0" disabled="0" errors="0" name="AllTests">
  <testsuite name="Suite" tests="2" skipped="{n_skipped}">
    <testcase name="Runs" status="run" result="completed" classname="Suite"/>
    <testcase name="Maybe" status="run" result="{result}" classname="Suite">{skipped}</testcase>
  </testsuite>
</testsuites>
"""
GTEST_SKIPPED = """<skipped message="z.cc:5&#x0A;no loopback IPv6 here"><![CDATA[z.cc:5
no loopback IPv6 here]]></skipped>"""

# A ctest directory without a build: three tests, one labelled gpu.
CTEST_FILE = """add_test(Cpu.Runs /bin/true)
add_test(Gpu.Kernel /bin/true)
set_tests_properties(Gpu.Kernel PROPERTIES LABELS "unit;gpu")
add_test(Cpu.Skips /bin/true)
set_tests_properties(Cpu.Skips PROPERTIES LABELS unit)
"""


def run(*args):
    p = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


class SkipReportTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.build = os.path.join(self.dir.name, "build")
        os.mkdir(self.build)
        with open(os.path.join(self.build, "CTestTestfile.cmake"), "w") as f:
            f.write(CTEST_FILE)

    def tearDown(self):
        self.dir.cleanup()

    def write(self, name, text):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_gpu_skip_passes_strict(self):
        junit = self.write("j.xml", CTEST_JUNIT.format(n_skipped=1, cpu_skip=""))
        rc, out = run(self.build, junit, "--strict")
        self.assertEqual(rc, 0, out)
        self.assertIn("skipped (gpu): Gpu.Kernel: no usable CUDA device; GPU test skipped", out)
        self.assertIn("1 skipped (1 need a GPU, 0 other)", out)

    def test_cpu_skip_fails_strict_only(self):
        junit = self.write("j.xml", CTEST_JUNIT.format(n_skipped=2, cpu_skip=CPU_SKIP))
        rc, out = run(self.build, junit, "--strict")
        self.assertEqual(rc, 1, out)
        self.assertIn("skipped: Cpu.Skips: model not found: run scripts/fetch_model.sh", out)
        self.assertIn("2 skipped (1 need a GPU, 1 other)", out)
        rc, out = run(self.build, junit)
        self.assertEqual(rc, 0, out)

    def test_gtest_xml_skip_fails_strict(self):
        ok = self.write("ok.xml", GTEST_XML.format(n_skipped=0, result="completed", skipped=""))
        bad = self.write("bad.xml",
                         GTEST_XML.format(n_skipped=1, result="skipped", skipped=GTEST_SKIPPED))
        rc, out = run("-", ok, "--strict")
        self.assertEqual(rc, 0, out)
        self.assertIn("0 skipped", out)
        rc, out = run("-", ok, bad, "--strict")
        self.assertEqual(rc, 1, out)
        self.assertIn("skipped: Suite.Maybe: no loopback IPv6 here", out)


if __name__ == "__main__":
    unittest.main()
