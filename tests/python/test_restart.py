# SPDX-License-Identifier: MIT
"""The daemon goes away while a lease is held: DISCONNECTED at once, then RECLAIMED when
a restarted agend gives it back (same id, same token), or LOST when it does not."""

from __future__ import annotations

import asyncio

import agen

from conftest import GUARD, Waiter, assert_taken_over, end_reasons


async def next_event(gen) -> agen.LeaseEvent:
    return await asyncio.wait_for(gen.__anext__(), GUARD)


async def test_kill9_then_reclaimed(own_agend, resource):
    a = own_agend
    a.start()
    client = await agen.connect(a.socket)
    gen = client.lease(resource)
    granted = await next_event(gen)
    a.kill()
    ev = await next_event(gen)
    assert ev.type is agen.DISCONNECTED and ev.id == granted.id
    a.start()
    ev = await next_event(gen)
    assert ev.type is agen.RECLAIMED and (ev.id, ev.token) == (granted.id, granted.token)
    w = Waiter(a.socket, resource)
    assert w.queued
    await gen.aclose()                   # the control connection reconnects for the Release
    assert_taken_over(a, w)
    assert end_reasons(a.socket, resource)[-1].startswith("released by")
    await client.aclose()
    w.close()
    assert a.stop() == 0


async def test_hold_says_disconnected(own_agend, resource):
    a = own_agend
    a.start()
    async with await agen.connect(a.socket) as client:
        async with client.hold(resource) as lease:
            assert not lease.disconnected
            a.kill()
            assert (await next_event(lease.events)).type is agen.DISCONNECTED
            assert lease.disconnected and lease.ended is None
            a.start()
            assert (await next_event(lease.events)).type is agen.RECLAIMED
            assert not lease.disconnected
    assert a.stop() == 0


async def test_not_reclaimed_is_lost(own_agend, resource):
    a = own_agend
    a.grace = 0                         # unreclaimed leases are released at once
    a.start()
    client = await agen.connect(a.socket)
    gen = client.lease(resource)
    await next_event(gen)
    a.kill()
    assert (await next_event(gen)).type is agen.DISCONNECTED
    a.start()
    ev = await next_event(gen)
    assert ev.type is agen.LOST and "not reclaimed" in ev.reason
    await gen.aclose()
    await client.aclose()
    assert a.stop() == 0


async def test_disconnected_while_queued_asks_again(own_agend, resource):
    a = own_agend
    a.start()
    holder = Waiter(a.socket, resource, description="holder")
    assert holder.lease is not None
    client = await agen.connect(a.socket)
    gen = client.lease(resource)
    assert (await next_event(gen)).type is agen.QUEUED
    a.kill()
    a.start()                           # the holder's lease waits for its reclaim
    ev = await next_event(gen)          # no DISCONNECTED for a wait: it is asked again
    # ... with its ticket, so it takes its own restored place (1) instead of queueing
    # behind that place (2) until the grace ends.
    assert ev.type is agen.QUEUED and ev.position == 1
    await gen.aclose()
    await client.aclose()
    holder.close()
    assert a.stop() == 0


async def test_detached_disconnected_then_reclaimed(own_agend, resource):
    """A detached lease needs no Reclaim; it is watched again and says RECLAIMED, so its
    DISCONNECTED is resolved like a bound lease's."""
    a = own_agend
    a.start()
    client = await agen.connect(a.socket)
    gen = client.lease(resource, detached=True, ttl=60)
    granted = await next_event(gen)
    a.kill()
    assert (await next_event(gen)).type is agen.DISCONNECTED
    a.start()
    ev = await next_event(gen)
    assert ev.type is agen.RECLAIMED and (ev.id, ev.token) == (granted.id, granted.token)
    w = Waiter(a.socket, resource)
    await gen.aclose()
    assert_taken_over(a, w)
    assert end_reasons(a.socket, resource)[-1].startswith("released by")
    await client.aclose()
    w.close()
    assert a.stop() == 0


async def test_restored_place_listed_as_reclaimable(own_agend, resource):
    """After kill -9, List shows a queued waiter's restored place before it is back,
    marked like a restored lease; a newcomer behind it is waiting."""
    a = own_agend
    a.grace = 60
    a.start()
    holder = Waiter(a.socket, resource, description="holder")
    queued = Waiter(a.socket, resource, description="queued")
    assert holder.lease is not None and queued.queued
    a.kill()
    holder.close()
    queued.close()
    a.start()
    late = Waiter(a.socket, resource, description="late")
    async with await agen.connect(a.socket) as client:
        listing = await client.list(resource)
    assert [x.state for x in listing.leases] == ["reclaimable"]
    assert [(x.description, x.position, x.state) for x in listing.waiters] == [
        ("queued", 1, "reclaimable"), ("late", 2, "waiting")]
    late.close()
    assert a.stop() == 0
