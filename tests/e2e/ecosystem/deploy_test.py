#!/usr/bin/env python3
"""deploy/ checked without a container engine or a cluster:
  - Dockerfiles: every path they COPY from the build context exists, the
    entrypoint is pdserve and the flags of its CMD are ones the binary takes;
  - Kubernetes: each overlay renders with `kubectl kustomize`, validates
    with kubernetes-validate (strict), passes only flags `pdserve <cmd>
    --help` lists, and keeps the invariants the design relies on (probes,
    non-root read-only containers, grace period >= preStop + drain timeout,
    GPU requests = limits, a PDB per pool, HPA metrics pdserve exports).
Exit 0: pass; 77: skipped (kubectl or kubernetes-validate missing)."""
import argparse
import os
import re
import shutil
import subprocess
import sys

import yaml

SKIP = 77
failures = []


def check(cond, msg):
    print(("ok: " if cond else "FAIL: ") + msg, flush=True)
    if not cond:
        failures.append(msg)


_help_cache = {}


def known_flags(pdserve, cmd):
    if cmd not in _help_cache:
        out = subprocess.run([pdserve, cmd, "--help"], capture_output=True, text=True).stdout
        _help_cache[cmd] = set(re.findall(r"--([a-z0-9][a-z0-9-]*)", out))
    return _help_cache[cmd]


def flags_of(args):
    return [a[2:].split("=", 1)[0] for a in args if a.startswith("--")]


def check_dockerfile(path, root, pdserve):
    name = os.path.relpath(path, root)
    text = open(path).read().replace("\\\n", " ")
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        for src in words[1:-1]:
            check(os.path.exists(os.path.join(root, src)), f"{name}: COPY source {src} exists")
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    check(entry is not None and yaml.safe_load(entry.group(1))[0].endswith("/pdserve"),
          f"{name}: ENTRYPOINT is pdserve")
    if cmd:
        args = yaml.safe_load(cmd.group(1))
        unknown = set(flags_of(args)) - known_flags(pdserve, args[0])
        check(not unknown, f"{name}: CMD flags of `pdserve {args[0]}` exist (unknown: {unknown})")
    check(re.search(r"^USER \d+", text, re.M) is not None, f"{name}: runs as a non-root user")


def metric_names(root):
    text = open(os.path.join(root, "tracing/pdserve_metrics.h")).read()
    return {m.replace(":", "_") for m in re.findall(r'"(pdserve:[a-z_]+)"', text)}


def check_overlay(overlay, root, pdserve, out_dir):
    rendered = subprocess.run(["kubectl", "kustomize", os.path.join(root, "deploy/k8s/overlays", overlay)],
                              capture_output=True, text=True)
    check(rendered.returncode == 0, f"{overlay}: kubectl kustomize renders ({rendered.stderr.strip()})")
    if rendered.returncode != 0:
        return
    path = os.path.join(out_dir, f"{overlay}.yaml")
    with open(path, "w") as f:
        f.write(rendered.stdout)
    v = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", path],
                       capture_output=True, text=True)
    check(v.returncode == 0, f"{overlay}: kubernetes-validate --strict ({v.stdout.strip()} {v.stderr.strip()})")

    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    config = by_kind["ConfigMap"][0]["data"]
    roles = {}
    for dep in by_kind.get("Deployment", []):
        role = dep["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        roles[role] = dep
        pod = dep["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c.get("securityContext", {})
            check(sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")
                  and not sc.get("allowPrivilegeEscalation", True),
                  f"{overlay}/{role}/{c['name']}: non-root, read-only root filesystem")
        c = pod["containers"][0]
        cmd = c["args"][0]
        unknown = set(flags_of(c["args"])) - known_flags(pdserve, cmd)
        check(not unknown, f"{overlay}/{role}: every flag is one `pdserve {cmd}` takes (unknown: {unknown})")
        refs = set(re.findall(r"\$\(([A-Z_]+)\)", " ".join(c["args"])))
        env = {e["name"] for e in c.get("env", [])}
        check(refs <= set(config) | env, f"{overlay}/{role}: every $(VAR) in args is defined")
        check(all(p in c for p in ("startupProbe", "livenessProbe", "readinessProbe")),
              f"{overlay}/{role}: startup, liveness and readiness probes")
        check("grpc" in c["startupProbe"], f"{overlay}/{role}: native gRPC startup probe")
        sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        grace = pod["terminationGracePeriodSeconds"]
        check(grace >= sleep + int(config["DRAIN_TIMEOUT"]),
              f"{overlay}/{role}: grace {grace}s >= preStop {sleep}s + drain {config['DRAIN_TIMEOUT']}s")
        check(c["image"].startswith("pdserve:"), f"{overlay}/{role}: image {c['image']}")
        res = c["resources"]
        if overlay == "gpu" and role in ("prefill", "decode"):
            check(res["requests"].get("nvidia.com/gpu") == res["limits"].get("nvidia.com/gpu") == "1",
                  f"gpu/{role}: GPU requests = limits = 1")
            check(config["DEVICE"] == "cuda", "gpu: --device cuda")
    check(set(roles) == {"router", "prefill", "decode"}, f"{overlay}: one Deployment per role")
    pdbs = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
            for p in by_kind.get("PodDisruptionBudget", [])}
    check(pdbs == {"router", "prefill", "decode"}, f"{overlay}: a PodDisruptionBudget per pool")
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind.get("Service", [])}
    check(services["pdserve-prefill"].get("clusterIP") == "None"
          and services["pdserve-decode"].get("clusterIP") == "None",
          f"{overlay}: headless Services for the nodes")
    check("pdserve-router" in services, f"{overlay}: a Service for the router")
    # Router replicas over one node pool: >= 2, a PDB that keeps one, and
    # nodes that register with every replica through a headless Service
    # publishing not-ready pods (a router is ready only once nodes registered).
    router = roles.get("router", {}).get("spec", {})
    check(router.get("replicas", 1) >= 2, f"{overlay}: the router runs >= 2 replicas")
    router_pdb = [p["spec"] for p in by_kind.get("PodDisruptionBudget", [])
                  if p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "router"]
    check(len(router_pdb) == 1 and (router_pdb[0].get("minAvailable") == 1
                                    or router_pdb[0].get("maxUnavailable") == 1),
          f"{overlay}: the router PDB keeps one replica up")
    for role in ("prefill", "decode"):
        if role not in roles:
            continue
        args = roles[role]["spec"]["template"]["spec"]["containers"][0]["args"]
        value = next((a.split("=", 1)[1] for a in args if a.startswith("--router-service=")), None)
        check(value is not None, f"{overlay}/{role}: registers through --router-service")
        if value is None:
            continue
        for var in re.findall(r"\$\(([A-Z_]+)\)", value):
            value = value.replace(f"$({var})", config.get(var, ""))
        name = value.split(":")[0].split(".")[0]
        svc = services.get(name, {})
        check(svc.get("clusterIP") == "None" and svc.get("publishNotReadyAddresses") is True
              and svc.get("selector", {}).get("app.kubernetes.io/component") == "router",
              f"{overlay}/{role}: {name} is a headless Service over the router pods, not-ready ones too")
    exported = metric_names(root)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind.get("HorizontalPodAutoscaler", [])}
    for target, want in (("pdserve-prefill", "pdserve_queued_prefill_tokens"),
                         ("pdserve-decode", "pdserve_kv_cache_usage_perc")):
        name = hpas[target]["spec"]["metrics"][0]["pods"]["metric"]["name"]
        check(name == want and name in exported, f"{overlay}: HPA of {target} on {name} (exported)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pdserve", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        check_dockerfile(os.path.join(a.root, "deploy/docker", name), a.root, a.pdserve)
    if shutil.which("kubectl") is None:
        print("SKIP: kubectl is not installed: the manifests were not rendered")
        sys.exit(SKIP if not failures else 1)
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        print("SKIP: kubernetes-validate is not installed (scripts/install_deps.sh)")
        sys.exit(SKIP if not failures else 1)
    for overlay in ("cpu", "gpu"):
        check_overlay(overlay, a.root, a.pdserve, a.out_dir)
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("deploy test: all checks passed")


if __name__ == "__main__":
    main()
