#!/usr/bin/env python3
"""A client we did not write talks to `pdserve cluster`.

Generates Python gRPC stubs from proto/ with grpc_tools.protoc into the build
tree, starts `pdserve cluster --prefill 1 --decode 1` on free loopback ports,
then checks, as an operator or a client author would:
  - server reflection lists the services on the router and on a node, and
    serves the descriptors of pdserve.v1.Generation;
  - gRPC health answers SERVING on the router and on every node;
  - Generation.Generate streams a greedy answer ("Paris") with usage that
    matches the streamed tokens, and a bad request is INVALID_ARGUMENT;
  - SIGTERM stops the whole cluster cleanly (exit 0, no process left).
Exit 0: pass; 77: skipped (no model); anything else: failure.
"""
import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

SKIP = 77


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
    print(f"ok: {msg}")


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pick_cluster_port():
    # `pdserve cluster --port P` uses P (router), P+1.. (nodes), P+100.. (KV).
    for _ in range(200):
        p = random.randint(20000, 40000)
        if all(port_free(q) for q in (p, p + 1, p + 2, p + 100)):
            return p
    fail("no free port block")


def generate_stubs(proto_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    protos = ["pdserve/v1/generate.proto", "pdserve/v1/node.proto"]
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out_dir}",
           f"--grpc_python_out={out_dir}"] + protos
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"protoc failed: {r.stderr}")
    sys.path.insert(0, out_dir)


def wait_ready(proc, timeout_s, lines):
    """Reads the cluster's stdout until 'cluster ready' (True) or exit/timeout."""
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if "cluster ready" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if ready.wait(0.1):
            return True
        if proc.poll() is not None:
            return False
    return False


def list_services(grpc, channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    resp = next(iter(stub.ServerReflectionInfo(iter([req]), timeout=10)))
    return {s.name for s in resp.list_services_response.service}


def describes(grpc, channel, symbol):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    req = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    resp = next(iter(stub.ServerReflectionInfo(iter([req]), timeout=10)))
    return len(resp.file_descriptor_response.file_descriptor_proto) > 0


def health(grpc, channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    stub = health_pb2_grpc.HealthStub(channel)
    r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pdserve", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()

    if not os.path.exists(args.model):
        print("SKIP: model absent: run scripts/fetch_model.sh")
        sys.exit(SKIP)
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
        import grpc_reflection  # noqa: F401
        import grpc_health  # noqa: F401
    except ImportError as e:
        fail(f"{e}: run scripts/install_deps.sh (grpcio, grpcio-tools, grpcio-reflection, "
             "grpcio-health-checking)")
    import grpc

    generate_stubs(args.proto_dir, args.out_dir)
    from pdserve.v1 import generate_pb2, generate_pb2_grpc, node_pb2, node_pb2_grpc

    port = pick_cluster_port()
    log_path = os.path.join(args.out_dir, "cluster.log")
    log = open(log_path, "w")
    # The operator's node token (by environment, never argv): the Registry
    # answers only to it.
    token = "operator-node-token-%016x" % random.getrandbits(64)
    proc = subprocess.Popen(
        [args.pdserve, "cluster", "--model", args.model, "--prefill", "1", "--decode", "1",
         "--port", str(port), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        env={**os.environ, "PDSERVE_NODE_TOKEN": token})
    lines = []
    try:
        if not wait_ready(proc, 120, lines):
            log.flush()
            fail("cluster did not become ready:\n" + "".join(lines) + open(log_path).read()[-4000:])
        router = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(router)

        services = list_services(grpc, channel)
        for s in ("pdserve.v1.Generation", "pdserve.v1.Registry", "grpc.health.v1.Health"):
            check(s in services, f"router reflection lists {s} (got {sorted(services)})")
        check(describes(grpc, channel, "pdserve.v1.Generation"),
              "router reflection serves the descriptor of pdserve.v1.Generation")
        check(health(grpc, channel) == "SERVING", "router health is SERVING")

        registry = node_pb2_grpc.RegistryStub(channel)
        try:
            registry.ListNodes(node_pb2.ListNodesRequest(), timeout=10)
            fail("the Registry answered a caller without the node token")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAUTHENTICATED,
                  f"Registry without the node token: UNAUTHENTICATED (got {e.code()})")
        nodes = registry.ListNodes(node_pb2.ListNodesRequest(), timeout=10,
                                   metadata=[("authorization", f"Bearer {token}")]).nodes
        check(len(nodes) == 2, f"two nodes registered ({[n.info.node_id for n in nodes]})")
        for n in nodes:
            nc = grpc.insecure_channel(n.info.address)
            check(health(grpc, nc) == "SERVING", f"{n.info.node_id} health is SERVING")
            check("pdserve.v1.Node" in list_services(grpc, nc),
                  f"{n.info.node_id} reflection lists pdserve.v1.Node")
            nc.close()

        gen = generate_pb2_grpc.GenerationStub(channel)
        req = generate_pb2.GenerateRequest(
            text="The capital of France is",
            sampling=generate_pb2.SamplingParams(temperature=0.0),
            stop=generate_pb2.StopParams(max_tokens=8))
        text, ids, complete, n_chunks = "", [], None, 0
        for ev in gen.Generate(req, timeout=120):
            kind = ev.WhichOneof("event")
            if kind == "chunk":
                n_chunks += 1
                text += ev.chunk.text
                ids.extend(ev.chunk.token_ids)
            elif kind == "complete":
                complete = ev.complete
            elif kind == "error":
                fail(f"stream error: {ev.error}")
        print(f"streamed {n_chunks} chunks: {text!r}")
        check(n_chunks >= 2, "tokens arrive as a stream of chunks")
        check("Paris" in text, "greedy answer mentions Paris")
        check(complete is not None, "stream ends with complete")
        check(complete.usage.completion_tokens == len(ids),
              f"usage.completion_tokens {complete.usage.completion_tokens} == {len(ids)} ids streamed")
        check(complete.usage.prompt_tokens > 0, "usage.prompt_tokens set")
        check(complete.finish_reason in (generate_pb2.FINISH_REASON_STOP,
                                         generate_pb2.FINISH_REASON_LENGTH), "finish reason set")
        stages = {s.stage for s in complete.timings.stages}
        check({"router.queue", "prefill.compute", "decode.generate"} <= stages,
              f"timings carry the stages ({sorted(stages)})")

        try:
            list(gen.Generate(generate_pb2.GenerateRequest(text=""), timeout=30))
            fail("an empty prompt was accepted")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                  f"empty prompt is INVALID_ARGUMENT ({e.code()}: {e.details()})")
        channel.close()

        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            fail("cluster did not stop within 60 s of SIGTERM")
        check(rc == 0, f"cluster exits 0 on SIGTERM (got {rc})")
        time.sleep(0.2)
        try:
            os.killpg(proc.pid, 0)
            fail("processes of the cluster are still running after it exited")
        except ProcessLookupError:
            print("ok: no cluster process left")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
    print("grpc_client_test: all checks passed")


if __name__ == "__main__":
    main()
