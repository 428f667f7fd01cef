#!/usr/bin/env python3
"""The official `openai` Python package against the router's HTTP API, on a
real router + prefill + decode cluster, plus the inputs clients get wrong:
  - completions and chat, streaming (include_usage) and not; /v1/models;
  - errors in OpenAI's envelope: wrong key (401), unknown model (404),
    n=17 and malformed JSON (400), oversized body (413), no node (503),
    full queue (429 with Retry-After);
  - a client that disconnects mid-stream, and one that never reads its
    stream, cancel their requests on both nodes (nothing stays running).
Exit 0: pass; 77: skipped (no model, no openai package)."""
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdserve_procs import (Cluster, Proc, check, common_args, fail, free_port, http_status,  # noqa: E402
                           metric, skip, stop_all, wait_for)

KEY = "sk-test-123"
MODEL = "SmolLM2-135M-Instruct.Q4_1"
AUTH = {"Authorization": f"Bearer {KEY}"}


def post(url, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def running_on_nodes(cluster):
    return sum(metric(f"http://127.0.0.1:{n.metrics_port}/metrics", "pdserve:num_requests_running",
                      headers=AUTH) for n in cluster.nodes.values())


def cancelled(cluster):
    return metric(f"http://127.0.0.1:{cluster.metrics_port}/metrics", "pdserve:request_errors_total",
                  'kind="cancelled"', headers=AUTH)


def raw_stream_request(port, body):  # noqa: D401
    """Sends a streaming request on a raw socket and returns the socket."""
    payload = json.dumps(body).encode()
    s = socket.socket()
    # A small receive window (set before connecting) so a client that stops
    # reading backs up into the server quickly.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
              + payload)
    return s


def main():
    args = common_args(sys.argv[1:])
    try:
        import openai
    except ImportError:
        skip("the openai package is not installed (scripts/install_deps.sh)")

    c = Cluster(args.pdserve, args.model, os.path.join(args.out_dir, "openai"),
                extra=["--api-key", KEY],
                router_extra=["--http-max-body-bytes", "65536", "--http-stream-buffer-bytes", "4096"])
    c.wait_ready()
    client = openai.OpenAI(base_url=c.url("/v1"), api_key=KEY, max_retries=0)

    models = client.models.list()
    check([m.id for m in models.data] == [MODEL], f"/v1/models lists {MODEL}")

    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                  temperature=0)
    check(r.object == "text_completion" and "Paris" in r.choices[0].text,
          f"completion (non-streaming) says Paris: {r.choices[0].text!r}")
    check(r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length",
          "completion usage and finish_reason")

    text, last = "", None
    for chunk in client.completions.create(model=MODEL, prompt="The capital of France is",
                                           max_tokens=8, temperature=0, stream=True):
        if chunk.choices:
            text += chunk.choices[0].text
            last = chunk.choices[0].finish_reason or last
    check(text == r.choices[0].text and last == "length",
          "streamed completion equals the non-streamed one (greedy)")

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, temperature=0, logprobs=True, top_logprobs=2)
    msg = chat.choices[0].message
    check(chat.object == "chat.completion" and msg.role == "assistant" and msg.content
          and chat.usage.completion_tokens == 12,
          f"chat (non-streaming) answers: {msg.content!r}")
    check(len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
          and len(chat.choices[0].logprobs.content[0].top_logprobs) == 2,
          "chat logprobs: one entry per token, two alternatives each")

    deltas, usage, roles = [], None, []
    for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            if ch.delta.content:
                deltas.append(ch.delta.content)
    check(roles == ["assistant"] and "".join(deltas) == msg.content,
          "streamed chat: one role delta, same text as non-streamed")
    check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens
          and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
          "streamed chat ends with a usage chunk (include_usage)")

    # Errors, through the official client's exception types.
    try:
        openai.OpenAI(base_url=c.url("/v1"), api_key="wrong", max_retries=0).models.list()
        fail("a wrong API key was accepted")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "wrong API key: 401 AuthenticationError")
    try:
        client.completions.create(model="gpt-9", prompt="x")
        fail("an unknown model was accepted")
    except openai.NotFoundError as e:
        check(e.body.get("code") == "model_not_found", "unknown model: 404 model_not_found")
    try:
        client.completions.create(model=MODEL, prompt="x", n=17)
        fail("n=17 was accepted")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "n" and "16" in e.body.get("message", ""),
              f"n=17: 400 naming the parameter and the bound: {e.body.get('message')}")

    status, _, body = post(c.url("/v1/completions"), b"{not json", AUTH)
    check(status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error",
          "malformed JSON: 400 in the error envelope")
    status, _, body = post(c.url("/v1/completions"), {"model": MODEL, "prompt": "x" * 70000}, AUTH)
    check(status == 413 and json.loads(body)["error"]["code"] == "request_too_large",
          "oversized body: 413 in the error envelope")
    status, _, _ = post(c.url("/v1/completions"), {"model": MODEL, "prompt": "x"})
    check(status == 401, "no API key: 401")
    check(http_status(c.url("/health")) == 200 and http_status(c.url("/ready")) == 200,
          "/health and /ready need no key")
    check(http_status(f"http://127.0.0.1:{c.metrics_port}/metrics") == 401,
          "/metrics needs the key")

    # A client that disconnects mid-stream: the request is aborted on both nodes.
    before = cancelled(c)
    long_req = {"model": MODEL, "prompt": "Count: 1, 2, 3,", "max_tokens": 2000,
                "ignore_eos": True, "stream": True}
    s = raw_stream_request(c.http_port, long_req)
    s.recv(1024)  # headers and the first tokens are flowing
    wait_for(lambda: running_on_nodes(c) > 0, 30, "the request to run on a node")
    s.close()
    wait_for(lambda: cancelled(c) > before, 30, "the router to cancel the disconnected request")
    wait_for(lambda: running_on_nodes(c) == 0, 30, "the nodes to drop the disconnected request")
    check(True, "client disconnect cancels the request on both nodes")

    # A client that never reads: the 4 KiB stream bound fills, the request is cancelled.
    before = cancelled(c)
    s = raw_stream_request(c.http_port, long_req)
    wait_for(lambda: cancelled(c) > before, 120, "the router to cancel the stalled reader")
    wait_for(lambda: running_on_nodes(c) == 0, 30, "the nodes to drop the stalled request")
    s.close()
    check(True, "a client that stops reading is cancelled (bounded buffer), nothing keeps running")

    # 429: a second router over the same nodes (static) with no queue room.
    port, http = free_port(), free_port()
    nodes = ",".join(f"127.0.0.1:{n.port}" for n in c.nodes.values())
    full = Proc("router-full", [args.pdserve, "router", "--model", args.model, "--listen",
                                f"127.0.0.1:{port}", "--http-port", str(http), "--nodes", nodes,
                                "--max-queue", "0", "--api-key", KEY, "--log-level", "warning"],
                c.log_dir)
    wait_for(lambda: http_status(f"http://127.0.0.1:{http}/ready") == 200, 30,
             "the static-node router to see its nodes")
    # Requests that fit run at once; fill the decode node's KV cache with one
    # long request so the next must wait, and there is no room to wait.
    status, _, body = post(f"http://127.0.0.1:{http}/v1/completions",
                           {"model": MODEL, "prompt": "x", "max_tokens": 8000}, AUTH)
    msg = json.loads(body)["error"]["message"]  # "... needs N KV blocks; the largest node holds M"
    check(status == 400 and "KV blocks" in msg, f"a request larger than any node: 400 ({msg})")
    needed, largest = [int(w) for w in msg.replace(";", " ").split() if w.isdigit()][-2:]
    block = round(8000 / needed)
    big = int(largest * block * 0.6)
    hog = raw_stream_request(http, {**long_req, "max_tokens": big})
    hog.recv(256)
    status, headers, body = post(f"http://127.0.0.1:{http}/v1/completions",
                                 {"model": MODEL, "prompt": "x", "max_tokens": big}, AUTH)
    hog.close()
    check(status == 429 and "Retry-After" in headers
          and json.loads(body)["error"]["type"] == "rate_limit_error",
          "full queue: 429 with Retry-After")
    full.signal(15)
    full.wait(10)

    # 503: a router that has no node at all.
    port, http = free_port(), free_port()
    empty = Proc("router-empty", [args.pdserve, "router", "--model", args.model, "--listen",
                                  f"127.0.0.1:{port}", "--http-port", str(http),
                                  "--log-level", "warning"], c.log_dir)
    wait_for(lambda: http_status(f"http://127.0.0.1:{http}/health") == 200, 30, "the empty router")
    status, _, body = post(f"http://127.0.0.1:{http}/v1/chat/completions",
                           {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    check(status == 503 and json.loads(body)["error"]["code"] == "service_unavailable",
          "no node: 503")
    check(http_status(f"http://127.0.0.1:{http}/ready") == 503, "empty router is not ready")
    stop_all()
    print("openai client test: all checks passed")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
