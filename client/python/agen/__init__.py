# SPDX-License-Identifier: MIT
"""agen: machine-local resource leases from agend, held in async generators.

Pure Python, standard library only, for asyncio and trio::

    client = await agen.connect()
    async for event in client.lease("gpu"):
        if event.type is agen.GRANTED:
            ...                     # hold it; `break` gives it back at once
            break

    async with client.hold("gpu") as lease:
        ...                         # released when the block ends

Every way a program lets go of a lease gives it back: ``aclose()``, ``break``, garbage
collection on any thread, a loop closed without ``shutdown_asyncgens()``, interpreter exit,
``os._exit()`` or SIGKILL. See docs/python.md.
"""

from ._client import Client, Held, LeaseLost, connect, default_address
from ._errors import (BadReply, CallTimeout, ConnectionLost, Error, ExpectedMore, InterfaceNotFound,
                      InvalidParameter, LimitExceeded, MethodNotFound, MethodNotImplemented, NoSuchLease,
                      NoSuchResource, PermissionDenied, ProtocolError, Timeout, VarlinkError)
from ._types import Lease, LeaseEvent, LeaseEventType, Listing, Owner, Resource, Status, Waiter, WatchEvent

__version__ = "0.1.0"

QUEUED = LeaseEventType.QUEUED
GRANTED = LeaseEventType.GRANTED
RENEWED = LeaseEventType.RENEWED
DISCONNECTED = LeaseEventType.DISCONNECTED
RECLAIMED = LeaseEventType.RECLAIMED
LOST = LeaseEventType.LOST
REVOKED = LeaseEventType.REVOKED
EXPIRED = LeaseEventType.EXPIRED

__all__ = [
    "connect", "default_address", "Client", "Held", "LeaseLost",
    "LeaseEvent", "LeaseEventType", "QUEUED", "GRANTED", "RENEWED", "DISCONNECTED", "RECLAIMED", "LOST",
    "REVOKED", "EXPIRED",
    "Lease", "Owner", "Waiter", "Listing", "Resource", "Status", "WatchEvent",
    "Error", "VarlinkError", "NoSuchLease", "NoSuchResource", "Timeout", "PermissionDenied", "LimitExceeded",
    "ProtocolError", "InvalidParameter", "MethodNotFound", "MethodNotImplemented", "InterfaceNotFound",
    "ExpectedMore", "ConnectionLost", "CallTimeout", "BadReply",
]
