#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The question agend grew from, with a lease: `async for ... break` leaves an async
generator suspended, and its `finally` runs only when the garbage collector and the event
loop get to it -- never, if the loop is closed without shutdown_asyncgens(). With agen the
lease is back at once anyway: this program breaks out of a lease generator, then asks for
the same resource with a try-once (timeout=0), which would fail with agen.Timeout if the
lease were still held. It then does the same with a loop closed without
shutdown_asyncgens() and the generator kept alive until after the close.

    AGEND_SOCKET=/path/to/io.agend.Lease python3 examples/python-break.py [RESOURCE]
"""

import asyncio
import sys
import time

import agen

resource = sys.argv[1] if len(sys.argv) > 1 else "example"


async def break_out() -> None:
    client = await agen.connect()
    async for event in client.lease(resource, description="examples/python-break.py"):
        print(f"{event.type.value}: lease {event.id}, token {event.token}")
        if event.type is agen.GRANTED:
            t0 = time.monotonic()
            break               # the generator stays suspended; nobody calls aclose()
    async with client.hold(resource, timeout=0) as again:
        print(f"taken again at once ({(time.monotonic() - t0) * 1e6:.0f} µs after break), token {again.token}")
    await client.aclose()


kept = []


async def hold_and_leave() -> None:
    client = await agen.connect()
    gen = client.lease(resource)
    kept.append(gen)            # still referenced after the loop is gone
    async for event in gen:
        print(f"{event.type.value}: lease {event.id}, token {event.token}; closing the loop without "
              "shutdown_asyncgens()")
        break


async def try_once() -> None:
    client = await agen.connect()
    async with client.hold(resource, timeout=0) as again:
        print(f"taken again at once, token {again.token}")
    await client.aclose()


asyncio.run(break_out())

loop = asyncio.new_event_loop()
loop.run_until_complete(hold_and_leave())
loop.close()                    # no shutdown_asyncgens(): the generator's finally never runs
kept.clear()                    # ... but dropping it ends the lease, with no loop at all
asyncio.run(try_once())
