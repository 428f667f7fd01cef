"""Real pdserve processes for the end-to-end tests: a router and prefill /
decode nodes started one by one (so a test can signal or kill any of them),
on free loopback ports, stopped at exit. Exit code 77 means "skipped"."""
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

SKIP = 77
_procs = []


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    stop_all()
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
    print(f"ok: {msg}", flush=True)


def skip(msg):
    print(f"SKIP: {msg}")
    sys.exit(SKIP)


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A port free now, drawn below the kernel's ephemeral range: every bind(0)
    and connect() of the tests running beside this one draws from that range,
    so a port found there can be taken before our server binds it."""
    lo, hi = 20000, min(_ephemeral_low(), 32768)
    # PDSERVE_TEST_PORTS=LO-HI: a range of its own for a run beside others.
    if os.environ.get("PDSERVE_TEST_PORTS"):
        lo, hi = (int(x) for x in os.environ["PDSERVE_TEST_PORTS"].split("-"))
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(lo, hi)
        try:
            with socket.socket() as s:
                s.bind(("0.0.0.0", port))  # metrics and HTTP servers bind every address
            return port
        except OSError:
            continue
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name, args, log_dir):
        self.name = name
        self.args = args
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        _procs.append(self)

    def signal(self, sig):
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def wait(self, timeout):
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def tail(self, n=30):
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])


def stop_all():
    for proc in _procs:
        proc.signal(signal.SIGTERM)
    for proc in _procs:
        if proc.wait(10) is None:
            proc.p.kill()
            proc.p.wait()


class Cluster:
    """router + prefill + decode (or mixed) processes on loopback."""

    def __init__(self, pdserve, model, log_dir, extra=(), router_extra=(), node_extra=(),
                 prefill=1, decode=1, http=True):
        os.makedirs(log_dir, exist_ok=True)
        self.pdserve, self.model, self.log_dir = pdserve, model, log_dir
        self.extra = list(extra)
        self.node_extra = list(node_extra)
        self.router_port = free_port()
        self.metrics_port = free_port()
        self.http_port = free_port() if http else -1
        args = [pdserve, "router", "--model", model, "--listen", f"127.0.0.1:{self.router_port}",
                "--metrics-port", str(self.metrics_port), "--http-port", str(self.http_port),
                "--heartbeat-ms", "200", "--node-expiry-ms", "2000", "--log-level", "warning"]
        self.router = Proc("router", args + self.extra + list(router_extra), log_dir)
        self.nodes = {}
        for i in range(prefill):
            self.add_node("prefill", i)
        for i in range(decode):
            self.add_node("decode", i)

    def add_node(self, role, index, extra=(), node_extra=None):
        """`node_extra` replaces the cluster's per-node flags when given."""
        name = f"{role}-{index}"
        port, metrics = free_port(), free_port()
        args = [self.pdserve, role, "--model", self.model, "--listen", f"127.0.0.1:{port}",
                "--router", f"127.0.0.1:{self.router_port}", "--node-id", name,
                "--threads", "1", "--metrics-port", str(metrics), "--kv-cache-mib", "64",
                "--log-level", "warning"]
        if role == "decode":
            args += ["--kv-port", str(free_port())]
        own = self.node_extra if node_extra is None else list(node_extra)
        proc = Proc(name, args + self.extra + own + list(extra), self.log_dir)
        proc.port, proc.metrics_port = port, metrics
        self.nodes[name] = proc
        return proc

    def url(self, path, scheme="http"):
        return f"{scheme}://127.0.0.1:{self.http_port}{path}"

    def wait_ready(self, timeout=90, want=200):
        """Until the router's /ready answers `want` (200: a prefill+decode pair)."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            for proc in [self.router, *self.nodes.values()]:
                if proc.p.poll() is not None:
                    fail(f"{proc.name} exited with {proc.p.returncode}:\n{proc.tail()}")
            last = http_status(f"http://127.0.0.1:{self.metrics_port}/ready")
            if last == want:
                return
            time.sleep(0.2)
        fail(f"router /ready stayed {last}, wanted {want}:\n{self.router.tail()}")


def http_status(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return None


def metric(url, name, labels="", headers=None):
    """Sum of a Prometheus sample `name{...labels...}` at `url`."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        if key.split("{")[0] == name and labels in key:
            total += float(value)
    return total


def wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    fail(f"timed out waiting for {what}")


def common_args(argv):
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--pdserve", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    if not os.path.exists(args.model):
        skip(f"no model at {args.model} (run scripts/fetch_model.sh)")
    return args
