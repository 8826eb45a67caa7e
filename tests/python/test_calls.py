# SPDX-License-Identifier: MIT
"""The calls and events of the client against a real agend."""

from __future__ import annotations

import asyncio
import os
import signal

import agen
import pytest

from conftest import GUARD, Waiter, assert_taken_over, holders, read_line, run_script, tell


async def test_default_address(monkeypatch, tmp_path):
    monkeypatch.setenv("AGEND_SOCKET", "/x/y")
    assert agen.default_address() == "/x/y"
    monkeypatch.delenv("AGEND_SOCKET")
    if os.getuid() == 0:
        assert agen.default_address() == "/run/agend/io.agend.Lease"
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
        assert agen.default_address() == "/run/agend/io.agend.Lease"
        (tmp_path / "agend").mkdir()
        (tmp_path / "agend" / "io.agend.Lease").touch()
        assert agen.default_address() == str(tmp_path / "agend" / "io.agend.Lease")


async def test_connect_uses_agend_socket(agend, monkeypatch):
    monkeypatch.setenv("AGEND_SOCKET", agend.socket)
    async with await agen.connect() as client:
        assert client.address == agend.socket
        st = await client.status()
        assert st.version and st.connections >= 1


async def test_connect_nobody_listening(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        await agen.connect(str(tmp_path / "nothing"))
    assert str(tmp_path / "nothing") in str(e.value)


async def test_list_resources_history(agend, resource):
    async with await agen.connect(agend.socket) as client:
        async with client.hold(resource, description="why") as lease:
            w = Waiter(agend.socket, resource)
            listing = await client.list(resource)
            assert [(l.id, l.token, l.description, l.owner.pid) for l in listing.leases] == \
                [(lease.id, lease.token, "why", os.getpid())]
            assert [(x.position, x.description) for x in listing.waiters] == [(1, "waiter")]
            rs = {r.name: r for r in await client.resources()}
            assert rs[resource].used == 1 and rs[resource].waiters == 1
        assert_taken_over(agend, w)
        types = [e.type for e in await client.history(resource)]
        assert types[:4] == ["granted", "queued", "released", "granted"], types


async def test_list_history_follow_pages(agend, resource):
    # agend answers List and History in pages of at most 1000: the client follows the
    # cursor. 1200 leases held by one raw connection (pipelined Acquires).
    import json
    import socket
    n = 1200
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(agend.socket)
        s.settimeout(GUARD)
        buf = b""
        for start in range(0, n, 200):
            s.sendall(b"".join(json.dumps({"method": "io.agend.Lease.Acquire",
                                           "parameters": {"resource": f"{resource}-{i}"}}).encode() + b"\0"
                               for i in range(start, start + 200)))
            got = 0
            while got < 200:
                while b"\0" not in buf:
                    chunk = s.recv(65536)
                    assert chunk, "agend closed the connection"
                    buf += chunk
                msg, buf = buf.split(b"\0", 1)
                assert "error" not in json.loads(msg), msg
                got += 1
        async with await agen.connect(agend.socket) as client:
            mine = [l for l in (await client.list()).leases if l.resource.startswith(resource + "-")]
            assert len(mine) == n
            assert len({l.id for l in mine}) == n
            evs = await client.history(limit=1100)
            assert len(evs) == 1100
            tokens = [e.token for e in evs]
            assert tokens == sorted(tokens) and tokens[-1] == max(l.token for l in mine)


async def test_check(agend, resource):
    async with await agen.connect(agend.socket) as client:
        try:
            async with client.hold(resource) as lease:
                assert await client.check(resource, lease.token) is True
                assert await client.check(resource, lease.token + 1) is False
            assert await client.check(resource, lease.token) is False
            assert await client.check(resource + "-unknown", 1) is False
        except agen.MethodNotFound:
            pytest.xfail("this agend has no io.agend.Lease.Check yet")


async def test_try_once_busy_is_timeout(agend, resource):
    async with await agen.connect(agend.socket) as client:
        async with client.hold(resource):
            with pytest.raises(agen.Timeout) as e:
                async for ev in client.lease(resource, timeout=0):
                    pytest.fail(f"granted: {ev}")
            assert isinstance(e.value, TimeoutError) and e.value.name == "io.agend.Lease.Timeout"
            with pytest.raises(agen.Timeout):
                async with client.hold(resource, timeout=0.05):
                    pass


async def test_hold_body_raises(agend, resource):
    async with await agen.connect(agend.socket) as client:
        w = None
        with pytest.raises(KeyError):
            async with client.hold(resource):
                w = Waiter(agend.socket, resource)
                raise KeyError("x")
        assert_taken_over(agend, w)


async def test_revoke_ends_the_generator(agend, resource):
    async with await agen.connect(agend.socket) as client:
        gen = client.lease(resource)
        ev = await asyncio.wait_for(gen.__anext__(), GUARD)
        await client.revoke(ev.id, reason="maintenance")
        ev2 = await asyncio.wait_for(gen.__anext__(), GUARD)
        assert ev2.type is agen.REVOKED and "maintenance" in ev2.reason
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(gen.__anext__(), GUARD)
        with pytest.raises(agen.NoSuchLease):
            await client.release(ev.id)


async def test_released_by_another_is_lost(agend, resource):
    async with await agen.connect(agend.socket) as client:
        async with client.hold(resource) as lease:
            await client.release(lease.id)
            ev = await asyncio.wait_for(lease.events.__anext__(), GUARD)
            # "released: ..." from the Watch, or NoSuchLease if the release came before
            # the keeper's Watch was in effect.
            assert ev.type is agen.LOST and ev.reason
            assert lease.ended is ev


async def test_ttl_is_renewed(agend, resource):
    async with await agen.connect(agend.socket) as client:
        gen = client.lease(resource, ttl=1.0)
        assert (await asyncio.wait_for(gen.__anext__(), GUARD)).type is agen.GRANTED
        # Nobody steps the generator for over 2 TTLs: the keeper renews all the same
        # (every ttl/3, so a renewal may be late by up to 2/3 s on a loaded machine).
        await asyncio.sleep(2.2)
        assert len(holders(agend.socket, resource)) == 1
        ev = await asyncio.wait_for(gen.__anext__(), GUARD)
        assert ev.type is agen.RENEWED and ev.lease is not None and ev.lease.ttl == pytest.approx(1.0)
        await gen.aclose()


async def test_ttl_not_renewed_expires(agend, resource, monkeypatch):
    from agen import _lease

    async def no_renew(self):
        pass
    monkeypatch.setattr(_lease._LeaseCore, "_renew", no_renew)
    async with await agen.connect(agend.socket) as client:
        gen = client.lease(resource, ttl=0.2)
        assert (await asyncio.wait_for(gen.__anext__(), GUARD)).type is agen.GRANTED
        ev = await asyncio.wait_for(gen.__anext__(), GUARD)
        assert ev.type is agen.EXPIRED
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()


async def test_watch(agend, resource):
    async with await agen.connect(agend.socket) as client:
        ready = asyncio.Event()
        seen: list[agen.WatchEvent] = []

        async def watch():
            async for ev in client.watch(resource, on_ready=ready.set):
                seen.append(ev)
                if ev.type == "released":
                    return

        task = asyncio.create_task(watch())
        await asyncio.wait_for(ready.wait(), GUARD)
        async with client.hold(resource) as lease:
            pass
        await asyncio.wait_for(task, GUARD)
        assert [(e.type, e.lease) for e in seen] == [("granted", lease.id), ("released", lease.id)]


async def test_watch_one_lease_ends_with_it(agend, resource):
    async with await agen.connect(agend.socket) as client:
        async with client.hold(resource) as lease:
            gen = client.watch(lease=lease.id)
            ready = asyncio.Event()
            task = asyncio.create_task(asyncio.wait_for(_collect(client.watch(lease=lease.id, on_ready=ready.set)), GUARD))
            await asyncio.wait_for(ready.wait(), GUARD)
            await gen.aclose()
        seen = await task
        assert [e.type for e in seen][-1] == "released"
        with pytest.raises(agen.NoSuchLease):
            await _collect(client.watch(lease=lease.id))


async def _collect(gen):
    return [ev async for ev in gen]


async def test_cancelled_while_queued(agend, resource):
    """The cancelled waiter's Acquire is withdrawn, and agend has seen it go when the
    cancelled task ends: the waiter queued behind it gets the lease, and the cancelled one
    is never granted, not even for a moment. (Repeated: without the confirmed withdrawal
    the holder's Release can reach agend before the waiter's hang-up, a race that a single
    run catches only sometimes.)"""
    async with await agen.connect(agend.socket) as client:
        for i in range(10):
            res = f"{resource}-{i}"
            events = []
            async with client.hold(res, description="holder"):
                queued = asyncio.Event()

                async def wait():
                    async for ev in client.lease(res, description="cancelled"):
                        events.append(ev)
                        queued.set()

                task = asyncio.create_task(wait())
                await asyncio.wait_for(queued.wait(), GUARD)
                w = Waiter(agend.socket, res)
                assert w.first["parameters"]["position"] == 2
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert_taken_over(agend, w)
            w.close()
            assert [e.type for e in events] == [agen.QUEUED]
            grants = [e for e in await client.history(res) if e.type == "granted"]
            assert len(grants) == 2, grants


async def test_invalid_arguments(agend):
    async with await agen.connect(agend.socket) as client:
        for kw in ({"units": 0}, {"timeout": -1}, {"ttl": 0}, {"ttl": float("nan")}):
            with pytest.raises(ValueError):
                client.lease("x", **kw)
        with pytest.raises(agen.InvalidParameter):
            await client.call("io.agend.Lease.List", {"resource": 5})


def test_fork_child_does_not_keep_the_lease(agend, resource):
    """A child forked while the lease is held (a worker pool) lives on after its parent
    ends: the lease must end with the parent, not with the child."""
    p = run_script(agend, """
import asyncio, os, sys, time, agen
async def main():
    global gen
    client = await agen.connect()
    gen = client.lease(sys.argv[1])
    await gen.__anext__()
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    print("granted", child, flush=True)
    sys.stdin.readline()
    os._exit(0)
asyncio.new_event_loop().run_until_complete(main())
""", resource)
    word, child = read_line(p).split()
    assert word == "granted"
    try:
        w = Waiter(agend.socket, resource)
        tell(p)
        assert_taken_over(agend, w)
        os.kill(int(child), 0)      # the child still lives, with its copy of the socket closed
    finally:
        os.kill(int(child), signal.SIGKILL)
    p.wait(GUARD)


def test_example_python_break(agend, resource):
    """examples/python-break.py: break and a loop closed without shutdown_asyncgens(),
    each followed by a try-once that only succeeds if the lease is back."""
    import subprocess
    import sys
    from conftest import AGEN_PYTHON_DIR, HERE
    example = os.path.join(HERE, "..", "..", "examples", "python-break.py")
    out = subprocess.run([sys.executable, example, resource], capture_output=True, text=True, timeout=GUARD,
                         env=dict(os.environ, PYTHONPATH=os.path.abspath(AGEN_PYTHON_DIR), AGEND_SOCKET=agend.socket))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("taken again at once") == 2, out.stdout


def test_connect_needs_a_loop():
    coro = agen.connect("/nonexistent")
    with pytest.raises(RuntimeError, match="running asyncio event loop or trio.run"):
        coro.send(None)
    coro.close()
