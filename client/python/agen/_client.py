# SPDX-License-Identifier: MIT
"""The client: an address, the calls that do not wait, and the generators that do."""

from __future__ import annotations

import builtins
import contextlib
import math
import os
from typing import Any, AsyncGenerator, AsyncIterator, Callable

from ._backend import Backend, current_backend
from ._errors import BadReply, error_from_reply
from ._lease import _LeaseCore, make_lease
from ._types import Lease, LeaseEvent, LeaseEventType, Listing, Resource, Status, Waiter, WatchEvent
from ._wire import DEFAULT_MAX_MESSAGE, Connection

DEFAULT_SYSTEM_ADDRESS = "/run/agend/io.agend.Lease"
DEFAULT_CALL_TIMEOUT = 30.0


def default_address() -> str:
    """The address a client uses without one, as libagenclient's agen_default_address():
    $AGEND_SOCKET if set; for root /run/agend/io.agend.Lease; for others
    $XDG_RUNTIME_DIR/agend/io.agend.Lease if that exists, else /run/agend/io.agend.Lease."""
    e = os.environ.get("AGEND_SOCKET")
    if e:
        return e
    if os.getuid() != 0:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg:
            a = f"{xdg}/agend/io.agend.Lease"
            # A user's own agend, if it runs; else the system's.
            if os.path.exists(a):
                return a
    return DEFAULT_SYSTEM_ADDRESS


def _seconds(name: str, v: float | None, *, allow_zero: bool) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or \
            (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number of seconds{' >= 0' if allow_zero else ' > 0'}: {v!r}")


class Held:
    """What ``async with client.hold(...)`` gives: the granted lease. ``events`` is its
    generator, for the events after the grant (iterate it to learn of a revocation, an
    expiry or a daemon restart); ``ended`` is the ending event once one has arrived."""

    def __init__(self, granted: LeaseEvent, events: AsyncGenerator[LeaseEvent, None], core: _LeaseCore):
        self.id: str = granted.id or ""
        self.token: int = granted.token
        self.resource: str = granted.resource
        self.lease: Lease | None = granted.lease
        self.events = events
        self._core = core

    @property
    def ended(self) -> LeaseEvent | None:
        """The LOST, REVOKED or EXPIRED event, once the lease has ended (read or not)."""
        return self._core.final_event

    @property
    def disconnected(self) -> bool:
        """True from DISCONNECTED until RECLAIMED (or the end): the lease may be lost."""
        return self._core.disconnected


class Client:
    """A connection to agend, made by :func:`connect`. It belongs to the asyncio loop (or
    trio run) that made it. Calls that answer at once (List, Status, Check, Release,
    Revoke, ...) go one at a time on one control connection; every lease and every watch
    opens a connection of its own, because a waiting call holds the calls behind it."""

    def __init__(self, backend: Backend, address: str, control: Connection, call_timeout: float,
                 max_message: int):
        self._backend = backend
        self.address = address
        self.call_timeout = call_timeout
        self.max_message = max_message
        self._control: Connection | None = control
        self._lock = backend.lock()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the control connection. Leases are not affected: each has its own, and
        a later call (a lease's release among them) opens the control connection again."""
        if self._control is not None:
            self._control.close()
            self._control = None

    async def _call(self, method: str, parameters: dict[str, Any] | None = None, *,
                    timeout: float | None = None) -> dict[str, Any]:
        """One call on the control connection: its reply's parameters, or the exception of
        its error reply. A call that is interrupted (timeout, cancellation, a bad reply)
        closes the connection, since its reply would come later to the next call; the next
        call reconnects."""
        t = self.call_timeout if timeout is None else timeout
        async with self._lock:
            conn = self._control
            if conn is not None and not conn.looks_alive():
                # Closed by the peer while idle (agend restarted): nothing of this call
                # was sent on it, so a new connection is safe.
                conn.close()
                conn = None
            if conn is None:
                conn = self._control = await Connection.open(self._backend, self.address, t, self.max_message)
            try:
                await conn.send(method, parameters, timeout=t)
                r = await conn.recv(t, method)
                if r.continues:
                    raise BadReply(f"{method}: a reply with continues to a call without more")
            except BaseException:
                conn.close()
                if self._control is conn:
                    self._control = None
                raise
        if r.error is not None:
            raise error_from_reply(r.error, r.parameters, method)
        return r.parameters

    # ---- calls that answer at once ----

    async def call(self, method: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Any method by its full name, e.g. "org.varlink.service.GetInfo"."""
        return await self._call(method, parameters)

    async def check(self, resource: str, token: int) -> bool:
        """True iff ``token`` is the fencing token of a current holder of ``resource``."""
        p = await self._call("io.agend.Lease.Check", {"resource": resource, "token": token})
        v = p.get("current")
        if not isinstance(v, bool):
            raise BadReply(f"Check: current is not a boolean: {p!r}")
        return v

    async def list(self, resource: str | None = None) -> Listing:
        """Leases held and waiters, of one resource or all."""
        params: dict[str, Any] = {"resource": resource} if resource is not None else {}
        p = await self._call("io.agend.Lease.List", params)
        leases, waiters = p.get("leases", []), p.get("waiters", [])
        if not isinstance(leases, list) or not isinstance(waiters, list):
            raise BadReply(f"List: leases and waiters are not lists: {p!r}")
        # agend answers at most 1000 leases per reply; continue_after asks for the rest.
        while isinstance(p.get("continue_after"), int):
            p = await self._call("io.agend.Lease.List", {**params, "after": p["continue_after"]})
            more = p.get("leases", [])
            if not isinstance(more, list):
                raise BadReply(f"List: leases is not a list: {p!r}")
            leases = leases + more
        return Listing([Lease.from_wire(x) for x in leases], [Waiter.from_wire(x) for x in waiters])

    async def resources(self) -> builtins.list[Resource]:
        p = await self._call("io.agend.Lease.Resources")
        rs = p.get("resources", [])
        if not isinstance(rs, list):
            raise BadReply(f"Resources: not a list: {p!r}")
        return [Resource.from_wire(x) for x in rs]

    async def status(self) -> Status:
        return Status.from_wire(await self._call("io.agend.Lease.Status"))

    async def history(self, resource: str | None = None, limit: int | None = None) -> builtins.list[WatchEvent]:
        """The last events, oldest first."""
        params: dict[str, Any] = {}
        if resource is not None:
            params["resource"] = resource
        if limit is not None:
            params["limit"] = limit
        p = await self._call("io.agend.Lease.History", params)
        evs = p.get("events", [])
        if not isinstance(evs, list):
            raise BadReply(f"History: not a list: {p!r}")
        # agend answers at most 1000 events per reply; continue_before asks for older ones.
        want = limit if limit is not None else 100
        while isinstance(p.get("continue_before"), int) and len(evs) < want:
            params["before"] = p["continue_before"]
            params["limit"] = want - len(evs)
            p = await self._call("io.agend.Lease.History", params)
            older = p.get("events", [])
            if not isinstance(older, list):
                raise BadReply(f"History: not a list: {p!r}")
            evs = older + evs
        return [WatchEvent.from_wire(x) for x in evs]

    async def release(self, id: str, secret: str | None = None) -> None:
        """Ends a lease: yours (this uid's connection-less release needs the secret), or any as root."""
        params: dict[str, Any] = {"id": id}
        if secret is not None:
            params["secret"] = secret
        await self._call("io.agend.Lease.Release", params)

    async def renew(self, id: str, ttl: float | None = None, secret: str | None = None) -> Lease:
        _seconds("ttl", ttl, allow_zero=False)
        params: dict[str, Any] = {"id": id}
        if ttl is not None:
            params["ttl"] = ttl
        if secret is not None:
            params["secret"] = secret
        p = await self._call("io.agend.Lease.Renew", params)
        return Lease.from_wire(p.get("lease"))

    async def revoke(self, id: str, reason: str | None = None) -> None:
        """Ends a lease that is not yours (root, or whoever the configuration allows)."""
        params: dict[str, Any] = {"id": id}
        if reason is not None:
            params["reason"] = reason
        await self._call("io.agend.Lease.Revoke", params)

    # ---- generators ----

    def lease(self, resource: str, *, units: int = 1, exclusive: bool = False, timeout: float | None = None,
              ttl: float | None = None, detached: bool = False,
              description: str | None = None) -> AsyncGenerator[LeaseEvent, None]:
        """A lease as an async generator. Nothing is sent before the first step; then it
        opens its own connection and asks: it yields QUEUED while it waits, GRANTED, then
        RENEWED, DISCONNECTED, RECLAIMED as they happen, and finally LOST, REVOKED or
        EXPIRED, after which it returns. A step raises the Acquire error (``Timeout``,
        ``NoSuchResource``, ``PermissionDenied``, ``LimitExceeded``, ...) if the lease is
        not granted. ``timeout``: seconds to wait, 0 = try once, None = no limit. ``ttl``:
        seconds; the generator renews it every ttl/3 by itself. However the generator is
        let go (aclose, break, garbage collection on any thread, loop closed, process
        death) the lease is released; see docs/python.md."""
        return make_lease(self._lease_core(resource, units=units, exclusive=exclusive, timeout=timeout, ttl=ttl,
                                           detached=detached, description=description))

    def _lease_core(self, resource: str, *, units: int, exclusive: bool, timeout: float | None,
                    ttl: float | None, detached: bool, description: str | None) -> _LeaseCore:
        if not isinstance(resource, str) or not resource:
            raise ValueError("resource must be a non-empty string")
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be an integer >= 1: {units!r}")
        _seconds("timeout", timeout, allow_zero=True)
        _seconds("ttl", ttl, allow_zero=False)
        params: dict[str, Any] = {"resource": resource}
        if units != 1:
            params["units"] = units
        if exclusive:
            params["exclusive"] = True
        if timeout is not None:
            params["timeout"] = timeout
        if ttl is not None:
            params["ttl"] = ttl
        if detached:
            params["detached"] = True
        if description is not None:
            params["description"] = description
        return _LeaseCore(self, resource, params, detached, timeout)

    @contextlib.asynccontextmanager
    async def hold(self, resource: str, *, units: int = 1, exclusive: bool = False, timeout: float | None = None,
                   ttl: float | None = None, detached: bool = False, description: str | None = None,
                   on_queued: Callable[[LeaseEvent], Any] | None = None) -> AsyncIterator[Held]:
        """``async with client.hold("gpu") as lease:`` waits for the grant (calling
        ``on_queued`` with each QUEUED event), and releases the lease when the block ends,
        however it ends. Raises the Acquire error if not granted; a lease that ends
        before the grant is seen raises :class:`agen.LeaseLost`."""
        core = self._lease_core(resource, units=units, exclusive=exclusive, timeout=timeout, ttl=ttl,
                                detached=detached, description=description)
        gen = make_lease(core)
        try:
            granted = None
            async for ev in gen:
                if ev.type is LeaseEventType.QUEUED:
                    if on_queued is not None:
                        on_queued(ev)
                    continue
                if ev.type is LeaseEventType.GRANTED:
                    granted = ev
                    break
                if ev.type.final:
                    raise LeaseLost(ev)
            if granted is None:
                raise LeaseLost(None)
            yield Held(granted, gen, core)
        finally:
            await gen.aclose()

    async def watch(self, resource: str | None = None, lease: str | None = None, *,
                    on_ready: Callable[[], Any] | None = None) -> AsyncGenerator[WatchEvent, None]:
        """Events as they happen, on a connection of its own: of one resource, one lease
        (then it returns after the event that ended the lease; NoSuchLease if it has
        already ended) or all. ``on_ready`` is called once the watch is in effect (agend
        has sent its first reply): no later event is missed."""
        params: dict[str, Any] = {}
        if resource is not None:
            params["resource"] = resource
        if lease is not None:
            params["lease"] = lease
        conn = await Connection.open(self._backend, self.address, self.call_timeout, self.max_message)
        try:
            await conn.send("io.agend.Lease.Watch", params, more=True, timeout=self.call_timeout)
            r = await conn.recv(self.call_timeout, "Watch")
            first = True
            while True:
                if r.error is not None:
                    raise error_from_reply(r.error, r.parameters, "io.agend.Lease.Watch")
                if first:
                    first = False
                    if on_ready is not None:
                        on_ready()
                ev = r.parameters.get("event")
                if ev is not None:
                    yield WatchEvent.from_wire(ev)
                if not r.continues:
                    return
                r = await conn.recv(None, "Watch")
        finally:
            conn.close()


class LeaseLost(Exception):
    """The lease of a ``hold()`` ended before it was granted; ``event`` says how."""

    def __init__(self, event: LeaseEvent | None):
        self.event = event
        super().__init__(f"lease lost before the grant: {event.reason if event else 'no grant'}")


async def connect(address: str | None = None, *, call_timeout: float = DEFAULT_CALL_TIMEOUT,
                  max_message: int = DEFAULT_MAX_MESSAGE) -> Client:
    """Connects to agend: ``address`` a socket path ("unix:PATH" and "@ABSTRACT" work too),
    None for :func:`default_address`. Must be awaited inside a running asyncio loop or
    ``trio.run``; the client belongs to it. ``call_timeout``: how long any call may wait
    for agend's first answer before :class:`CallTimeout` (waiting in a queue is not
    bounded by it). Raises the OSError of connect(2) if nobody listens."""
    _seconds("call_timeout", call_timeout, allow_zero=False)
    backend = current_backend()
    addr = address if address is not None else default_address()
    conn = await Connection.open(backend, addr, call_timeout, max_message)
    return Client(backend, addr, conn, call_timeout, max_message)
