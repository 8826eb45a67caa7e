#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Cleanup latency of the Python client (client/python/agen), per exit path: the time from
the holder letting go of a lease until another client holds it.

The other client is a raw varlink connection (no agen) that waits for the resource
(Acquire with "more"; its "queued" reply proves it waits) and is read by a thread of its
own, which timestamps the grant as it arrives (time.monotonic(), CLOCK_MONOTONIC, the
same clock in every process). The clock starts right before the statement that lets go:
`await gen.aclose()`; `break` (the generator dies); main() returning from asyncio.run()
with the generator still referenced (shutdown_asyncgens); dropping the generator after
loop.close() without shutdown_asyncgens; dropping it on another thread; the same under
trio; and, in a child process, interpreter exit, os._exit() and SIGKILL (for the first
two the child prints its clock right before it exits).

    python3 bench/python-cleanup.py [--runs N] [--child-runs N] [--agend BINARY]

Starts its own agend (default: build/daemon/agend of this tree) in a temporary directory.
Prints a Markdown table (p50, p99, max in µs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "client", "python"))

import agen  # noqa: E402

try:
    import trio
except ImportError:
    trio = None


class Waiter:
    def __init__(self, path: str, resource: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.sock.sendall(json.dumps({"method": "io.agend.Lease.Acquire", "parameters": {"resource": resource},
                                      "more": True}).encode() + b"\0")
        self.buf = b""
        first = self.recv()
        assert first["parameters"]["state"] == "queued", first
        self.t = None
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def recv(self):
        while b"\0" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        m, self.buf = self.buf.split(b"\0", 1)
        return json.loads(m)

    def run(self):
        while True:
            m = self.recv()
            if m.get("parameters", {}).get("state") == "granted":
                self.t = time.monotonic()
                return

    def done(self) -> float:
        self.thread.join(10)
        self.sock.close()
        if self.t is None:
            raise RuntimeError("no grant within 10 s")
        return self.t


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))]


class Bench:
    def __init__(self, path: str):
        self.path = path
        self.n = 0

    def res(self) -> str:
        self.n += 1
        return f"bench-{self.n}"

    # ---- asyncio, in process ----

    def aclose(self) -> float:
        r = self.res()

        async def main():
            c = await agen.connect(self.path)
            g = c.lease(r)
            await g.__anext__()
            w = Waiter(self.path, r)
            t0 = time.monotonic()
            await g.aclose()
            await c.aclose()
            return w.done() - t0
        return asyncio.run(main())

    def hold_exit(self) -> float:
        r = self.res()

        async def main():
            c = await agen.connect(self.path)
            async with c.hold(r):
                w = Waiter(self.path, r)
                t0 = time.monotonic()
            await c.aclose()
            return w.done() - t0
        return asyncio.run(main())

    def break_(self) -> float:
        r = self.res()

        async def main():
            c = await agen.connect(self.path)
            async for ev in c.lease(r):
                w = Waiter(self.path, r)
                t0 = time.monotonic()
                break
            await asyncio.sleep(0)
            await c.aclose()
            return w.done() - t0
        return asyncio.run(main())

    def run_returns(self) -> float:
        r = self.res()
        keep, box = [], {}

        async def main():
            c = await agen.connect(self.path)
            g = c.lease(r)
            keep.append(g)
            await g.__anext__()
            box["w"] = Waiter(self.path, r)
            box["t0"] = time.monotonic()
        asyncio.run(main())
        return box["w"].done() - box["t0"]

    def loop_closed(self) -> float:
        r = self.res()
        keep, box = [], {}

        async def main():
            c = await agen.connect(self.path)
            g = c.lease(r)
            keep.append(g)
            await g.__anext__()
            box["w"] = Waiter(self.path, r)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        loop.close()
        t0 = time.monotonic()
        keep.clear()
        return box["w"].done() - t0

    def other_thread(self) -> float:
        r = self.res()

        async def main():
            c = await agen.connect(self.path)
            box = [c.lease(r)]
            await box[0].__anext__()
            w = Waiter(self.path, r)
            out = {}

            def drop():
                out["t0"] = time.monotonic()
                box.clear()
            t = threading.Thread(target=drop)
            t.start()
            await asyncio.get_running_loop().run_in_executor(None, t.join)
            await c.aclose()
            return w.done() - out["t0"]
        return asyncio.run(main())

    def cancel_queued(self) -> float:
        """cancel() of a task queued behind a holder, until the withdrawal is confirmed
        (its await returns): the wait is gone from agend."""
        r = self.res()

        async def main():
            c = await agen.connect(self.path)
            async with c.hold(r):
                q = asyncio.Event()

                async def wait():
                    async for ev in c.lease(r):
                        q.set()
                task = asyncio.create_task(wait())
                await q.wait()
                t0 = time.monotonic()
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                t1 = time.monotonic()
            await c.aclose()
            return t1 - t0
        return asyncio.run(main())

    # ---- trio ----

    def trio_aclose(self) -> float:
        r = self.res()

        async def main():
            c = await agen.connect(self.path)
            g = c.lease(r)
            await g.__anext__()
            w = Waiter(self.path, r)
            t0 = time.monotonic()
            await g.aclose()
            await c.aclose()
            return w.done() - t0
        return trio.run(main)

    def trio_break(self) -> float:
        r = self.res()

        async def main():
            c = await agen.connect(self.path)
            async for ev in c.lease(r):
                w = Waiter(self.path, r)
                t0 = time.monotonic()
                break
            await c.aclose()
            return w.done() - t0
        return trio.run(main)

    def trio_run_returns(self) -> float:
        r = self.res()
        keep, box = [], {}

        async def main():
            c = await agen.connect(self.path)
            g = c.lease(r)
            keep.append(g)
            await g.__anext__()
            box["w"] = Waiter(self.path, r)
            box["t0"] = time.monotonic()
        trio.run(main)
        return box["w"].done() - box["t0"]

    # ---- a child process ----

    CHILD = """
import asyncio, os, sys, time, agen
async def main():
    global gen
    c = await agen.connect()
    gen = c.lease(sys.argv[1])
    await gen.__anext__()
    print("granted", flush=True)
    sys.stdin.readline()
    {end}
asyncio.new_event_loop().run_until_complete(main())
"""

    def child(self, how: str) -> float:
        r = self.res()
        end = {"exit": 'print(time.monotonic(), flush=True)',
               "_exit": 'print(time.monotonic(), flush=True); os._exit(0)',
               "kill": 'time.sleep(60)'}[how]
        env = dict(os.environ, AGEND_SOCKET=self.path, PYTHONPATH=os.path.join(HERE, "..", "client", "python"))
        p = subprocess.Popen([sys.executable, "-c", self.CHILD.format(end=end), r], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
        assert p.stdout.readline().strip() == "granted"
        w = Waiter(self.path, r)
        if how == "kill":
            t0 = time.monotonic()
            p.kill()
        else:
            p.stdin.write("go\n")
            p.stdin.flush()
            t0 = float(p.stdout.readline())
        t1 = w.done()
        p.wait()
        return t1 - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--child-runs", type=int, default=30)
    ap.add_argument("--agend", default=os.path.join(HERE, "..", "build", "daemon", "agend"))
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="agen-pybench-", dir="/tmp")
    sock = os.path.join(d, "io.agend.Lease")
    os.mkdir(os.path.join(d, "state"))
    open(os.path.join(d, "conf"), "w").close()
    daemon = subprocess.Popen([args.agend, "--socket", sock, "--state-dir", os.path.join(d, "state"),
                               "--config", os.path.join(d, "conf")], stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if os.path.exists(sock):
                break
            time.sleep(0.01)
        time.sleep(0.1)
        b = Bench(sock)
        paths = [
            ("`await gen.aclose()` (Release, answered)", b.aclose, args.runs),
            ("end of `async with client.hold()`", b.hold_exit, args.runs),
            ("`break` out of `async for` (the generator dies)", b.break_, args.runs),
            ("`asyncio.run()` returns, generator alive (`shutdown_asyncgens`)", b.run_returns, args.runs),
            ("dropped after `loop.close()` without `shutdown_asyncgens`", b.loop_closed, args.runs),
            ("last reference dropped on another thread", b.other_thread, args.runs),
            ("task cancelled while queued → withdrawal confirmed", b.cancel_queued, args.runs),
        ]
        if trio is not None:
            paths += [
                ("trio: `await gen.aclose()`", b.trio_aclose, args.runs),
                ("trio: `break`", b.trio_break, args.runs),
                ("trio: `trio.run()` returns, generator alive", b.trio_run_returns, args.runs),
            ]
        paths += [
            ("child process: interpreter exit", lambda: b.child("exit"), args.child_runs),
            ("child process: `os._exit()`", lambda: b.child("_exit"), args.child_runs),
            ("child process: SIGKILL", lambda: b.child("kill"), args.child_runs),
        ]
        print("| exit path | runs | p50 µs | p99 µs | max µs |")
        print("|---|---|---|---|---|")
        for name, fn, n in paths:
            fn()    # warm-up
            xs = [fn() * 1e6 for _ in range(n)]
            print(f"| {name} | {n} | {pct(xs, 50):.0f} | {pct(xs, 99):.0f} | {max(xs):.0f} |", flush=True)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
