#!/usr/bin/env python3
"""Writes tests/data/reference/smollm2_logits.json: top-20 logits at every
position of a few fixed prompts, computed by llama.cpp (an implementation we
did not write) through llama-cpp-python. Run once; the fixture is committed.

  pip download --no-deps --no-binary=:all: llama-cpp-python   # sdist
  # build llama.cpp from the sdist's vendor/llama.cpp with BUILD_SHARED_LIBS=ON,
  # then: CMAKE_ARGS=-DLLAMA_BUILD=OFF pip install --no-deps llama_cpp_python-*.tar.gz
  LLAMA_CPP_LIB_PATH=<dir with libllama.so> tools/make_reference_logits.py MODEL.gguf
"""
import hashlib
import json
import sys

import llama_cpp
import numpy as np

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "Once upon a time, in a small village by the sea, there lived",
    "1, 2, 3, 4, 5,",
]
TOP = 20


def main():
    path = sys.argv[1]
    out_path = sys.argv[2] if len(sys.argv) > 2 else "tests/data/reference/smollm2_logits.json"
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    llm = llama_cpp.Llama(path, logits_all=True, n_ctx=512, n_threads=2, n_batch=512,
                          verbose=False)
    cases = []
    for text in PROMPTS:
        tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
        llm.reset()
        llm.eval(tokens)
        scores = np.array(llm.scores[: len(tokens)], dtype=np.float64)
        positions = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:TOP]
            positions.append([[int(t), round(float(row[t]), 4)] for t in top])
        cases.append({"text": text, "tokens": [int(t) for t in tokens], "top_logits": positions})
    doc = {
        "model_sha256": sha,
        "generator": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp CPU backend, 2 threads)",
        "top": TOP,
        "cases": cases,
    }
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {out_path}: {len(cases)} prompts")


if __name__ == "__main__":
    main()
