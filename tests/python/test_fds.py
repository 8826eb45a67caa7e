# SPDX-License-Identifier: MIT
"""Nothing is left open: after leases let go every way that keeps the process (aclose,
break, the other thread, a cancelled wait, a loop closed without shutdown_asyncgens, and
the same under trio), the process has the descriptors it had before, every socket was
closed by the package (none left to the garbage collector, which would warn "unclosed
socket"), and no keeper task is left."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings

import agen
import trio

from conftest import GUARD, Waiter


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_descriptor_left(agend, resource):
    # What earlier tests left to the garbage collector goes first (their unclosed clients,
    # and the loop pytest-asyncio leaves set as the current one, which a first
    # asyncio.run() lets go of), so that only what the paths below do is counted.
    asyncio.run(asyncio.sleep(0))
    trio.run(trio.sleep, 0)
    gc.collect()
    before = count_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        _all_paths(agend, resource)
        gc.collect()
    unclosed = [str(w.message) for w in caught if "unclosed" in str(w.message)]
    assert unclosed == []
    assert count_fds() == before
    w = Waiter(agend.socket, resource)
    assert w.lease is not None, "the resource is still held"
    w.close()


def _all_paths(agend, resource):

    async def asyncio_paths():
        client = await agen.connect(agend.socket)
        for i in range(5):
            gen = client.lease(resource)
            await asyncio.wait_for(gen.__anext__(), GUARD)
            await gen.aclose()
            async for ev in client.lease(resource):
                break
            box = [client.lease(resource)]
            await asyncio.wait_for(box[0].__anext__(), GUARD)
            t = threading.Thread(target=box.clear)
            t.start()
            t.join()
            async with client.hold(resource):
                queued = asyncio.Event()

                async def wait():
                    async for ev in client.lease(resource):
                        queued.set()
                task = asyncio.create_task(wait())
                await asyncio.wait_for(queued.wait(), GUARD)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.05)       # posted closes run
        await client.aclose()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == [], others

    asyncio.run(asyncio_paths())

    keep = []

    async def hold_and_leave():
        client = await agen.connect(agend.socket)
        keep.append(client.lease(resource))
        await keep[-1].__anext__()
        await client.aclose()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(hold_and_leave())
    loop.close()
    keep.clear()

    async def trio_paths():
        client = await agen.connect(agend.socket)
        for i in range(5):
            gen = client.lease(resource)
            await gen.__anext__()
            await gen.aclose()
            async for ev in client.lease(resource):
                break
            with trio.move_on_after(0.05):
                async with client.hold(resource):
                    async for ev in client.lease(resource):
                        pass
        await trio.sleep(0.05)
        await client.aclose()
    trio.run(trio_paths)
