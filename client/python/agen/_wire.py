# SPDX-License-Identifier: MIT
"""Varlink over a Unix stream socket: NUL-terminated JSON messages, one call at a time.

A Connection is a non-blocking socket and a receive buffer. Every wait for a reply takes a
timeout (or a deadline the caller computes), so a peer that never answers ends as
CallTimeout, and anything that is not a varlink reply ends as BadReply, with the bytes
that were wrong in the message.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from ._backend import Backend
from ._errors import BadReply, CallTimeout, ConnectionLost

DEFAULT_MAX_MESSAGE = 64 << 20
_CHUNK = 256 << 10


@dataclass
class Reply:
    parameters: dict[str, Any]
    error: str | None
    continues: bool


def socket_path(address: str) -> str:
    """"unix:PATH" and "@ABSTRACT" as libagenclient reads them."""
    if address.startswith("unix:"):
        address = address[5:]
    if address.startswith("@"):
        return "\0" + address[1:]
    return address


def _excerpt(data: bytes) -> str:
    text = data[:120].decode("utf-8", "backslashreplace")
    return repr(text) + ("..." if len(data) > 120 else "")


def parse_reply(data: bytes) -> Reply:
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadReply(f"not JSON ({e}): {_excerpt(data)}") from None
    if not isinstance(msg, dict):
        raise BadReply(f"not a varlink reply (not an object): {_excerpt(data)}")
    params = msg.get("parameters", {})
    if params is None:
        params = {}
    error = msg.get("error")
    continues = msg.get("continues", False)
    if not isinstance(params, dict) or not (error is None or isinstance(error, str)) or \
            not isinstance(continues, bool):
        raise BadReply(f"not a varlink reply (wrong field types): {_excerpt(data)}")
    return Reply(params, error, continues)


def connect_blocking(address: str, timeout: float) -> socket.socket:
    """A blocking connection, for the last-resort paths that have no loop."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        s.connect(socket_path(address))
    except BaseException:
        s.close()
        raise
    return s


def encode_call(method: str, parameters: dict[str, Any] | None, *, more: bool = False,
                oneway: bool = False) -> bytes:
    msg: dict[str, Any] = {"method": method}
    if parameters:
        msg["parameters"] = parameters
    if more:
        msg["more"] = True
    if oneway:
        msg["oneway"] = True
    return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode() + b"\0"


class Connection:
    def __init__(self, backend: Backend, sock: socket.socket, address: str, max_message: int):
        self.backend = backend
        self.sock = sock
        self.address = address
        self.max_message = max_message
        self._buf = bytearray()
        self._scanned = 0       # bytes of _buf known to hold no NUL
        self.closed = False

    @classmethod
    async def open(cls, backend: Backend, address: str, timeout: float,
                   max_message: int = DEFAULT_MAX_MESSAGE) -> Connection:
        """Connects; OSError (with the address as its filename) if nobody listens, or
        CallTimeout if the listen backlog stays full."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            try:
                s.connect(socket_path(address))
            except (BlockingIOError, InterruptedError):
                if not await backend.wait_writable(s, timeout):
                    raise CallTimeout(f"connecting to agend at {address}: no answer within {timeout:g} s") from None
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
        except OSError as e:
            s.close()
            if isinstance(e, CallTimeout):
                raise
            # The errno's own class (FileNotFoundError, ...), naming the address.
            raise type(e)(e.errno, e.strerror, address) from None
        except BaseException:
            s.close()
            raise
        return cls(backend, s, address, max_message)

    def looks_alive(self) -> bool:
        """Before reusing an idle connection: False if the peer has closed it (a daemon
        restart) or sent something nobody asked for, without waiting."""
        if self.closed or self._buf:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True     # nothing to read: idle and open
        except OSError:
            pass
        return False        # end of file, an error, or stray bytes

    def close(self) -> None:
        """Closes the socket (on the loop's thread). Idempotent."""
        if not self.closed:
            self.closed = True
            self.backend.close_socket(self.sock)

    async def send(self, method: str, parameters: dict[str, Any] | None = None, *, more: bool = False,
                   oneway: bool = False, timeout: float | None = None) -> None:
        data = memoryview(encode_call(method, parameters, more=more, oneway=oneway))
        deadline = None if timeout is None else self.backend.now() + timeout
        while data:
            try:
                n = self.sock.send(data, socket.MSG_NOSIGNAL)
                data = data[n:]
            except (BlockingIOError, InterruptedError):
                left = None if deadline is None else deadline - self.backend.now()
                if (left is not None and left <= 0) or not await self.backend.wait_writable(self.sock, left):
                    raise CallTimeout(f"{method}: agend at {self.address} takes no input") from None
            except OSError as e:
                raise ConnectionLost(f"{method}: connection to agend at {self.address} lost: {e.strerror}") from e

    def _take(self) -> bytes | None:
        i = self._buf.find(0, self._scanned)
        if i < 0:
            self._scanned = len(self._buf)
            if len(self._buf) > self.max_message:
                raise BadReply(f"a message from agend at {self.address} is over {self.max_message} bytes")
            return None
        data = bytes(self._buf[:i])
        del self._buf[:i + 1]
        self._scanned = 0
        return data

    async def recv_until(self, deadline: float | None, what: str) -> Reply | None:
        """The next reply, or None once the deadline (monotonic seconds) has passed."""
        while True:
            data = self._take()
            if data is not None:
                return parse_reply(data)
            try:
                chunk = self.sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                left = None if deadline is None else deadline - self.backend.now()
                if left is not None and left <= 0:
                    return None
                try:
                    ready = await self.backend.wait_readable(self.sock, left)
                except OSError as e:
                    raise ConnectionLost(f"{what}: connection closed") from e
                if not ready:
                    return None
                continue
            except OSError as e:
                raise ConnectionLost(f"{what}: connection to agend at {self.address} lost: {e.strerror}") from e
            if not chunk:
                raise ConnectionLost(f"{what}: agend at {self.address} closed the connection")
            self._buf += chunk

    async def recv(self, timeout: float | None, what: str) -> Reply:
        """The next reply within timeout seconds (None: no limit), else CallTimeout."""
        deadline = None if timeout is None else self.backend.now() + timeout
        r = await self.recv_until(deadline, what)
        if r is None:
            raise CallTimeout(f"{what}: agend at {self.address} did not answer within {timeout:g} s")
        return r
