#!/usr/bin/env python3
"""The cluster across hosts, not only loopback: router, prefill and decode
nodes each in a network namespace of their own, over real (veth) interfaces.

Topology (addresses from 198.18.0.0/15, only inside the namespaces made here;
the decode host also has 198.18.0.13, where its RPC relay listens):

            router 198.18.0.1
             r-p /       \\ r-d        each link a veth pair with its own
    198.18.1.0/24         198.18.2.0/24   /24; each namespace's host address
           /                 \\           (/32 on lo) routed over the links
    prefill 198.18.0.2 --p-d-- decode 198.18.0.3
                    198.18.3.0/24

Checks, as an operator moving pdserve onto real machines would:
  - nodes register across the links; a greedy generation through the router
    gives the token ids and text of `pdserve generate` for the same prompt;
  - with the prefill -> decode link capped (tc tbf), and through two
    fault-injecting relays (tcp_relay.py) on the decode host -- one for KV
    (announced with `pdserve decode --kv-advertise`), one for the router's
    RPCs and token stream (a second host address, `--advertise-host`) --
    that add latency or stall mid-transfer / mid-stream, every request still
    completes with the same tokens;
  - when a relay cuts its connection mid-request (RST): a cut of the KV link
    (before token #1 reached the client) is retried by the router and the
    request completes with the same tokens; a cut of the token stream after
    token #1 is migrated (the decode node continues from the tokens the
    client has, over a new connection) and completes with the same tokens and
    text; both nodes give every KV block back, and the next request succeeds
    over a new connection;
  - prints (and writes to OUT/timings.md) TTFT and e2e per condition.
No assertion is on time. Exit 0: pass; 77: skipped; anything else: failure.
Everything created (namespaces with their links, processes) is removed at
the end, on failure and on SIGINT/SIGTERM too; namespaces left by a run that
was killed outright are removed by the next run.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

SKIP = 77
PREFIX = "pdsnet-"  # namespaces: pdsnet-<pid>-{router,prefill,decode}
ROUTER_IP, PREFILL_IP, DECODE_IP = "198.18.0.1", "198.18.0.2", "198.18.0.3"
DECODE_RELAY_IP = "198.18.0.13"  # the decode host's second address: its RPC relay
ROUTER_PORT, PREFILL_PORT, DECODE_PORT, KV_PORT, KV_RELAY_PORT = 50051, 50061, 50071, 50100, 50200
DELAY_MS, STALL_S = 50, 3
N = 5  # requests per condition (the table shows medians)
HERE = os.path.dirname(os.path.abspath(__file__))

# 83 prompt tokens: 6 KV blocks, 2.2 MB in f16, enough for a 50 Mbit/s link to show.
PROMPT = ("Summarize in one sentence. The city council met on Tuesday to discuss the new "
          "bicycle lanes on Main Street. Shop owners worried about parking and deliveries, "
          "while parents asked for safer routes to the primary school near the river. The "
          "engineers showed three designs, and after a long debate the council chose the "
          "one that keeps half of the parking spaces and adds a protected lane on the "
          "north side. Work starts in spring.")
MAX_TOKENS = 8


class Failure(Exception):
    pass


class Interrupted(BaseException):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)
    print(f"ok: {msg}", flush=True)


def sh(*args, check_rc=True, timeout=30):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check_rc and r.returncode != 0:
        raise Failure(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def skip(msg):
    print(f"SKIP: {msg}", flush=True)
    sys.exit(SKIP)


# ---------------------------------------------------------------- namespaces

def our_netns():
    r = sh("ip", "netns", "list", check_rc=False)
    return [line.split()[0] for line in r.stdout.splitlines()
            if line.startswith(PREFIX)]


def kill_netns(ns):
    """Stops what runs inside `ns` (processes a run of this test started), then
    deletes it; its veth ends go with it and take their peers along."""
    pids = sh("ip", "netns", "pids", ns, check_rc=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    for _ in range(50):
        if not sh("ip", "netns", "pids", ns, check_rc=False).stdout.split():
            break
        time.sleep(0.1)
    sh("ip", "netns", "del", ns, check_rc=False)


def owner_alive(ns):
    try:
        pid = int(ns[len(PREFIX):].split("-")[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"netns_test.py" in f.read()
    except (ValueError, OSError):
        return False


def clean_stale():
    for ns in our_netns():
        if not owner_alive(ns):
            print(f"removing {ns}, left by a run that did not finish", flush=True)
            kill_netns(ns)


class Topology:
    def __init__(self):
        base = f"{PREFIX}{os.getpid()}"
        self.router, self.prefill, self.decode = (f"{base}-router", f"{base}-prefill",
                                                  f"{base}-decode")
        self.created = []

    def all(self):
        return [self.router, self.prefill, self.decode]

    def create(self):
        for ns in self.all():
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        hosts = {self.router: ROUTER_IP, self.prefill: PREFILL_IP, self.decode: DECODE_IP}
        for ns, ip in hosts.items():
            sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "lo")
        sh("ip", "-n", self.decode, "addr", "add", f"{DECODE_RELAY_IP}/32", "dev", "lo")
        # (ns a, dev in a, ns b, dev in b, subnet): the a side gets .1/.2, b .2/.3
        links = [(self.router, "r-p", self.prefill, "p-r", "198.18.1", 1, 2),
                 (self.router, "r-d", self.decode, "d-r", "198.18.2", 1, 3),
                 (self.prefill, "p-d", self.decode, "d-p", "198.18.3", 2, 3)]
        for a, dev_a, b, dev_b, net, ha, hb in links:
            sh("ip", "-n", a, "link", "add", "name", dev_a, "type", "veth", "peer", "name",
               dev_b, "netns", b)
            sh("ip", "-n", a, "addr", "add", f"{net}.{ha}/24", "dev", dev_a)
            sh("ip", "-n", b, "addr", "add", f"{net}.{hb}/24", "dev", dev_b)
            sh("ip", "-n", a, "link", "set", dev_a, "up")
            sh("ip", "-n", b, "link", "set", dev_b, "up")
            # Each host address over the direct link, sourced from the host
            # address (so every service can bind its host address only).
            sh("ip", "-n", a, "route", "add", f"{hosts[b]}/32", "via", f"{net}.{hb}", "src",
               hosts[a])
            sh("ip", "-n", b, "route", "add", f"{hosts[a]}/32", "via", f"{net}.{ha}", "src",
               hosts[b])
        sh("ip", "-n", self.router, "route", "add", f"{DECODE_RELAY_IP}/32", "via", "198.18.2.3",
           "src", ROUTER_IP)

    def destroy(self):
        for ns in reversed(self.created):
            kill_netns(ns)
        self.created = []


# ----------------------------------------------------------------- processes

class Proc:
    def __init__(self, name, ns, args, log_dir, stdin=None, stdout=None):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(["ip", "netns", "exec", ns] + args, stdin=stdin,
                                  stdout=stdout if stdout else self.log,
                                  stderr=self.log if stdout else subprocess.STDOUT,
                                  text=True, start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=10):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()

    def tail(self, n=25):
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])


class Relay(Proc):
    """tcp_relay.py in a namespace, driven line by line over stdin/stdout."""

    def __init__(self, name, ns, listen, target, log_dir):
        super().__init__(name, ns,
                         [sys.executable, os.path.join(HERE, "tcp_relay.py"), "--listen", listen,
                          "--target", target], log_dir, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
        line = self.p.stdout.readline()
        if not line.startswith("ok listening"):
            raise Failure(f"relay did not start: {line!r}\n{self.tail()}")

    def cmd(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        reply = self.p.stdout.readline().strip()
        if not reply.startswith("ok"):
            raise Failure(f"relay {line!r}: {reply!r}")
        return reply[3:]

    def stats(self):
        return json.loads(self.cmd("stats"))

    def stop(self, timeout=5):
        if self.p.poll() is None:
            try:
                self.cmd("quit")
            except (Failure, OSError):
                pass
        super().stop(timeout)


class Cluster:
    def __init__(self, args, topo):
        self.args, self.topo = args, topo
        self.procs = {}
        self.stubs = os.path.join(args.out_dir, "stubs")

    def start(self, name, ns, args):
        proc = Proc(name, ns, args, self.args.out_dir)
        self.procs[name] = proc
        return proc

    def start_router(self):
        self.start("router", self.topo.router,
                   [self.args.pdserve, "router", "--model", self.args.model, "--listen",
                    f"{ROUTER_IP}:{ROUTER_PORT}", "--heartbeat-ms", "200", "--node-expiry-ms",
                    "3000", "--kv-deadline-ms", "60000", "--drain-timeout", "2",
                    "--log-level", "info"])

    def start_prefill(self):
        self.start("prefill-0", self.topo.prefill,
                   [self.args.pdserve, "prefill", "--model", self.args.model, "--listen",
                    f"{PREFILL_IP}:{PREFILL_PORT}", "--advertise-host", PREFILL_IP, "--router",
                    f"{ROUTER_IP}:{ROUTER_PORT}", "--node-id", "prefill-0", "--threads", "1",
                    "--no-prefix-cache", "--drain-timeout", "2", "--log-level", "info"])

    def start_decode(self, advertise_host=DECODE_IP, kv_advertise=None):
        args = [self.args.pdserve, "decode", "--model", self.args.model, "--listen",
                f"{DECODE_IP}:{DECODE_PORT}", "--advertise-host", advertise_host,
                "--kv-listen-host", DECODE_IP, "--kv-port", str(KV_PORT), "--router",
                f"{ROUTER_IP}:{ROUTER_PORT}",
                "--node-id", "decode-0", "--threads", "1", "--kv-cache-mib", "64",
                "--drain-timeout", "2", "--log-level", "info"]
        if kv_advertise:
            args += ["--kv-advertise", kv_advertise]
        self.start("decode-0", self.topo.decode, args)

    def stop(self, name):
        proc = self.procs.pop(name, None)
        if proc:
            proc.stop()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def dead(self):
        return [f"{n} exited with {p.p.returncode}:\n{p.tail()}" for n, p in self.procs.items()
                if not p.alive()]

    def rpc(self, *args, timeout=90):
        r = subprocess.run(["ip", "netns", "exec", self.topo.router, sys.executable,
                            os.path.join(HERE, "node_rpc.py"), "--stubs", self.stubs] +
                           [str(a) for a in args], capture_output=True, text=True,
                           timeout=timeout)
        try:
            out = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            out = {"stdout": r.stdout, "stderr": r.stderr[-2000:]}
        return r.returncode == 0, out

    def wait_registered(self, decode_host, kv_endpoint):
        ok, out = self.rpc("wait-nodes", f"{ROUTER_IP}:{ROUTER_PORT}", 1, 1, 60)
        dead = self.dead()
        if dead:
            raise Failure("\n".join(dead))
        check(ok, f"prefill and decode nodes registered with the router across the links: {out}")
        decode = [n for n in out["nodes"] if n["role"] == "NODE_ROLE_DECODE"][0]
        want = {"address": f"{decode_host}:{DECODE_PORT}", "kv_endpoint": kv_endpoint}
        got = {k: decode[k] for k in want}
        check(got == want, f"decode node announces {got} (want {want})")

    def wait_idle(self, name, ip, port, what):
        ok, load = self.rpc("wait-idle", f"{ip}:{port}", 30)
        check(ok, f"{name}: {what} (load {load})")

    def generate(self, timeout=180):
        """One greedy request through the router, from the router's namespace."""
        r = subprocess.run(["ip", "netns", "exec", self.topo.router, self.args.pdserve, "client",
                            "--addr", f"{ROUTER_IP}:{ROUTER_PORT}", "--prompt", PROMPT,
                            "--temperature", "0", "--max-tokens", str(MAX_TOKENS), "--json",
                            "--timeout", "120"], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            return None, r.stderr.strip()
        return json.loads(r.stdout), ""


# -------------------------------------------------------------------- checks

def expected_output(args):
    """Greedy tokens of the same prompt in one process (no servers)."""
    r = subprocess.run([args.pdserve, "generate", "--model", args.model, "--prompt", PROMPT,
                        "--temperature", "0", "--max-tokens", str(MAX_TOKENS), "--threads", "1",
                        "--print-token-ids"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise Failure(f"pdserve generate failed: {r.stderr}")
    ids = json.loads(r.stderr.strip().splitlines()[-1])
    text = r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout
    return text, ids["token_ids"]


def stage_ms(result, name):
    return sum(s["duration_ns"] for s in result["timings"]["stages"] if s["stage"] == name) / 1e6


class Table:
    def __init__(self):
        self.rows = []
        self.prompt_tokens = 0

    def add(self, condition, results):
        self.prompt_tokens = results[0]["usage"]["prompt_tokens"]
        def med(values):
            return statistics.median(values) if values else float("nan")
        self.rows.append((condition, len(results),
                          med([r["timings"]["ttft_ns"] / 1e6 for r in results]),
                          med([stage_ms(r, "decode.wait_kv") for r in results]),
                          med([r["timings"]["e2e_ns"] / 1e6 for r in results])))

    def render(self):
        lines = ["| condition | requests | TTFT ms | decode.wait_kv ms | e2e ms |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for c, n, ttft, wait, e2e in self.rows:
            lines.append(f"| {c} | {n} | {ttft:.1f} | {wait:.1f} | {e2e:.1f} |")
        return "\n".join(lines)


def run_condition(cluster, table, expected, condition, n):
    text, ids = expected
    results = []
    for i in range(n):
        got, err = cluster.generate()
        check(got is not None, f"[{condition}] request {i + 1} completed {err}")
        check(got["token_ids"] == ids and got["text"] == text,
              f"[{condition}] greedy tokens match pdserve generate ({got['token_ids']})")
        check(got["prefill_node"] == "prefill-0" and got["decode_node"] == "decode-0",
              f"[{condition}] served by prefill-0 and decode-0")
        results.append(got)
    table.add(condition, results)
    return results


def cut_and_recover(cluster, relay, table, expected, link, direction, at, recovery):
    """Cuts `relay`'s connection after `at` bytes of `direction`. The router
    recovers the request on a new connection: a cut before token #1 reached
    the client is retried (`recovery` "router.retry"), one after it is
    migrated ("router.migrate": the same node continues from the tokens the
    client has, the only decode node here); `recovery` lists the stages
    that may show. A KV cut halfway through the bytes lands before or after
    token #1 reached the client depending on the CPU's prefill speed against
    the relay's pace (on a Zen 4 it lands after: the prefill reply carries
    token #1 before half the KV has crossed), so it accepts either. The request completes with the
    same tokens and its timeline shows the recovery stage. No KV block stays
    taken, and the next request succeeds over a new connection."""
    connections = relay.stats()["connections"]
    relay.cmd(f"cut {at} {direction}")
    got, err = cluster.generate()
    check(got is not None, f"[{link} cut] the request is recovered and completes {err}")
    check(got["token_ids"] == expected[1] and got["text"] == expected[0],
          f"[{link} cut] the recovered request gives the same tokens ({got['token_ids']})")
    stages = [s["stage"] for s in got["timings"]["stages"]]
    check(any(s in recovery for s in stages),
          f"[{link} cut] its timeline shows one of {recovery} ({sorted(set(stages))})")
    check(relay.stats()["cuts"] == 1, f"[{link} cut] the cut happened during the request")
    cluster.wait_idle("decode-0", DECODE_IP, DECODE_PORT, "every KV block is free again")
    cluster.wait_idle("prefill-0", PREFILL_IP, PREFILL_PORT, "nothing left on the prefill node")
    relay.cmd("pass")
    run_condition(cluster, table, expected, f"after the {link} connection was cut", 1)
    check(relay.stats()["connections"] > connections,
          f"[{link} cut] the next request went over a new connection")


def scenario(args, topo, cluster, table):
    expected = expected_output(args)
    print(f"expected (pdserve generate): {expected[0]!r} {expected[1]}", flush=True)

    topo.create()
    print(f"namespaces: {', '.join(topo.all())}", flush=True)
    cluster.start_router()
    cluster.start_prefill()
    cluster.start_decode()
    cluster.wait_registered(DECODE_IP, f"{DECODE_IP}:{KV_PORT}")

    # Direct links: KV prefill -> decode over p-d, RPCs over r-p and r-d.
    run_condition(cluster, Table(), expected, "warm-up", 1)
    run_condition(cluster, table, expected, "direct links, unimpaired", N)
    sh("ip", "netns", "exec", topo.prefill, "tc", "qdisc", "add", "dev", "p-d", "root", "tbf",
       "rate", "50mbit", "burst", "64kb", "latency", "100ms")
    run_condition(cluster, table, expected, "p->d link capped at 50 Mbit/s (tc tbf)", N)
    sh("ip", "netns", "exec", topo.prefill, "tc", "qdisc", "del", "dev", "p-d", "root")

    # Through relays on the decode host: the decode node announces the KV
    # relay (--kv-advertise) and, as its own address, a second host address
    # where the RPC relay listens (--advertise-host).
    cluster.stop("decode-0")
    kv = Relay("kv_relay", topo.decode, f"{DECODE_IP}:{KV_RELAY_PORT}", f"{DECODE_IP}:{KV_PORT}",
               args.out_dir)
    cluster.procs[kv.name] = kv
    rpc = Relay("rpc_relay", topo.decode, f"{DECODE_RELAY_IP}:{DECODE_PORT}",
                f"{DECODE_IP}:{DECODE_PORT}", args.out_dir)
    cluster.procs[rpc.name] = rpc
    cluster.start_decode(advertise_host=DECODE_RELAY_IP,
                         kv_advertise=f"{DECODE_IP}:{KV_RELAY_PORT}")
    cluster.wait_registered(DECODE_RELAY_IP, f"{DECODE_IP}:{KV_RELAY_PORT}")

    run_condition(cluster, Table(), expected, "warm-up via relays", 1)
    kv.cmd("pass")
    rpc.cmd("pass")
    run_condition(cluster, table, expected, "via relays, pass-through", N)
    kv_bytes = kv.stats()["up"] // N
    stream_bytes = rpc.stats()["down"] // N
    check(kv_bytes > 100_000, f"KV crossed the KV relay: {kv_bytes} bytes per request")
    check(stream_bytes > 0,
          f"the token stream crossed the RPC relay: {stream_bytes} bytes per request")

    kv.cmd(f"delay {DELAY_MS}")
    run_condition(cluster, table, expected, f"KV link +{DELAY_MS} ms per chunk each way", N)
    kv.cmd("pass")
    kv.cmd(f"stall {STALL_S} {kv_bytes // 2} up")
    run_condition(cluster, table, expected, f"KV link stalls {STALL_S} s mid-transfer", 1)
    check(kv.stats()["stalls"] == 1, "the KV link stalled during the transfer")
    cut_and_recover(cluster, kv, table, expected, "KV", "up", kv_bytes // 2,
                    ("router.retry", "router.migrate"))

    rpc.cmd(f"delay {DELAY_MS}")
    run_condition(cluster, table, expected, f"router<->decode +{DELAY_MS} ms per chunk each way",
                  N)
    rpc.cmd("pass")
    rpc.cmd(f"stall {STALL_S} {stream_bytes // 2} down")
    run_condition(cluster, table, expected, f"router<->decode stalls {STALL_S} s mid-stream", 1)
    check(rpc.stats()["stalls"] == 1, "the router<->decode link stalled during the stream")
    cut_and_recover(cluster, rpc, table, expected, "router<->decode", "down", stream_bytes // 2,
                    ("router.migrate",))
    check(not cluster.dead(), "router, nodes and relays still running")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pdserve", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()

    if not os.path.exists(args.model):
        skip(f"no model at {args.model} (run scripts/fetch_model.sh)")
    if os.geteuid() != 0:
        skip("needs root (network namespaces, veth, tc)")
    if not shutil.which("ip") or not shutil.which("tc"):
        skip("iproute2 (ip, tc) not installed")
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError as e:
        skip(f"{e}: pip install grpcio grpcio-tools")
    probe = f"{PREFIX}{os.getpid()}-probe"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        skip(f"cannot create network namespaces (CAP_NET_ADMIN?): {r.stderr.strip()}")
    r = subprocess.run(["ip", "netns", "exec", probe, "true"], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if r.returncode != 0:
        skip(f"`ip netns exec` does not work here: {r.stderr.strip()}")

    stubs = os.path.join(args.out_dir, "stubs")
    os.makedirs(stubs, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{args.proto_dir}",
                        f"--python_out={stubs}", f"--grpc_python_out={stubs}",
                        "pdserve/v1/generate.proto", "pdserve/v1/node.proto"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"FAIL: protoc: {r.stderr}", file=sys.stderr)
        return 1

    def interrupted(sig, _frame):
        raise Interrupted(f"signal {sig}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    clean_stale()
    topo = Topology()
    cluster = Cluster(args, topo)
    table = Table()
    rc = 0
    try:
        scenario(args, topo, cluster, table)
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        for name, proc in cluster.procs.items():
            print(f"--- {name} log (tail):\n{proc.tail()}", file=sys.stderr)
        rc = 1
    except Interrupted as e:
        print(f"interrupted by {e}: cleaning up", file=sys.stderr)
        rc = 1
    finally:
        # No second signal may skip the cleanup.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop_all()
        topo.destroy()
        left = [ns for ns in our_netns() if ns.startswith(f"{PREFIX}{os.getpid()}-")]
        if left:
            print(f"FAIL: namespaces left behind: {left}", file=sys.stderr)
            rc = 1
    if table.rows:
        rendered = table.render()
        print(f"\nTTFT and e2e per condition (median; prompt {table.prompt_tokens} tokens, "
              f"{MAX_TOKENS} generated, --threads 1):\n{rendered}", flush=True)
        with open(os.path.join(args.out_dir, "timings.md"), "w") as f:
            f.write(rendered + "\n")
    print("PASS" if rc == 0 else "FAILED", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
