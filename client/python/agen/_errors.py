# SPDX-License-Identifier: MIT
"""Exceptions: one class per varlink error agend sends, and the local failures.

A varlink error reply becomes an instance of the class named after it (``Timeout`` for
``io.agend.Lease.Timeout``, ``InvalidParameter`` for ``org.varlink.service.InvalidParameter``);
an error name this module does not know becomes a plain :class:`VarlinkError`. Failures on
our side of the socket are :class:`ConnectionLost`, :class:`CallTimeout` and
:class:`BadReply`; failing to connect raises the :class:`OSError` of ``connect(2)``.
"""

from __future__ import annotations

from typing import Any


class Error(Exception):
    """Base class of every exception this package raises (except OSError from connect)."""


class VarlinkError(Error):
    """An error reply from agend. ``name`` is the varlink error name, ``parameters`` its
    parameters (``reason`` is the daemon's explanation, in words for a person)."""

    varlink_name: str = ""

    def __init__(self, name: str, parameters: dict[str, Any] | None = None, method: str | None = None):
        self.name = name
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.method = method
        reason = self.parameters.get("reason")
        text = name
        if method:
            text = f"{method}: {name}"
        if isinstance(reason, str) and reason:
            text += f": {reason}"
        super().__init__(text)

    @property
    def reason(self) -> str | None:
        r = self.parameters.get("reason")
        return r if isinstance(r, str) else None


class NoSuchLease(VarlinkError):
    """``io.agend.Lease.NoSuchLease``: no lease with this id (it has ended)."""
    varlink_name = "io.agend.Lease.NoSuchLease"


class NoSuchResource(VarlinkError):
    """``io.agend.Lease.NoSuchResource``: the resource is not declared and may not be created."""
    varlink_name = "io.agend.Lease.NoSuchResource"


class Timeout(VarlinkError, TimeoutError):
    """``io.agend.Lease.Timeout``: not granted in time (or busy, for a try-once)."""
    varlink_name = "io.agend.Lease.Timeout"


class PermissionDenied(VarlinkError, PermissionError):
    """``io.agend.Lease.PermissionDenied`` (or ``org.varlink.service.PermissionDenied``)."""
    varlink_name = "io.agend.Lease.PermissionDenied"


class LimitExceeded(VarlinkError):
    """``io.agend.Lease.LimitExceeded``: a per-uid limit on connections, leases or waiters."""
    varlink_name = "io.agend.Lease.LimitExceeded"


class ProtocolError(VarlinkError):
    """``io.agend.Lease.ProtocolError``: agend refused what was sent; it closes the connection."""
    varlink_name = "io.agend.Lease.ProtocolError"


class InvalidParameter(VarlinkError, ValueError):
    """``org.varlink.service.InvalidParameter``: ``parameters["parameter"]`` names it."""
    varlink_name = "org.varlink.service.InvalidParameter"


class MethodNotFound(VarlinkError):
    """``org.varlink.service.MethodNotFound``: this agend does not have the method (older)."""
    varlink_name = "org.varlink.service.MethodNotFound"


class MethodNotImplemented(VarlinkError):
    """``org.varlink.service.MethodNotImplemented``."""
    varlink_name = "org.varlink.service.MethodNotImplemented"


class InterfaceNotFound(VarlinkError):
    """``org.varlink.service.InterfaceNotFound``."""
    varlink_name = "org.varlink.service.InterfaceNotFound"


class ExpectedMore(VarlinkError):
    """``org.varlink.service.ExpectedMore``."""
    varlink_name = "org.varlink.service.ExpectedMore"


_BY_NAME: dict[str, type[VarlinkError]] = {
    c.varlink_name: c
    for c in (NoSuchLease, NoSuchResource, Timeout, PermissionDenied, LimitExceeded, ProtocolError,
              InvalidParameter, MethodNotFound, MethodNotImplemented, InterfaceNotFound, ExpectedMore)
}
_BY_NAME["org.varlink.service.PermissionDenied"] = PermissionDenied


def error_from_reply(name: str, parameters: dict[str, Any] | None, method: str | None = None) -> VarlinkError:
    """The exception for an error reply: the class named after it, else VarlinkError."""
    return _BY_NAME.get(name, VarlinkError)(name, parameters, method)


class ConnectionLost(Error, ConnectionError):
    """The connection to agend ended (the daemon stopped or closed it) during a call."""


class CallTimeout(Error, TimeoutError):
    """agend did not answer in time: it hangs, or something else listens on the socket."""


class BadReply(Error):
    """What came back is not a varlink reply agend would send (not JSON, a wrong shape, a
    message over the size limit). The connection it came on is closed."""
