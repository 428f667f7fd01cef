#!/usr/bin/env python3
"""A fault-injecting TCP relay for netns_test.py.

Listens on --listen HOST:PORT and forwards every connection to --target
HOST:PORT. "up" is client -> target (prefill -> decode KV frames, router ->
decode node RPCs), "down" the reverse. Commands, one per line on stdin, each
answered by one line on stdout starting with "ok" (or "error"):

  pass                     forward as is; zero the byte counts
  delay MS                 hold every chunk MS milliseconds, both directions
                           (order kept: added latency, not a bandwidth limit)
  stall SECONDS BYTES DIR  once DIR (up|down) has carried BYTES more bytes,
                           forward nothing in either direction for SECONDS
                           (TCP backpressure does the rest), then go on; once
  cut BYTES DIR            once DIR has carried BYTES more bytes, reset both
                           sides of that connection (RST); later connections
                           are forwarded; once
  stats                    ok {"up": N, "down": N, "connections": N,
                               "cuts": N, "stalls": N}
                           (bytes since the last pass/delay/stall/cut)
  quit

Events ("stalled ...", "cut ...") are logged to stderr.
"""
import argparse
import asyncio
import json
import socket
import struct
import sys
import time

CHUNK = 64 * 1024


class State:
    def __init__(self):
        self.delay_s = 0.0
        self.bytes = {"up": 0, "down": 0}
        self.stall = None  # (seconds, byte threshold, direction)
        self.cut = None    # (byte threshold, direction)
        self.connections = self.cuts = self.stalls = 0
        # Chunks read in [stall_from, resume_at) are held until resume_at.
        self.stall_from = self.resume_at = 0.0

    def zero(self):
        self.bytes = {"up": 0, "down": 0}


def log(msg):
    print(f"relay: {msg}", file=sys.stderr, flush=True)


def reset(writer):
    """Closes with RST: what a peer sees when a middlebox or host drops it."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class Conn:
    def __init__(self, state, client_w, target_w):
        self.state = state
        self.writers = (client_w, target_w)
        self.dead = False

    def kill(self):
        if not self.dead:
            self.dead = True
            for w in self.writers:
                reset(w)

    async def wait_stall(self, read_at):
        st = self.state
        while not self.dead and st.stall_from <= read_at < st.resume_at:
            await asyncio.sleep(max(0.0, min(0.05, st.resume_at - time.monotonic())))
            if time.monotonic() >= st.resume_at:
                break

    async def pump(self, reader, writer, direction):
        """Reads chunks; a sender task writes each once its delay is due."""
        st = self.state
        queue = asyncio.Queue()

        async def send():
            while True:
                item = await queue.get()
                if item is None:
                    break
                due, data, read_at = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.wait_stall(read_at)
                if self.dead:
                    return
                writer.write(data)
                await writer.drain()
            if not self.dead and writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.ensure_future(send())
        try:
            while not self.dead:
                await self.wait_stall(time.monotonic())
                data = await reader.read(CHUNK)
                if not data:
                    break
                now = time.monotonic()
                before = st.bytes[direction]
                st.bytes[direction] += len(data)
                if st.cut and st.cut[1] == direction and st.bytes[direction] >= st.cut[0]:
                    head = data[:max(0, st.cut[0] - before)]
                    st.cut = None
                    st.cuts += 1
                    queue.put_nowait((now + st.delay_s, head, now))
                    await asyncio.sleep(st.delay_s + 0.05)  # the head goes out first
                    log(f"cut after {before + len(head)} {direction} bytes")
                    self.kill()
                    break
                if st.stall and st.stall[2] == direction and st.bytes[direction] >= st.stall[1]:
                    seconds, at, _ = st.stall
                    st.stall = None
                    st.stalls += 1
                    split = max(0, at - before)
                    queue.put_nowait((now + st.delay_s, data[:split], now - 1e-9))
                    st.stall_from, st.resume_at = now, now + st.delay_s + seconds
                    log(f"stalled {seconds}s after {at} {direction} bytes")
                    data = data[split:]
                queue.put_nowait((now + st.delay_s, data, now))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            try:
                await sender
            except (ConnectionError, OSError):
                pass
            if not self.dead:  # this side ended: end the other once drained
                try:
                    writer.close()
                except (ConnectionError, OSError):
                    pass


async def serve(args, state):
    target_host, target_port = args.target.rsplit(":", 1)

    async def on_client(client_r, client_w):
        try:
            target_r, target_w = await asyncio.open_connection(target_host, int(target_port))
        except OSError as e:
            log(f"cannot reach {args.target}: {e}")
            reset(client_w)
            return
        for w in (client_w, target_w):
            s = w.get_extra_info("socket")
            if s is not None:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state.connections += 1
        conn = Conn(state, client_w, target_w)
        await asyncio.gather(conn.pump(client_r, target_w, "up"),
                             conn.pump(target_r, client_w, "down"), return_exceptions=True)

    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(on_client, host, int(port), reuse_address=True)
    print("ok listening", flush=True)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode()
        if not line:
            break
        words = line.split()
        if not words:
            continue
        cmd, rest = words[0], words[1:]
        try:
            if cmd == "pass":
                state.delay_s, state.stall, state.cut = 0.0, None, None
                state.zero()
            elif cmd == "delay":
                state.delay_s = float(rest[0]) / 1000
                state.zero()
            elif cmd == "stall":
                if rest[2] not in state.bytes:
                    raise ValueError(f"direction {rest[2]}")
                state.zero()
                state.stall = (float(rest[0]), int(rest[1]), rest[2])
            elif cmd == "cut":
                if rest[1] not in state.bytes:
                    raise ValueError(f"direction {rest[1]}")
                state.zero()
                state.cut = (int(rest[0]), rest[1])
            elif cmd == "stats":
                print("ok " + json.dumps({**state.bytes, "connections": state.connections,
                                          "cuts": state.cuts, "stalls": state.stalls}),
                      flush=True)
                continue
            elif cmd == "quit":
                print("ok bye", flush=True)
                break
            else:
                raise ValueError(f"unknown command {cmd}")
            print(f"ok {cmd}", flush=True)
        except (ValueError, IndexError) as e:
            print(f"error {e}", flush=True)
    server.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--target", required=True)
    args = ap.parse_args()
    asyncio.run(serve(args, State()))


if __name__ == "__main__":
    main()
