#!/usr/bin/env python3
"""Fails when a project #include crosses a forbidden edge of the architecture.

usage: check_includes.py [ROOT]

The rules (ARCHITECTURE.md, "Dependency direction"):
  kernels/   includes nothing of ours outside kernels/
  transport/ never includes engine/; kernels/cuda only from the GPU backends
             (nccl_*, ipc_*, host_staged*: they stage device memory)
             (it stages device memory), nothing else of kernels/
  router/    may include the tokenizer, the GGUF reader (to read the
             tokenizer) and request types of engine/, never model compute
             (engine/ model, forward, runner, backend, cuda) or kernels/
  loadgen/   includes only loadgen/, common/, rpc/ and the generated proto
  common/    includes only common/
and no two directories include each other, directly or around a loop (a
directory is a unit with its own CMake target: engine/gguf/, node/events/,
...): the cycles found are printed with one include for each edge.
Third-party includes (absl/, grpcpp/, ...) are not checked.
"""
import os
import re
import sys

OURS = ("common", "kernels", "engine", "transport", "tracing", "http", "rpc", "router",
        "node", "prefill_node", "decode_node", "loadgen", "cli", "planner", "pdserve")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)

# (source dir, predicate(source path, include) -> error text or None)
ROUTER_ENGINE_OK = ("engine/tokenizer/", "engine/gguf/gguf.h", "engine/text/", "engine/grammar/")


def rule(src, inc):
    top = src.split("/", 1)[0]
    itop = inc.split("/", 1)[0]
    if itop not in OURS:
        return None
    if top == "kernels" and itop != "kernels":
        return "kernels/ is a leaf: it includes nothing of ours"
    if top == "common" and itop != "common":
        return "common/ includes only common/"
    if top == "transport":
        if itop == "engine":
            return "transport/ never includes engine/ (it sees only {pointer, bytes} views)"
        if itop == "kernels" and not (inc.startswith("kernels/cuda/") and
                                      os.path.basename(src).startswith(
                                          ("nccl_", "ipc_", "host_staged"))):
            return "transport/ includes kernels/cuda only from its GPU backends"
    if top == "router":
        if itop == "kernels":
            return "router/ never includes kernels/"
        if itop == "engine" and not inc.startswith(ROUTER_ENGINE_OK):
            return "router/ includes only the tokenizer and request types of engine/"
    if top == "loadgen" and itop not in ("loadgen", "common", "rpc", "pdserve"):
        return "loadgen/ includes only loadgen/, common/, rpc/ and proto"
    return None


SKIP_DIRS = ("build", "tests", "bench", "third_party", "models", "deploy", "docs", "tools",
             "scripts", "cmake", "proto", ".git")


def directory_cycles(root):
    """Cycles of the include graph between our source directories, each as
    a list of (from_dir, to_dir, file, include) edges."""
    edges = {}
    for dirpath, dirnames, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir.split(os.sep, 1)[0].startswith(SKIP_DIRS):
            dirnames[:] = []
            continue
        for f in files:
            if not f.endswith((".h", ".cc", ".cu", ".cuh", ".inc")):
                continue
            path = os.path.join(dirpath, f)
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            for m in INCLUDE.finditer(text):
                inc = m.group(1)
                to = os.path.dirname(inc)
                if not to or to.split("/", 1)[0] not in OURS or to == rel_dir:
                    continue
                edges.setdefault(rel_dir, {}).setdefault(to, (os.path.join(rel_dir, f), inc))
    # Tarjan's strongly connected components; any with two or more
    # directories holds a cycle.
    index, low, stack, on_stack, comps = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [[(a, b) + edges[a][b] for a in comp for b in sorted(edges.get(a, {})) if b in comp]
            for comp in comps]


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    root = os.path.abspath(root)
    errors = []
    for top in ("kernels", "common", "transport", "router", "loadgen"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if not f.endswith((".h", ".cc", ".cu", ".cuh", ".inc")):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, root)
                with open(path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
                for m in INCLUDE.finditer(text):
                    why = rule(rel, m.group(1))
                    if why:
                        line = text.count("\n", 0, m.start()) + 1
                        errors.append(f"{rel}:{line}: includes \"{m.group(1)}\": {why}")
    cycles = directory_cycles(root)
    for comp in cycles:
        errors.append("directory cycle: " + " <-> ".join(sorted({a for a, *_ in comp})))
        for a, b, f, inc in comp:
            errors.append(f"  {a} -> {b}: {f} includes \"{inc}\"")
    for e in errors:
        print(e, file=sys.stderr)
    print(f"check_includes: {len(errors) - sum(len(c) for c in cycles)} forbidden include(s) "
          f"or directory cycle(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
