#!/usr/bin/env python3
"""A TCP relay that adds a fixed one-way delay in each direction: link latency for the node-link
benchmark on a kernel without `tc netem` (sch_netem) — this project's VMs lack it.

Every chunk read on one side is written to the other `--delay-ms` after it arrived, in order, so
a round trip through the relay gains 2 × delay (plus the relay's own cost, measured by running it
with --delay-ms 0). Threads and time.sleep (clock_nanosleep), not an event loop, whose epoll
timeouts round up to whole milliseconds. Bytes are relayed untouched. Loopback only.

Usage: delay-relay.py --listen PORT --target PORT --delay-ms D
"""
import argparse
import queue
import socket
import sys
import threading
import time


def pump(src, dst, delay):
    """src -> dst, each chunk `delay` seconds after it was read."""
    q = queue.SimpleQueue()

    def deliver():
        while True:
            due, data = q.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                break
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    t = threading.Thread(target=deliver, daemon=True)
    t.start()
    try:
        while data := src.recv(1 << 16):
            q.put((time.monotonic() + delay, data))
    except OSError:
        pass
    q.put((0, None))
    t.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0)
    a = ap.parse_args()
    delay = a.delay_ms / 1000
    server = socket.create_server(("127.0.0.1", a.listen))
    print(f"relay 127.0.0.1:{a.listen} -> 127.0.0.1:{a.target}, {a.delay_ms} ms each way", file=sys.stderr, flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", a.target))
        except OSError:
            client.close()
            continue
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as libzmq sets it
        threading.Thread(target=pump, args=(client, upstream, delay), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, delay), daemon=True).start()


if __name__ == "__main__":
    main()
