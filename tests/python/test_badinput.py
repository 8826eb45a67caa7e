# SPDX-License-Identifier: MIT
"""A peer that is not a well-behaved agend: garbage, wrong shapes, silence, endless bytes.
Every case ends in a clear exception within the call timeout, never a hang (each test is
also bounded by a guard of its own)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
import threading
from typing import Callable

import agen
import pytest
import trio

from conftest import GUARD

CALL_TIMEOUT = 0.3          # where silence is the case under test
ANSWER_TIMEOUT = 5.0        # where an answer is expected: generous, for a loaded machine

GRANT = {"state": "granted", "lease": {"id": "l1", "resource": "r", "units": 1, "exclusive": False, "token": 7,
                                       "owner": {"uid": 0, "gid": 0, "pid": 1, "comm": "x"}, "description": "",
                                       "created": 0, "detached": False, "state": "held"}, "secret": "s"}


class FakeAgend:
    """Listens on a Unix socket; answer(call) gives the bytes to send back for each call
    (None: say nothing, and keep the connection open)."""

    def __init__(self, answer: Callable[[dict], bytes | None], accept: bool = True):
        self.dir = tempfile.mkdtemp(prefix="agen-fake-", dir="/tmp")
        self.path = os.path.join(self.dir, "sock")
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(16)
        self.answer = answer
        self.conns: list[socket.socket] = []
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True) if accept else None
        if self.thread:
            self.thread.start()

    def run(self) -> None:
        self.srv.settimeout(0.05)
        while not self.stop:
            try:
                c, _ = self.srv.accept()
            except (socket.timeout, OSError):
                continue
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c: socket.socket) -> None:
        buf = b""
        try:
            while not self.stop:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
                while b"\0" in buf:
                    msg, buf = buf.split(b"\0", 1)
                    out = self.answer(json.loads(msg))
                    if out:
                        c.sendall(out)
        except OSError:
            pass

    def close(self) -> None:
        self.stop = True
        if self.thread:
            self.thread.join()
        for c in self.conns:
            c.close()
        self.srv.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def fake(request):
    made = []

    def make(answer, accept=True):
        f = FakeAgend(answer, accept)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


def reply(params=None, **kw) -> bytes:
    return json.dumps(dict(parameters=params or {}, **kw)).encode() + b"\0"


async def call_status(path: str, call_timeout: float = ANSWER_TIMEOUT, **kw):
    client = await agen.connect(path, call_timeout=call_timeout, **kw)
    try:
        return await asyncio.wait_for(client.status(), GUARD)
    finally:
        await client.aclose()


@pytest.mark.parametrize("answer, error, text", [
    (b"garbage\0", agen.BadReply, "not JSON"),
    (b"[1, 2]\0", agen.BadReply, "not an object"),
    (b'{"parameters": 5}\0', agen.BadReply, "wrong field types"),
    (b'{"parameters": {"version": 5}}\0', agen.BadReply, "'version' has the wrong type"),
    (b'{"parameters": {}, "continues": true}\0', agen.BadReply, "continues"),
    (b'{"error": "io.agend.Lease.ProtocolError", "parameters": {"reason": "no"}}\0', agen.ProtocolError, "no"),
    (b'{"error": "com.example.Odd"}\0', agen.VarlinkError, "com.example.Odd"),
    (b'\xff\xfe\0', agen.BadReply, "not JSON"),
])
async def test_bad_replies(fake, answer, error, text):
    f = fake(lambda call: answer)
    with pytest.raises(error) as e:
        await call_status(f.path)
    assert text in str(e.value)


async def test_silence_is_a_call_timeout(fake):
    f = fake(lambda call: None)
    with pytest.raises(agen.CallTimeout) as e:
        await call_status(f.path, CALL_TIMEOUT)
    assert "did not answer within 0.3 s" in str(e.value)


async def test_never_accepted_is_a_call_timeout(fake):
    f = fake(lambda call: None, accept=False)
    with pytest.raises(agen.CallTimeout):
        await call_status(f.path, CALL_TIMEOUT)


async def test_closed_at_once_is_connection_lost(fake):
    f = fake(lambda call: None)
    f.answer = lambda call: (f.conns[-1].shutdown(socket.SHUT_RDWR), None)[1]
    with pytest.raises(agen.ConnectionLost):
        await call_status(f.path)


async def test_endless_message_is_refused(fake):
    f = fake(lambda call: b"x" * (1 << 20))
    with pytest.raises(agen.BadReply) as e:
        await call_status(f.path, max_message=4096)
    assert "over 4096 bytes" in str(e.value)


@pytest.mark.parametrize("answer, error", [
    (lambda call: None, agen.CallTimeout),
    (lambda call: b"nonsense\0", agen.BadReply),
    (lambda call: reply({"state": "held"}, continues=True), agen.BadReply),
    (lambda call: reply({**GRANT, "secret": ""}), agen.BadReply),
    (lambda call: reply({**GRANT, "lease": {**GRANT["lease"], "token": "7"}}), agen.BadReply),
    (lambda call: reply({"state": "queued", "position": 1}, continues=True) if call["method"].endswith("Acquire")
     else None, None),
])
async def test_lease_against_bad_peer(fake, answer, error):
    f = fake(answer)
    client = await agen.connect(f.path, call_timeout=CALL_TIMEOUT if error is agen.CallTimeout else ANSWER_TIMEOUT)
    gen = client.lease("r")
    if error is None:
        # Queued and then silence is a legitimate wait, not an error: it stays queued
        # until the program gives up.
        ev = await asyncio.wait_for(gen.__anext__(), GUARD)
        assert ev.type is agen.QUEUED
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(gen.__anext__(), 2 * CALL_TIMEOUT)
    else:
        with pytest.raises(error):
            await asyncio.wait_for(gen.__anext__(), GUARD)
    await gen.aclose()
    await client.aclose()


async def test_watch_garbage_after_grant_ends_the_lease(fake):
    def answer(call):
        if call["method"].endswith("Acquire"):
            return reply(GRANT)
        if call["method"].endswith("Watch"):
            return reply({"event": None}, continues=True) + b"garbage\0"
        return None
    f = fake(answer)
    client = await agen.connect(f.path, call_timeout=ANSWER_TIMEOUT)
    gen = client.lease("r")
    assert (await asyncio.wait_for(gen.__anext__(), GUARD)).type is agen.GRANTED
    ev = await asyncio.wait_for(gen.__anext__(), GUARD)
    assert ev.type is agen.LOST and "not JSON" in ev.reason
    await client.aclose()


def test_trio_silence_is_a_call_timeout(fake):
    f = fake(lambda call: None)

    async def main():
        client = await agen.connect(f.path, call_timeout=CALL_TIMEOUT)
        with trio.fail_after(GUARD):
            with pytest.raises(agen.CallTimeout):
                await client.status()
            gen = client.lease("r")
            with pytest.raises(agen.CallTimeout):
                await gen.__anext__()
    trio.run(main)
