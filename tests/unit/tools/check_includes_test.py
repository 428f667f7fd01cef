#!/usr/bin/env python3
"""tools/check_includes.py on crafted trees: a clean layering passes, a
forbidden edge fails, and a cycle between two directories (or around three)
fails naming every edge of it; the repository itself passes."""
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
SCRIPT = os.path.join(ROOT, "tools", "check_includes.py")


def run(root):
    p = subprocess.run([sys.executable, SCRIPT, root], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def tree(files):
    d = tempfile.mkdtemp()
    for path, text in files.items():
        os.makedirs(os.path.join(d, os.path.dirname(path)), exist_ok=True)
        with open(os.path.join(d, path), "w") as f:
            f.write(text)
    return d


class CheckIncludesTest(unittest.TestCase):
    def test_layered_tree_passes(self):
        rc, out = run(tree({
            "engine/gguf/gguf.h": "#pragma once\n",
            "engine/tokenizer/tokenizer.h": '#include "engine/gguf/gguf.h"\n',
            "engine/engine.cc": '#include "engine/tokenizer/tokenizer.h"\n',
            "node/events/events.h": '#include "engine/engine.h"\n',
            "prefill_node/h.cc": '#include "node/events/events.h"\n',
            "node/server.cc": '#include "prefill_node/h.h"\n#include "node/events/events.h"\n',
        }))
        self.assertEqual(rc, 0, out)

    def test_two_directory_cycle_fails_with_both_edges(self):
        rc, out = run(tree({
            "engine/grammar/vocab.h": '#include "engine/tokenizer.h"\n',
            "engine/request.h": '#include "engine/grammar/grammar.h"\n',
        }))
        self.assertEqual(rc, 1, out)
        self.assertIn("directory cycle: engine <-> engine/grammar", out)
        self.assertIn('engine/grammar/vocab.h includes "engine/tokenizer.h"', out)
        self.assertIn('engine/request.h includes "engine/grammar/grammar.h"', out)

    def test_three_directory_cycle_fails(self):
        rc, out = run(tree({
            "node/server.h": '#include "prefill_node/h.h"\n',
            "prefill_node/h.cc": '#include "decode_node/d.h"\n',
            "decode_node/d.cc": '#include "node/events.h"\n',
        }))
        self.assertEqual(rc, 1, out)
        self.assertIn("directory cycle: decode_node <-> node <-> prefill_node", out)

    def test_forbidden_edge_fails(self):
        rc, out = run(tree({"kernels/k.cc": '#include "engine/engine.h"\n'}))
        self.assertEqual(rc, 1, out)
        self.assertIn("kernels/ is a leaf", out)

    def test_this_repository_passes(self):
        rc, out = run(ROOT)
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    unittest.main()
