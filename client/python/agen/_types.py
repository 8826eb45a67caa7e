# SPDX-License-Identifier: MIT
"""The records agend sends (docs/io.agend.Lease.varlink), as frozen dataclasses.

Each ``from_wire`` checks the types of the fields it reads and raises BadReply for a wrong
one; fields it does not know are ignored, so a newer agend with more fields still works.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

from ._errors import BadReply

_MISSING = object()


def _get(d: Mapping[str, Any], key: str, types: type | tuple[type, ...], what: str, default: Any = _MISSING) -> Any:
    v = d.get(key, None)
    if v is None:
        if default is _MISSING:
            raise BadReply(f"{what}: field {key!r} is missing")
        return default
    # bool is an int in Python; a JSON true is not a number here.
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,))):
        raise BadReply(f"{what}: field {key!r} has the wrong type: {v!r}")
    return v


def _obj(d: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise BadReply(f"{what}: not an object: {d!r}")
    return d


def _float(d: Mapping[str, Any], key: str, what: str, default: Any = _MISSING) -> Any:
    v = _get(d, key, (int, float), what, default)
    return float(v) if v is not None and v is not default else v


@dataclass(frozen=True)
class Owner:
    """Who holds or waits, as the kernel reported it (SO_PEERCRED)."""
    uid: int
    gid: int
    pid: int
    comm: str
    unit: str | None = None

    @classmethod
    def from_wire(cls, d: Any) -> Owner:
        d = _obj(d, "owner")
        return cls(_get(d, "uid", int, "owner"), _get(d, "gid", int, "owner"), _get(d, "pid", int, "owner"),
                   _get(d, "comm", str, "owner"), _get(d, "unit", str, "owner", None))


@dataclass(frozen=True)
class Lease:
    """A lease as List, Renew and the grant describe it. ``created`` and ``deadline`` are
    microseconds since the epoch (for display); ``ttl`` is seconds."""
    id: str
    resource: str
    units: int
    exclusive: bool
    token: int
    owner: Owner
    description: str
    created: int
    ttl: float | None
    deadline: int | None
    detached: bool
    state: str

    @classmethod
    def from_wire(cls, d: Any) -> Lease:
        d = _obj(d, "lease")
        w = "lease"
        return cls(_get(d, "id", str, w), _get(d, "resource", str, w), _get(d, "units", int, w),
                   _get(d, "exclusive", bool, w, False), _get(d, "token", int, w),
                   Owner.from_wire(_get(d, "owner", dict, w)), _get(d, "description", str, w, ""),
                   _get(d, "created", int, w, 0), _float(d, "ttl", w, None), _get(d, "deadline", int, w, None),
                   _get(d, "detached", bool, w, False), _get(d, "state", str, w, "held"))


@dataclass(frozen=True)
class Waiter:
    resource: str
    units: int
    exclusive: bool
    position: int
    owner: Owner
    description: str
    since: int
    # "waiting", or "reclaimable" for a place restored after a daemon restart whose waiter
    # has not come back with its ticket yet.
    state: str = "waiting"

    @classmethod
    def from_wire(cls, d: Any) -> Waiter:
        d = _obj(d, "waiter")
        w = "waiter"
        return cls(_get(d, "resource", str, w), _get(d, "units", int, w), _get(d, "exclusive", bool, w, False),
                   _get(d, "position", int, w), Owner.from_wire(_get(d, "owner", dict, w)),
                   _get(d, "description", str, w, ""), _get(d, "since", int, w, 0),
                   _get(d, "state", str, w, "waiting"))


@dataclass(frozen=True)
class Listing:
    """The reply of List: leases held and waiters, of one resource or all."""
    leases: list[Lease]
    waiters: list[Waiter]


@dataclass(frozen=True)
class Resource:
    name: str
    capacity: int
    used: int
    leases: int
    waiters: int
    declared: bool

    @classmethod
    def from_wire(cls, d: Any) -> Resource:
        d = _obj(d, "resource")
        w = "resource"
        return cls(_get(d, "name", str, w), _get(d, "capacity", int, w), _get(d, "used", int, w, 0),
                   _get(d, "leases", int, w, 0), _get(d, "waiters", int, w, 0), _get(d, "declared", bool, w, False))


@dataclass(frozen=True)
class WatchEvent:
    """One event of Watch or History. ``type``: queued, granted, renewed, released,
    expired, revoked, reclaimed, voided. ``time``: microseconds since the epoch."""
    type: str
    time: int
    resource: str
    lease: str | None = None
    token: int | None = None
    owner: Owner | None = None
    units: int | None = None
    reason: str | None = None

    @classmethod
    def from_wire(cls, d: Any) -> WatchEvent:
        d = _obj(d, "event")
        w = "event"
        owner = _get(d, "owner", dict, w, None)
        return cls(_get(d, "type", str, w), _get(d, "time", int, w, 0), _get(d, "resource", str, w, ""),
                   _get(d, "lease", str, w, None), _get(d, "token", int, w, None),
                   Owner.from_wire(owner) if owner is not None else None, _get(d, "units", int, w, None),
                   _get(d, "reason", str, w, None))


@dataclass(frozen=True)
class Status:
    version: str
    uptime: float
    boot_id: str
    leases: int
    waiters: int
    connections: int
    commits: int
    database_size: int
    sync: str

    @classmethod
    def from_wire(cls, d: Any) -> Status:
        d = _obj(d, "status")
        w = "status"
        return cls(_get(d, "version", str, w), _float(d, "uptime", w, 0.0), _get(d, "boot_id", str, w, ""),
                   _get(d, "leases", int, w, 0), _get(d, "waiters", int, w, 0), _get(d, "connections", int, w, 0),
                   _get(d, "commits", int, w, 0), _get(d, "database_size", int, w, 0), _get(d, "sync", str, w, ""))


class LeaseEventType(str, enum.Enum):
    """What a lease generator yields; the names of libagenclient's AGEN_LEASE_* events."""
    QUEUED = "queued"           #: waiting; ``position`` is the 1-based place in the queue
    GRANTED = "granted"         #: held; ``id``, ``token`` and ``lease`` are set
    RENEWED = "renewed"         #: the generator renewed the TTL
    DISCONNECTED = "disconnected"  #: the daemon connection was lost: the lease may be lost until RECLAIMED or LOST
    RECLAIMED = "reclaimed"     #: the daemon came back and the lease is held again
    LOST = "lost"               #: ended otherwise (not reclaimed, released by another, ...); last event
    REVOKED = "revoked"         #: an administrator took it back; last event
    EXPIRED = "expired"         #: its TTL ran out; last event

    @property
    def final(self) -> bool:
        """LOST, REVOKED and EXPIRED end the generator."""
        return self in (LeaseEventType.LOST, LeaseEventType.REVOKED, LeaseEventType.EXPIRED)


@dataclass(frozen=True)
class LeaseEvent:
    """One value of a lease generator."""
    type: LeaseEventType
    resource: str
    id: str | None = None          #: None before the grant
    token: int = 0                 #: the fencing token; 0 before the grant
    position: int = 0              #: QUEUED only
    reason: str | None = None      #: LOST, REVOKED, EXPIRED, DISCONNECTED: why
    lease: Lease | None = None     #: GRANTED, RENEWED, RECLAIMED: the lease as agend described it
