# SPDX-License-Identifier: MIT
"""The lease generator, and how it gives the lease back on every exit path.

Each lease owns one connection (BRIEF §3a): Acquire with "more" waits on it, then a
Watch(lease) stays on it until the lease ends. A background task, the *keeper*, does all
socket work and renews the TTL, so a lease is kept (and reclaimed after a daemon restart)
also while the program is busy between two steps; it hands events to the generator
through a small queue. The generator itself only takes events from that queue.

Letting go, from the best to the last resort:

- ``aclose()``, ``break`` inside ``async with aclosing(...)``, ``shutdown_asyncgens()``,
  cancellation: the generator's ``finally`` runs on the loop. It stops the keeper; a held
  lease gets a Release on the client's control connection, and the reply is awaited (the
  release is committed when ``aclose()`` returns); a wait is withdrawn and agend's end of
  the connection awaited (a cancelled waiter is never granted). Under trio this runs in a
  shielded scope with its own deadline, since trio closes abandoned generators in a
  cancelled scope. If it still cannot finish (the deadline, a second cancellation under
  asyncio, no answer), it falls through to the synchronous path below.
- The generator object dies (``break`` out of ``async for`` with no other reference, the
  last reference dropped on any thread, garbage collection after ``loop.close()`` without
  ``shutdown_asyncgens()``, interpreter exit): a ``weakref.finalize`` on the generator
  runs *before* the loop's finalizer hook is even called, in the thread that dropped it,
  and ends the lease synchronously: ``shutdown(2)`` of the lease connection, which agend
  sees as end of file and answers by releasing the bound lease (a detached lease, which
  EOF does not end, gets a one-way Release written on a blocking connection of its own).
  Nothing there needs the loop; closing the descriptor is then posted to the loop, or done
  at once if the loop is gone.
- The process dies (``os._exit``, SIGKILL): the kernel closes the socket; same EOF.
- ``fork()``: the child closes its copies of every lease connection, so a child that lives
  on (a worker pool) does not keep its parent's leases.
"""

from __future__ import annotations

import collections
import os
import socket
import weakref
from typing import TYPE_CHECKING, Any, AsyncGenerator

from ._errors import BadReply, CallTimeout, ConnectionLost, Error, NoSuchLease, error_from_reply
from ._types import Lease, LeaseEvent, LeaseEventType
from ._wire import Connection, Reply, connect_blocking, encode_call

if TYPE_CHECKING:
    from ._client import Client

RECONNECT_FIRST = 0.05      # s, doubled after each failure
RECONNECT_MAX = 1.0         # s between attempts
# s without the daemon before the lease counts as LOST: covers a restart within agend's
# default grace (10 s), as libagenclient's window does.
RECONNECT_WINDOW = 15.0
ABANDON_RELEASE_TIMEOUT = 0.2

T = LeaseEventType

# Every lease that has a connection, for the fork handler.
_live: weakref.WeakSet[_LeaseCore] = weakref.WeakSet()


class _LeaseCore:
    """The state of one lease generator. It never references the generator object, so
    that the generator can die while the keeper still runs."""

    def __init__(self, client: Client, resource: str, params: dict[str, Any], detached: bool,
                 timeout: float | None):
        self.client = client
        self.backend = client._backend
        self.resource = resource
        self.params = params
        self.detached = detached
        self.acquire_timeout = timeout
        self.conn: Connection | None = None
        self.id: str | None = None
        self.secret: str | None = None
        self.token = 0
        self.ttl: float | None = None
        self.lease: Lease | None = None
        self.granted = False
        self.ended = False          # a final event was queued: nothing to release
        self.abandoned = False      # let go without the loop: nothing more may happen
        self.closing = False        # the generator's cleanup runs: ignore what the keeper sees
        self.closed = False
        self.done = False           # no more events will come
        self.error: BaseException | None = None
        self.final_event: LeaseEvent | None = None
        self.announce: LeaseEventType | None = None     # GRANTED or RECLAIMED, told when watched
        self.disconnected = False   # DISCONNECTED was said, RECLAIMED or the end not yet
        self.events: collections.deque[LeaseEvent] = collections.deque()
        self._wake: Any = None
        self.keeper: Any = None
        self.finalizer: weakref.finalize | None = None

    # ---- events ----

    def _wakeup(self) -> None:
        w, self._wake = self._wake, None
        if w is not None:
            w.set()

    def push(self, type: LeaseEventType, *, position: int = 0, reason: str | None = None) -> None:
        if self.abandoned or self.closing:
            return
        if type in (T.QUEUED, T.RENEWED) and self.events and self.events[-1].type == type:
            # Only the latest position matters, and renewals nobody has read yet are one
            # renewal: a lease nobody steps does not pile up events.
            self.events.pop()
        ev = LeaseEvent(type, self.resource, self.id, self.token, position, reason,
                        self.lease if type in (T.GRANTED, T.RENEWED, T.RECLAIMED) else None)
        self.disconnected = type is T.DISCONNECTED
        self.events.append(ev)
        if type.final:
            self.final_event = ev
            self.ended = True
            self.finish(None)
        self._wakeup()

    def finish(self, error: BaseException | None) -> None:
        if not self.done:
            self.done = True
            self.error = error
        if self.conn is not None and not self.abandoned:
            self.conn.close()
            self.conn = None
        self._wakeup()

    async def next(self) -> LeaseEvent | None:
        """The next event; None when the generator should return; raises the error that
        ended the lease before it was granted."""
        while not self.events and not self.done:
            if self.abandoned:
                return None
            ev = self.backend.event()
            self._wake = ev
            await ev.wait()
        if self.events:
            return self.events.popleft()
        if self.error is not None:
            e, self.error = self.error, None
            raise e
        return None

    # ---- the keeper ----

    def start(self) -> None:
        if not self.backend.is_current():
            raise RuntimeError("a lease generator must run on the loop (or trio run) of its client")
        self.keeper = self.backend.spawn(self._keep)

    async def _keep(self) -> None:
        try:
            await self._run()
        except BaseException as e:
            if self.backend.is_cancellation(e):
                raise
            if not isinstance(e, Exception):
                raise
            if not (self.abandoned or self.closing):
                if self.granted and not self.ended:
                    self.push(T.LOST, reason=f"lease client failed: {e}")
                else:
                    self.finish(e)

    async def _connect(self) -> None:
        self.conn = await Connection.open(self.backend, self.client.address, self.client.call_timeout,
                                          self.client.max_message)
        _live.add(self)

    async def _run(self) -> None:
        await self._connect()
        reconnected = False
        while True:
            try:
                if not self.granted:
                    await self._acquire()
                elif reconnected:
                    await self._reclaim()
                if self.done:
                    return
                await self._watch()
                return
            except ConnectionLost as e:
                if self.abandoned or self.closing or self.done:
                    return
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                if self.granted:
                    # Said at once: until RECLAIMED the holder must assume the lease may be
                    # gone. A waiter just asks again (as libagenclient: no event).
                    self.push(T.DISCONNECTED, reason=f"connection to agend lost ({e})")
                if not await self._reconnect():
                    return
                reconnected = True

    async def _reconnect(self) -> bool:
        deadline = self.backend.now() + RECONNECT_WINDOW
        backoff = RECONNECT_FIRST
        while True:
            await self.backend.sleep(backoff)
            if self.abandoned or self.closing:
                return False
            try:
                await self._connect()
                return True
            except (OSError, Error) as e:
                if self.backend.now() >= deadline:
                    if self.granted:
                        self.push(T.LOST, reason=f"agend unreachable: {e}")
                    else:
                        self.finish(e)
                    return False
            backoff = min(backoff * 2, RECONNECT_MAX)

    async def _acquire(self) -> None:
        assert self.conn is not None
        conn = self.conn
        what = f"Acquire {self.resource!r}"
        await conn.send("io.agend.Lease.Acquire", self.params, more=True, timeout=self.client.call_timeout)
        # The first reply (queued or granted) comes at once; later ones only as the queue
        # moves, so only the first is bounded (and all of them by the wait's own timeout).
        limit = self.client.call_timeout
        if self.acquire_timeout is not None:
            limit += self.acquire_timeout
        r = await conn.recv(self.client.call_timeout, what)
        deadline = None if self.acquire_timeout is None else self.backend.now() + limit
        while True:
            if r.error is not None:
                self.finish(error_from_reply(r.error, r.parameters, "io.agend.Lease.Acquire"))
                return
            state = r.parameters.get("state")
            if state == "queued":
                pos = r.parameters.get("position", 0)
                if not isinstance(pos, int) or isinstance(pos, bool) or not r.continues:
                    raise BadReply(f"{what}: a queued reply that is not one: {r.parameters!r}")
                ticket = r.parameters.get("ticket")
                if isinstance(ticket, str):
                    # Asked again after a restart, the ticket keeps this waiter's place.
                    self.params["ticket"] = ticket
                self.push(T.QUEUED, position=pos)
            elif state == "granted":
                # GRANTED is told once the Watch is in effect (_watch), so that every end
                # after it is seen as what it was.
                self._take_grant(r.parameters, what)
                self.announce = T.GRANTED
                return
            else:
                raise BadReply(f"{what}: unexpected reply: {r.parameters!r}")
            nr = await conn.recv_until(deadline, what)
            if nr is None:
                raise CallTimeout(f"{what}: no grant nor Timeout from agend within {limit:g} s")
            r = nr

    def _take_grant(self, p: dict[str, Any], what: str) -> None:
        lease = Lease.from_wire(p.get("lease"))
        secret = p.get("secret")
        if not isinstance(secret, str) or not secret or not lease.id or lease.token < 1:
            raise BadReply(f"{what}: a grant without lease id, token or secret: {p!r}")
        self.lease = lease
        self.id = lease.id
        self.token = lease.token
        self.secret = secret
        self.ttl = lease.ttl
        self.granted = True

    async def _reclaim(self) -> None:
        assert self.conn is not None
        if not self.detached:
            await self.conn.send("io.agend.Lease.Reclaim", {"id": self.id, "token": self.token, "secret": self.secret},
                                 timeout=self.client.call_timeout)
            r = await self.conn.recv(self.client.call_timeout, "Reclaim")
            if r.error is not None:
                self.push(T.LOST, reason=f"not reclaimed after a daemon restart: {r.error}")
                return
            try:
                self.lease = Lease.from_wire(r.parameters.get("lease"))
            except BadReply:
                pass
        # A detached lease is not bound to a connection: watching it again is all, and the
        # Watch answers NoSuchLease if it ended meanwhile.
        self.announce = T.RECLAIMED

    async def _ended_before_watch(self, r: Reply) -> None:
        """The lease ended between the grant (or reconnection) and the Watch: History
        says how."""
        kind, reason = None, None
        try:
            p = await self.client._call("io.agend.Lease.History", {"resource": self.resource})
            for ev in reversed(p.get("events") or []):
                if isinstance(ev, dict) and ev.get("lease") == self.id and \
                        ev.get("type") in ("expired", "revoked", "released", "voided"):
                    kind, reason = ev["type"], ev.get("reason")
                    break
        except (OSError, Error):
            pass
        reason = reason if isinstance(reason, str) else None
        if kind == "expired":
            self.push(T.EXPIRED, reason=reason or "ttl")
        elif kind == "revoked":
            self.push(T.REVOKED, reason=reason or "revoked")
        elif kind is not None:
            self.push(T.LOST, reason=f"{kind}: {reason}" if reason else kind)
        else:
            why = r.parameters.get("reason")
            self.push(T.LOST, reason=f"{r.error}: {why}" if isinstance(why, str) else r.error)

    async def _renew(self) -> None:
        try:
            p = await self.client._call("io.agend.Lease.Renew", {"id": self.id, "secret": self.secret})
        except (OSError, Error):
            return      # the Watch reports an end; else the next tick tries again
        try:
            self.lease = Lease.from_wire(p.get("lease"))
        except BadReply:
            pass
        if not (self.ended or self.closing or self.abandoned):
            self.push(T.RENEWED)

    async def _watch(self) -> None:
        assert self.conn is not None
        conn = self.conn
        await conn.send("io.agend.Lease.Watch", {"lease": self.id}, more=True, timeout=self.client.call_timeout)
        r: Reply | None = await conn.recv(self.client.call_timeout, "Watch")
        if self.announce is not None:
            self.push(self.announce)
            self.announce = None
        every = self.ttl / 3 if self.ttl else None
        next_renew = None if every is None else self.backend.now() + every
        while True:
            if r is not None:
                if self.closing or self.abandoned:
                    return
                if r.error is not None:
                    await self._ended_before_watch(r)
                    return
                ev = r.parameters.get("event")
                if ev is not None:
                    if not isinstance(ev, dict):
                        raise BadReply(f"Watch: not an event: {ev!r}")
                    kind, reason = ev.get("type"), ev.get("reason")
                    reason = reason if isinstance(reason, str) else None
                    if kind == "expired":
                        self.push(T.EXPIRED, reason=reason or "ttl")
                        return
                    if kind == "revoked":
                        self.push(T.REVOKED, reason=reason or "revoked")
                        return
                    if kind in ("released", "voided"):
                        self.push(T.LOST, reason=f"{kind}: {reason}" if reason else kind)
                        return
                    # A Scope=cluster lease: agend cannot renew its etcd lease.
                    if kind == "disconnected":
                        self.push(T.DISCONNECTED, reason=reason or "agend cannot renew its etcd lease")
                    elif kind == "reclaimed" and self.disconnected:
                        self.push(T.RECLAIMED)
                if not r.continues:
                    # The Watch of a lease ends with the lease; an end without its event is
                    # still an end.
                    self.push(T.LOST, reason="watch ended")
                    return
            if next_renew is not None and self.backend.now() >= next_renew:
                await self._renew()
                assert every is not None
                next_renew = self.backend.now() + every
                if self.done or self.closing or self.abandoned:
                    return
            r = await conn.recv_until(next_renew, "Watch")

    # ---- letting go ----

    def abandon(self) -> None:
        """The generator object died (weakref.finalize): any thread, any moment, no loop
        needed. Ends the lease at kernel level, then leaves the descriptor to the loop."""
        if self.closed or self.abandoned:
            return
        self.abandoned = True
        if self.keeper is not None:
            # A loop that is closed, or never runs again, cannot finish the keeper; it is
            # ours, not the program's: its end is no news ("Task was destroyed but it is
            # pending").
            self.backend.forget(self.keeper)
        conn = self.conn
        if self.granted and not self.ended and self.detached and self.id:
            _release_oneway(self.client.address, self.id, self.secret)
        if conn is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if not self.backend.post(self._close_on_loop):
            self._close_on_loop()   # the loop is gone: nobody else can touch the socket

    def _close_on_loop(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.keeper is not None:
            try:
                self.keeper.cancel()
            except RuntimeError:
                pass
            self.backend.forget(self.keeper)
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except (OSError, RuntimeError):
                conn.sock.close()
        _live.discard(self)
        self._wakeup_quietly()

    def _wakeup_quietly(self) -> None:
        try:
            self._wakeup()
        except RuntimeError:
            pass

    async def aclose(self) -> None:
        """The generator's cleanup, on the loop."""
        if self.finalizer is not None:
            self.finalizer.detach()
        if self.closed:
            return
        if self.abandoned:
            self._close_on_loop()
            return
        self.closing = True
        if self.keeper is not None:
            self.keeper.cancel()
        held = self.granted and not self.ended and self.id is not None
        finished = False
        try:
            # Shielded under trio (bounded): a cleanup after a cancellation still releases
            # with a confirmed round trip; if even that cannot finish, abandon() below.
            with self.backend.cleanup_scope(self.client.call_timeout + 1):
                if not held and self.conn is not None and not self.done:
                    # The keeper waits on the socket too: one waiter per socket at a time.
                    if self.keeper is not None:
                        await self.backend.join(self.keeper)
                    if self.conn is not None:
                        await self._withdraw(self.conn)
                if held:
                    try:
                        await self.client._call("io.agend.Lease.Release", {"id": self.id, "secret": self.secret})
                    except NoSuchLease:
                        pass        # it ended meanwhile, which is what we asked for
                    except (ConnectionLost, CallTimeout, BadReply, OSError):
                        # No answer: closing our connection still releases a bound lease.
                        if self.detached:
                            raise
                finished = True
            if not finished:
                self.abandon()
        except BaseException:
            self.abandon()
            raise
        finally:
            self._close_on_loop()

    async def _withdraw(self, conn: Connection) -> None:
        """Ends a wait and waits until agend has seen it end: we stop writing, it reads
        end of file, drops the waiter and closes its side. Without waiting, a release of
        the resource that agend handles first could still grant it to us."""
        conn.sock.shutdown(socket.SHUT_WR)
        deadline = self.backend.now() + self.client.call_timeout
        try:
            while await conn.recv_until(deadline, "withdrawing Acquire") is not None:
                pass
        except (ConnectionLost, BadReply):
            pass


def _close_in_child() -> None:
    for core in list(_live):
        conn = core.conn
        if conn is not None:
            try:
                conn.sock.close()   # this process's copy only; the parent keeps its lease
            except OSError:
                pass
            core.conn = None
        core.abandoned = True


os.register_at_fork(after_in_child=_close_in_child)


def _release_oneway(address: str, id: str, secret: str | None) -> None:
    """Release without a loop: a one-way call on a blocking connection of its own."""
    try:
        s = connect_blocking(address, ABANDON_RELEASE_TIMEOUT)
    except OSError:
        return
    try:
        s.sendall(encode_call("io.agend.Lease.Release", {"id": id, "secret": secret}, oneway=True))
    except OSError:
        pass
    finally:
        s.close()


async def lease_generator(core: _LeaseCore) -> AsyncGenerator[LeaseEvent, None]:
    try:
        core.start()
        while True:
            ev = await core.next()
            if ev is None:
                return
            yield ev
    finally:
        await core.aclose()


def make_lease(core: _LeaseCore) -> AsyncGenerator[LeaseEvent, None]:
    gen = lease_generator(core)
    core.finalizer = weakref.finalize(gen, core.abandon)
    return gen
