#!/usr/bin/env python3
"""Registry / Node RPCs for netns_test.py, run inside a namespace
(`ip netns exec NS python3 node_rpc.py ...`): the test's own process stays in
the root namespace, which cannot reach the namespaces' addresses.

  node_rpc.py --stubs DIR wait-nodes ROUTER PREFILL DECODE TIMEOUT_S
      until the router lists that many prefill and decode nodes; prints them
  node_rpc.py --stubs DIR wait-idle NODE TIMEOUT_S
      until the node holds no request and every KV block is free; prints its load
Prints one JSON object; exit 0 when the condition held, 1 otherwise.
"""
import argparse
import json
import sys
import time


def load_json(load):
    return {"running": load.running, "waiting": load.waiting, "awaiting_kv": load.awaiting_kv,
            "free_kv_blocks": load.free_kv_blocks, "total_kv_blocks": load.total_kv_blocks}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stubs", required=True)
    ap.add_argument("cmd", choices=["wait-nodes", "wait-idle"])
    ap.add_argument("rest", nargs="*")
    args = ap.parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    from pdserve.v1 import node_pb2, node_pb2_grpc

    channel = grpc.insecure_channel(args.rest[0])
    last, ok = {}, False
    if args.cmd == "wait-nodes":
        want = {node_pb2.NODE_ROLE_PREFILL: int(args.rest[1]),
                node_pb2.NODE_ROLE_DECODE: int(args.rest[2])}
        deadline = time.time() + float(args.rest[3])
        stub = node_pb2_grpc.RegistryStub(channel)
        while time.time() < deadline:
            try:
                nodes = stub.ListNodes(node_pb2.ListNodesRequest(), timeout=5).nodes
                last = {"nodes": [{"node_id": n.info.node_id,
                                   "role": node_pb2.NodeRole.Name(n.info.role),
                                   "address": n.info.address,
                                   "kv_endpoint": n.info.kv_endpoint} for n in nodes]}
                have = {r: sum(1 for n in nodes if n.info.role == r) for r in want}
                if have == want:
                    ok = True
                    break
            except grpc.RpcError as e:
                last = {"error": f"{e.code().name}: {e.details()}"}
            time.sleep(0.2)
    else:
        deadline = time.time() + float(args.rest[1])
        stub = node_pb2_grpc.NodeStub(channel)
        while time.time() < deadline:
            try:
                last = load_json(stub.GetLoad(node_pb2.GetLoadRequest(), timeout=5))
                if (last["running"] == 0 and last["waiting"] == 0 and last["awaiting_kv"] == 0
                        and last["free_kv_blocks"] == last["total_kv_blocks"]):
                    ok = True
                    break
            except grpc.RpcError as e:
                last = {"error": f"{e.code().name}: {e.details()}"}
            time.sleep(0.1)
    print(json.dumps(last))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
