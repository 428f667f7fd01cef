#!/usr/bin/env python3
"""TLS, mutual TLS and the API key on real processes. Certificates are made
with `openssl` at test time: a cluster CA (router and node certificates), and
a second, untrusted CA. Checks:
  - the router serves HTTPS (openai client over https with the CA) and gRPC
    over TLS; plaintext to either port fails;
  - router <-> nodes run mutual TLS: a node with a certificate from the
    wrong CA cannot register; a gRPC client with no certificate, or a wrong
    one, is refused by a node;
  - the API key guards gRPC: no/wrong `authorization` metadata is
    UNAUTHENTICATED, health answers without it.
Exit 0: pass; 77: skipped (no model, openai or grpcio missing)."""
import os
import ssl
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdserve_procs import Cluster, check, common_args, fail, skip, stop_all, wait_for  # noqa: E402

KEY = "sk-tls-456"
MODEL = "SmolLM2-135M-Instruct.Q4_1"


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"openssl {' '.join(args)}: {r.stderr}")


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def make_cert(d, ca, name):
    # SANs cover loopback and the cluster-internal name used with --tls-server-name.
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:pdserve.internal\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)


def tls_flags(d, name, ca="ca"):
    return ["--tls-cert", f"{d}/{name}.pem", "--tls-key", f"{d}/{name}.key", "--tls-ca",
            f"{d}/{ca}.pem"]


def main():
    args = common_args(sys.argv[1:])
    try:
        import grpc
        import openai
        try:
            import httpx
        except ImportError:  # newer openai releases ship it as httpx2
            import httpx2 as httpx
    except ImportError as e:
        skip(f"missing Python package: {e}")
    d = os.path.join(args.out_dir, "security")
    os.makedirs(d, exist_ok=True)
    make_ca(d, "ca")
    make_ca(d, "evil-ca")
    for name in ("router", "node"):
        make_cert(d, "ca", name)
    make_cert(d, "evil-ca", "evil")

    # Every node shows a certificate from the cluster CA; the router too.
    c = Cluster(args.pdserve, args.model, os.path.join(d, "logs"), extra=["--api-key", KEY],
                router_extra=tls_flags(d, "router"), node_extra=tls_flags(d, "node"))
    c.wait_ready()
    check(True, "prefill and decode registered over mutual TLS")

    http = httpx.Client(verify=f"{d}/ca.pem")
    client = openai.OpenAI(base_url=c.url("/v1", "https"), api_key=KEY, max_retries=0,
                           http_client=http)
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                  temperature=0)
    check("Paris" in r.choices[0].text, "completion over HTTPS (openai client, our CA)")
    text = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True)
        if ch.choices)
    check(len(text) > 0, "streamed chat over HTTPS")
    try:
        urllib.request.urlopen(c.url("/health"), timeout=5)
        fail("plain HTTP to the HTTPS port answered")
    except Exception:
        check(True, "plain HTTP to the HTTPS port fails")
    ctx = ssl.create_default_context(cafile=f"{d}/evil-ca.pem")
    try:
        urllib.request.urlopen(c.url("/health", "https"), timeout=5, context=ctx)
        fail("a client trusting another CA accepted the router's certificate")
    except Exception:
        check(True, "the router's certificate does not verify against another CA")

    # gRPC: generic calls, no stubs needed (GetModelInfo's request is empty).
    def call(port, method, creds=None, key=None):
        target = f"127.0.0.1:{port}"
        ch = (grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target))
        md = [("authorization", f"Bearer {key}")] if key else None
        try:
            grpc.channel_ready_future(ch).result(timeout=5)
        except grpc.FutureTimeoutError:
            return "no channel"
        fn = ch.unary_unary(method, request_serializer=lambda x: x, response_deserializer=lambda x: x)
        try:
            fn(b"", timeout=5, metadata=md)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()
        finally:
            ch.close()

    ca = open(f"{d}/ca.pem", "rb").read()
    router_creds = grpc.ssl_channel_credentials(root_certificates=ca)
    info = "/pdserve.v1.Generation/GetModelInfo"
    health = "/grpc.health.v1.Health/Check"
    check(call(c.router_port, info, router_creds, KEY) == grpc.StatusCode.OK,
          "gRPC over TLS with the API key")
    check(call(c.router_port, info, router_creds) == grpc.StatusCode.UNAUTHENTICATED,
          "gRPC without the API key: UNAUTHENTICATED")
    check(call(c.router_port, info, router_creds, "wrong") == grpc.StatusCode.UNAUTHENTICATED,
          "gRPC with a wrong API key: UNAUTHENTICATED")
    check(call(c.router_port, health, router_creds) == grpc.StatusCode.OK,
          "gRPC health needs no key")
    check(call(c.router_port, "/pdserve.v1.Registry/ListNodes", router_creds, KEY)
          == grpc.StatusCode.UNAUTHENTICATED,
          "the registry refuses a caller without a cluster certificate")
    check(call(c.router_port, info, None, KEY) != grpc.StatusCode.OK,
          "plaintext gRPC to the TLS port fails")

    node = c.nodes["decode-0"]
    node_load = "/pdserve.v1.Node/GetLoad"
    good = grpc.ssl_channel_credentials(root_certificates=ca,
                                        private_key=open(f"{d}/node.key", "rb").read(),
                                        certificate_chain=open(f"{d}/node.pem", "rb").read())
    evil = grpc.ssl_channel_credentials(root_certificates=ca,
                                        private_key=open(f"{d}/evil.key", "rb").read(),
                                        certificate_chain=open(f"{d}/evil.pem", "rb").read())
    check(call(node.port, node_load, good, KEY) == grpc.StatusCode.OK,
          "a node answers a client with a cluster certificate")
    check(call(node.port, node_load, router_creds, KEY) != grpc.StatusCode.OK,
          "a node refuses a client with no certificate")
    check(call(node.port, node_load, evil, KEY) != grpc.StatusCode.OK,
          "a node refuses a client whose certificate another CA signed")
    check(call(node.port, node_load, good) == grpc.StatusCode.UNAUTHENTICATED,
          "a node wants the API key too")

    # A node whose certificate comes from the wrong CA never registers.
    before = len(c.nodes)
    rogue = c.add_node("decode", 9, node_extra=["--tls-cert", f"{d}/evil.pem", "--tls-key",
                                                f"{d}/evil.key", "--tls-ca", f"{d}/ca.pem"])
    time.sleep(4)
    check(rogue.p.poll() is None, "the wrong-CA node runs (and keeps trying to register)")
    listed = call(c.router_port, "/pdserve.v1.Registry/ListNodes", good, KEY)
    check(listed == grpc.StatusCode.OK, "ListNodes with a cluster certificate")
    ch = grpc.secure_channel(f"127.0.0.1:{c.router_port}", good)
    raw = ch.unary_unary("/pdserve.v1.Registry/ListNodes", request_serializer=lambda x: x,
                         response_deserializer=lambda x: x)(b"", timeout=5,
                                                            metadata=[("authorization", f"Bearer {KEY}")])
    ch.close()
    check(b"decode-9" not in raw and b"decode-0" in raw and before == 2 and "unreachable" in rogue.tail(),
          "a node with a wrong-CA certificate did not register")
    rogue.signal(15)
    stop_all()
    print("security test: all checks passed")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
