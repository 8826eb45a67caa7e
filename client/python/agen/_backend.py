# SPDX-License-Identifier: MIT
"""The few things the client needs from its event loop, for asyncio and for trio.

Sockets are plain non-blocking standard-library sockets; the loop is used only to wait for
one to become readable or writable, to sleep, and to run a background task. Nothing is
registered with the loop while no task waits on a socket, so a socket can always be ended
at kernel level (``shutdown(2)``), from any thread, whatever the loop is doing; closing the
file descriptor itself is done on the loop (``close_socket``), or directly once the loop is
gone (``post`` tells which).

trio is not imported by this package: a trio backend is chosen only when trio is already
imported and the calling code runs inside ``trio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import sys
import threading
import time
from typing import Any, Callable, Coroutine, Protocol


class Handle(Protocol):
    def cancel(self) -> Any: ...


class Backend:
    """Interface; see AsyncioBackend and TrioBackend."""

    name = ""

    def is_current(self) -> bool: raise NotImplementedError
    async def wait_readable(self, sock: socket.socket, timeout: float | None) -> bool: raise NotImplementedError
    async def wait_writable(self, sock: socket.socket, timeout: float | None) -> bool: raise NotImplementedError
    async def sleep(self, seconds: float) -> None: raise NotImplementedError
    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> Handle: raise NotImplementedError
    def event(self) -> Any: raise NotImplementedError
    def lock(self) -> Any: raise NotImplementedError
    def is_cancellation(self, e: BaseException) -> bool: raise NotImplementedError
    def close_socket(self, sock: socket.socket) -> None: raise NotImplementedError
    def post(self, fn: Callable[[], None]) -> bool: raise NotImplementedError
    def forget(self, handle: Handle) -> None: pass
    async def join(self, handle: Handle) -> None: raise NotImplementedError
    def cleanup_scope(self, timeout: float) -> Any: raise NotImplementedError

    @staticmethod
    def now() -> float:
        return time.monotonic()


class AsyncioBackend(Backend):
    name = "asyncio"

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.thread = threading.get_ident()

    def is_current(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    async def _wait(self, sock: socket.socket, timeout: float | None, write: bool) -> bool:
        loop = self.loop
        fd = sock.fileno()
        if fd < 0:
            raise OSError(9, "socket closed")
        fut: asyncio.Future[bool] = loop.create_future()

        def ready(value: bool) -> None:
            if not fut.done():
                fut.set_result(value)

        (loop.add_writer if write else loop.add_reader)(fd, ready, True)
        timer = loop.call_later(timeout, ready, False) if timeout is not None else None
        try:
            return await fut
        finally:
            if timer:
                timer.cancel()
            # Only if it is still our socket: close_socket() may have closed it and the
            # number may belong to another socket by now.
            if sock.fileno() == fd:
                (loop.remove_writer if write else loop.remove_reader)(fd)

    async def wait_readable(self, sock: socket.socket, timeout: float | None) -> bool:
        return await self._wait(sock, timeout, False)

    async def wait_writable(self, sock: socket.socket, timeout: float | None) -> bool:
        return await self._wait(sock, timeout, True)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> Handle:
        return self.loop.create_task(fn())

    def cleanup_scope(self, timeout: float) -> Any:
        # asyncio delivers a cancellation once: the awaits of a cleanup that follows it
        # run. The caller bounds them with its own timeouts.
        return contextlib.nullcontext()

    async def join(self, handle: Handle) -> None:
        assert isinstance(handle, asyncio.Task)
        if not handle.done():
            await asyncio.wait([handle])

    def event(self) -> Any:
        return asyncio.Event()

    def lock(self) -> Any:
        return asyncio.Lock()

    def is_cancellation(self, e: BaseException) -> bool:
        return isinstance(e, asyncio.CancelledError)

    def close_socket(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd >= 0 and not self.loop.is_closed():
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        sock.close()

    def post(self, fn: Callable[[], None]) -> bool:
        try:
            self.loop.call_soon_threadsafe(fn)
            return True
        except RuntimeError:        # the loop is closed
            return False

    def forget(self, handle: Handle) -> None:
        if isinstance(handle, asyncio.Task):
            handle._log_destroy_pending = False  # type: ignore[attr-defined]


class _TrioTask:
    def __init__(self, finished: Any) -> None:
        self.scope: Any = None
        self.cancelled = False
        self.finished = finished

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class TrioBackend(Backend):
    name = "trio"

    def __init__(self, trio: Any):
        self.trio = trio
        self.token = trio.lowlevel.current_trio_token()

    def is_current(self) -> bool:
        try:
            return self.trio.lowlevel.current_trio_token() is self.token
        except RuntimeError:
            return False

    async def _wait(self, sock: socket.socket, timeout: float | None, write: bool) -> bool:
        trio = self.trio
        with trio.move_on_after(math.inf if timeout is None else max(timeout, 0)):
            if write:
                await trio.lowlevel.wait_writable(sock)
            else:
                await trio.lowlevel.wait_readable(sock)
            return True
        return False

    async def wait_readable(self, sock: socket.socket, timeout: float | None) -> bool:
        try:
            return await self._wait(sock, timeout, False)
        except self.trio.ClosedResourceError as e:
            raise OSError(9, "socket closed") from e

    async def wait_writable(self, sock: socket.socket, timeout: float | None) -> bool:
        try:
            return await self._wait(sock, timeout, True)
        except self.trio.ClosedResourceError as e:
            raise OSError(9, "socket closed") from e

    async def sleep(self, seconds: float) -> None:
        await self.trio.sleep(seconds)

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> Handle:
        # A system task: it needs no nursery from the caller, and trio cancels it when the
        # main task ends. It must not raise (trio would call that an internal error): the
        # functions passed here catch everything but cancellation.
        trio = self.trio
        task = _TrioTask(trio.Event())

        async def run() -> None:
            try:
                with trio.CancelScope() as scope:
                    task.scope = scope
                    if task.cancelled:
                        scope.cancel()
                    await fn()
            finally:
                task.finished.set()

        trio.lowlevel.spawn_system_task(run)
        return task

    def cleanup_scope(self, timeout: float) -> Any:
        # A cancelled scope stays cancelled, so a cleanup after a cancellation could not
        # await at all: shield the release round trip, bounded by its own deadline
        # (cancelled_caught then tells that it did not finish).
        return self.trio.CancelScope(shield=True, deadline=self.trio.current_time() + timeout)

    async def join(self, handle: Handle) -> None:
        assert isinstance(handle, _TrioTask)
        await handle.finished.wait()

    def event(self) -> Any:
        return self.trio.Event()

    def lock(self) -> Any:
        return self.trio.Lock()

    def is_cancellation(self, e: BaseException) -> bool:
        return isinstance(e, self.trio.Cancelled)

    def close_socket(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0:
            try:
                self.trio.lowlevel.notify_closing(sock)
            except RuntimeError:    # outside the run: nobody can be waiting
                pass
        sock.close()

    def post(self, fn: Callable[[], None]) -> bool:
        try:
            self.token.run_sync_soon(fn)
            return True
        except self.trio.RunFinishedError:
            return False


def current_backend() -> Backend:
    """The backend of the code calling: trio inside trio.run, else the running asyncio loop."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
            return TrioBackend(trio)
        except RuntimeError:
            pass
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("agen needs a running asyncio event loop or trio.run()") from None
    return AsyncioBackend(loop)
