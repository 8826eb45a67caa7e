# SPDX-License-Identifier: MIT
"""Every way an asyncio program lets go of a lease gives it back: each test holds a lease,
lets go one way, and checks that another client (a raw varlink waiter queued behind it)
holds the lease afterwards, and which way agend saw it end ("released by ..." for a
Release call, "connection closed" for the socket's end)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading

import agen
import pytest

from conftest import GUARD, Waiter, assert_taken_over, end_reasons, read_line, run_script, tell


async def grant(gen) -> agen.LeaseEvent:
    ev = await asyncio.wait_for(gen.__anext__(), GUARD)
    assert ev.type is agen.GRANTED, ev
    assert ev.id and ev.token > 0
    return ev


def released_by_call(reasons: list[str]) -> bool:
    return bool(reasons) and reasons[-1].startswith("released ") and reasons[-1] != "connection closed"


async def test_aclose(agend, resource):
    client = await agen.connect(agend.socket)
    gen = client.lease(resource)
    await grant(gen)
    w = Waiter(agend.socket, resource)
    assert w.queued
    await gen.aclose()
    # aclose() returns once the Release is answered, i.e. committed: the waiter's grant
    # was committed in the same round, before the reply.
    held = (await client.list(resource)).leases
    assert [h.description for h in held] == ["waiter"]
    assert_taken_over(agend, w)
    assert released_by_call(end_reasons(agend.socket, resource))
    await client.aclose()


async def test_break_then_more_work(agend, resource):
    """break out of async for with no other reference: the generator dies at once; its
    weakref finalizer ends the lease before asyncio's finalizer hook schedules aclose()."""
    client = await agen.connect(agend.socket)
    w = None
    async for ev in client.lease(resource):
        assert ev.type is agen.GRANTED
        w = Waiter(agend.socket, resource)
        assert w.queued
        break
    await asyncio.sleep(0)
    await asyncio.sleep(0.01)       # more work on the loop: the hook's aclose() runs here
    assert_taken_over(agend, w)
    assert end_reasons(agend.socket, resource)[-1] == "connection closed"
    await client.aclose()


async def test_break_inside_aclosing(agend, resource):
    """The recommended form: contextlib.aclosing() closes it with a confirmed Release."""
    client = await agen.connect(agend.socket)
    w = None
    async with contextlib.aclosing(client.lease(resource)) as gen:
        async for ev in gen:
            w = Waiter(agend.socket, resource)
            break
    assert_taken_over(agend, w)
    assert released_by_call(end_reasons(agend.socket, resource))
    await client.aclose()


def test_break_then_asyncio_run_returns(agend, resource):
    """The generator is still referenced when main() returns: asyncio.run()'s
    shutdown_asyncgens() closes it, with a Release call."""
    keep = []
    waiters = []

    async def main():
        client = await agen.connect(agend.socket)
        gen = client.lease(resource)
        keep.append(gen)
        async for ev in gen:
            waiters.append(Waiter(agend.socket, resource))
            break

    asyncio.run(main())
    assert keep[0].ag_frame is None, "shutdown_asyncgens() did not close the generator"
    assert_taken_over(agend, waiters[0])
    assert released_by_call(end_reasons(agend.socket, resource))


def test_loop_closed_without_shutdown_asyncgens(agend, resource):
    """The seed's case: the loop is closed without shutdown_asyncgens(), so no finally
    can ever run; when the generator is collected, its socket is ended synchronously."""
    keep = []
    waiters = []

    async def main():
        client = await agen.connect(agend.socket)
        gen = client.lease(resource)
        keep.append(gen)
        async for ev in gen:
            waiters.append(Waiter(agend.socket, resource))
            break

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()
    w = waiters[0]
    assert w.not_granted_within(0.05), "released before the generator was let go"
    # The last reference goes; no cycle collection helps (the closed loop still holds the
    # keeper task and its socket in a cycle), and no loop runs any more.
    gc.disable()
    try:
        keep.clear()
        assert_taken_over(agend, w)
    finally:
        gc.enable()
    assert end_reasons(agend.socket, resource)[-1] == "connection closed"


def test_loop_closed_generator_in_cycle(agend, resource):
    """The same, with the generator in a reference cycle: released by gc.collect()."""
    waiters = []

    class Box:
        pass

    async def main():
        client = await agen.connect(agend.socket)
        box = Box()
        box.self = box
        box.gen = client.lease(resource)
        async for ev in box.gen:
            waiters.append(Waiter(agend.socket, resource))
            break

    gc.disable()
    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        loop.close()
        gc.collect()
    finally:
        gc.enable()
    assert_taken_over(agend, waiters[0])


async def test_collected_on_another_thread(agend, resource):
    client = await agen.connect(agend.socket)
    box = [client.lease(resource)]
    await grant(box[0])
    w = Waiter(agend.socket, resource)
    done = threading.Event()

    def drop() -> None:
        box.clear()         # the last reference dies on this thread
        w.wait_granted()    # and the lease is given back without the loop's help
        done.set()

    t = threading.Thread(target=drop)
    t.start()
    t.join(GUARD)
    assert done.is_set()
    await asyncio.sleep(0.01)       # the descriptor is closed on the loop
    assert_taken_over(agend, w)
    await client.aclose()


# The child holds a lease with no loop shutdown (the generator in a global), then ends:
# by returning (interpreter exit), os._exit(), or SIGKILL.
CHILD = """
import asyncio, sys, agen
async def main():
    global gen
    client = await agen.connect()
    gen = client.lease(sys.argv[1])
    await gen.__anext__()
    print("granted", flush=True)
    sys.stdin.readline()
    {end}
loop = asyncio.new_event_loop()
loop.run_until_complete(main())
"""


@pytest.mark.parametrize("how", ["interpreter exit", "os._exit", "SIGKILL"])
def test_process_ends(agend, resource, how):
    end = {"interpreter exit": "pass", "os._exit": "import os; os._exit(3)", "SIGKILL": "import time; time.sleep(60)"}
    p = run_script(agend, CHILD.format(end=end[how]), resource)
    assert read_line(p) == "granted"
    w = Waiter(agend.socket, resource)
    assert w.queued
    if how == "SIGKILL":
        p.send_signal(signal.SIGKILL)
    else:
        tell(p)
    assert_taken_over(agend, w)
    rc = p.wait(GUARD)
    err = p.stderr.read()
    assert rc == {"interpreter exit": 0, "os._exit": 3, "SIGKILL": -signal.SIGKILL}[how], err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("how", ["aclose", "break"])
async def test_detached(agend, resource, how):
    """A detached lease does not end with its connection: aclose() releases it with a
    call, and the finalizer writes a one-way Release of its own before ending the socket."""
    client = await agen.connect(agend.socket)
    if how == "aclose":
        gen = client.lease(resource, detached=True, ttl=60)
        await grant(gen)
        w = Waiter(agend.socket, resource)
        await gen.aclose()
    else:
        async for ev in client.lease(resource, detached=True, ttl=60):
            w = Waiter(agend.socket, resource)
            break
    assert_taken_over(agend, w)
    assert released_by_call(end_reasons(agend.socket, resource))
    await client.aclose()


async def test_aclose_after_the_client_was_closed(agend, resource):
    client = await agen.connect(agend.socket)
    gen = client.lease(resource)
    await grant(gen)
    w = Waiter(agend.socket, resource)
    await client.aclose()
    await gen.aclose()
    assert_taken_over(agend, w)
    assert released_by_call(end_reasons(agend.socket, resource))
