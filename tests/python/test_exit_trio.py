# SPDX-License-Identifier: MIT
"""The same generators under trio.run. trio's finalizer hook and the end of trio.run close
a generator inside a cancelled scope, so no await can run in its cleanup: the release must
still happen, and does, because ending the socket is synchronous."""

from __future__ import annotations

import gc

import agen
import trio

from conftest import GUARD, Waiter, assert_taken_over, end_reasons


def released_by_call(reasons: list[str]) -> bool:
    return bool(reasons) and reasons[-1].startswith("released ") and reasons[-1] != "connection closed"


def test_trio_aclose(agend, resource):
    waiters = []

    async def main():
        client = await agen.connect(agend.socket)
        gen = client.lease(resource)
        with trio.fail_after(GUARD):
            ev = await gen.__anext__()
        assert ev.type is agen.GRANTED
        waiters.append(Waiter(agend.socket, resource))
        await gen.aclose()
        held = (await client.list(resource)).leases
        assert [h.description for h in held] == ["waiter"]
        await client.aclose()

    trio.run(main)
    assert_taken_over(agend, waiters[0])
    assert released_by_call(end_reasons(agend.socket, resource))


def test_trio_break(agend, resource):
    waiters = []

    async def main():
        client = await agen.connect(agend.socket)
        async for ev in client.lease(resource):
            waiters.append(Waiter(agend.socket, resource))
            break
        await trio.sleep(0.01)
        assert_taken_over(agend, waiters[0])

    trio.run(main)
    assert end_reasons(agend.socket, resource)[-1] == "connection closed"


def test_trio_run_returns_with_generator_alive(agend, resource):
    """trio closes a generator still alive at the end of the run in a cancelled scope."""
    keep = []
    waiters = []

    async def main():
        client = await agen.connect(agend.socket)
        gen = client.lease(resource)
        keep.append(gen)
        async for ev in gen:
            waiters.append(Waiter(agend.socket, resource))
            break

    trio.run(main)
    assert_taken_over(agend, waiters[0])
    keep.clear()
    gc.collect()


def test_trio_hold_and_cancel_while_queued(agend, resource):
    events = []

    async def main():
        client = await agen.connect(agend.socket)
        async with client.hold(resource) as lease:
            assert lease.token > 0
            async def waiting():
                async for ev in client.lease(resource):
                    events.append(ev)
            with trio.move_on_after(0.2):
                await waiting()
            assert [e.type for e in events] == [agen.QUEUED]
            w = Waiter(agend.socket, resource)
        # the cancelled wait was withdrawn: the raw waiter behind it gets the lease
        assert_taken_over(agend, w)
        await client.aclose()

    trio.run(main)
