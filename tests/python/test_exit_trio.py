# SPDX-License-Identifier: MIT
"""The same generators under trio.run. trio's finalizer hook and the end of trio.run close
a generator inside a cancelled scope, so no await can run in its cleanup: the release must
still happen, and does, because ending the socket is synchronous."""

from __future__ import annotations

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
    """trio closes a generator still alive at the end of the run in a cancelled scope; the
    release round trip runs shielded, so it is a confirmed Release."""
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
    assert keep[0].ag_frame is None, "trio did not close the generator"
    assert_taken_over(agend, waiters[0])
    assert released_by_call(end_reasons(agend.socket, resource))


def test_trio_hold_and_cancel_while_queued(agend, resource):
    """A wait cancelled by a cancel scope is withdrawn, confirmed (the cleanup is shielded),
    before the holder releases: never granted, even for a moment (10 rounds, as for
    asyncio: the race this guards against is caught only sometimes by one)."""

    async def main():
        client = await agen.connect(agend.socket)
        for i in range(10):
            res = f"{resource}-{i}"
            events = []
            async with client.hold(res) as lease:
                assert lease.token > 0

                with trio.CancelScope() as cs:
                    async for ev in client.lease(res):
                        events.append(ev)
                        w = Waiter(agend.socket, res)   # queued behind it
                        # delivered in the next step: inside the generator, while it waits
                        cs.cancel()
                assert [e.type for e in events] == [agen.QUEUED]
            assert_taken_over(agend, w)
            w.close()
            grants = [e for e in await client.history(res) if e.type == "granted"]
            assert len(grants) == 2, grants
        await client.aclose()

    trio.run(main)


def test_trio_collected_on_another_thread(agend, resource):
    waiters = []

    async def main():
        client = await agen.connect(agend.socket)
        box = [client.lease(resource)]
        with trio.fail_after(GUARD):
            assert (await box[0].__anext__()).type is agen.GRANTED
        waiters.append(Waiter(agend.socket, resource))

        def drop() -> None:
            box.clear()                 # the last reference dies on this thread
            waiters[0].wait_granted()   # given back without the run's help

        await trio.to_thread.run_sync(drop)
        await trio.sleep(0.01)          # the descriptor is closed in the run
        await client.aclose()

    trio.run(main)
    assert_taken_over(agend, waiters[0])
    assert end_reasons(agend.socket, resource)[-1] == "connection closed"
