#!/usr/bin/env python3
"""Graceful drain with real processes. A decode node gets SIGTERM while it
streams a request:
  - it reports NOT_SERVING and leaves the router at once (the router's
    /ready turns 503 and a new request is refused with 503: no request is
    sent to a draining node);
  - the request in flight finishes completely (all tokens, then [DONE]);
  - the process exits 0 after it, well within --drain-timeout.
Then a node with --drain-timeout 1 and a request too long to finish: the
process still exits within about a second of the timeout, and the client's
stream ends without [DONE] (cut, never mistaken for a whole answer).
Exit 0: pass; 77: skipped (no model)."""
import http.client
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdserve_procs import Cluster, check, common_args, http_status, stop_all, wait_for  # noqa: E402

MODEL = "SmolLM2-135M-Instruct.Q4_1"


class Stream(threading.Thread):
    """Reads one streaming completion; records chunks, finish reason, [DONE]."""

    def __init__(self, port, max_tokens):
        super().__init__(daemon=True)
        self.port, self.max_tokens = port, max_tokens
        self.tokens, self.finish, self.done, self.usage, self.status = 0, None, False, None, None

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        body = {"model": MODEL, "prompt": "Count: 1, 2, 3,", "max_tokens": self.max_tokens,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        self.status = resp.status
        try:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    self.done = True
                    continue
                event = json.loads(data)
                if event.get("usage"):
                    self.usage = event["usage"]
                for ch in event.get("choices", []):
                    self.tokens += 1
                    self.finish = ch.get("finish_reason") or self.finish
        except (http.client.HTTPException, OSError):
            pass


def main():
    args = common_args(sys.argv[1:])
    c = Cluster(args.pdserve, args.model, os.path.join(args.out_dir, "drain"),
                node_extra=["--drain-timeout", "60"])
    c.wait_ready()
    decode = c.nodes["decode-0"]

    s = Stream(c.http_port, 150)
    s.start()
    wait_for(lambda: s.tokens >= 5, 60, "tokens to stream")
    t0 = time.time()
    decode.signal(signal.SIGTERM)
    wait_for(lambda: http_status(f"http://127.0.0.1:{c.metrics_port}/ready") == 503, 10,
             "the router to drop the draining decode node")
    check(decode.p.poll() is None, "the draining node is still running its request")
    conn = http.client.HTTPConnection("127.0.0.1", c.http_port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": "x"}),
                 {"Content-Type": "application/json"})
    check(conn.getresponse().status == 503, "a new request is not sent to the draining node (503)")
    s.join(120)
    check(s.done and s.finish == "length" and s.usage and s.usage["completion_tokens"] == 150,
          f"the request in flight finished whole ({s.usage}, [DONE]={s.done})")
    rc = decode.wait(30)
    check(rc == 0, f"the drained node exited 0 (after {time.time() - t0:.1f} s)")
    del c.nodes["decode-0"]

    # A drain that runs out of time: bounded, and the cut stream is not a whole answer.
    d2 = c.add_node("decode", 1, node_extra=["--drain-timeout", "1"])
    c.wait_ready()
    s = Stream(c.http_port, 2000)  # fits the 64 MiB cache, takes far longer than 1 s
    s.start()
    wait_for(lambda: s.tokens >= 5, 60, "tokens to stream from the second node")
    t0 = time.time()
    d2.signal(signal.SIGTERM)
    rc = d2.wait(30)
    took = time.time() - t0
    check(rc == 0 and took < 10, f"--drain-timeout 1: exited {rc} after {took:.1f} s")
    s.join(30)
    check(not s.done and s.finish != "length", "the cut stream ended without [DONE]")
    stop_all()
    print("drain test: all checks passed")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
