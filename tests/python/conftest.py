# SPDX-License-Identifier: MIT
"""Fixtures for the tests of the Python client against a real agend.

AGEND_BINARY names the daemon (meson passes the one of the build tree). The package is
imported from the source tree (AGEN_PYTHON_DIR, or ../../client/python). Every wait in
these tests has a guard (GUARD seconds), so a release that never comes fails the test
instead of hanging it.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
AGEN_PYTHON_DIR = os.environ.get("AGEN_PYTHON_DIR") or os.path.join(HERE, "..", "..", "client", "python")
sys.path.insert(0, os.path.abspath(AGEN_PYTHON_DIR))

GUARD = 10.0        # the longest any awaited release may take before the test fails
PYTHON = sys.executable


def _pdeathsig() -> None:
    # The daemon dies with the test process, also when pytest itself is killed.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except OSError:
        pass


class Agend:
    """One agend on a fresh temporary directory."""

    def __init__(self, grace: float | None = None):
        binary = os.environ.get("AGEND_BINARY")
        if not binary:
            pytest.fail("AGEND_BINARY is not set: run these tests through `meson test --suite python`")
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="agend-py-", dir="/tmp")
        self.socket = os.path.join(self.dir, "io.agend.Lease")
        self.state = os.path.join(self.dir, "state")
        self.config = os.path.join(self.dir, "agend.conf")
        self.log = os.path.join(self.dir, "agend.log")
        os.mkdir(self.state, 0o700)
        open(self.config, "w").close()
        self.grace = grace
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--socket", self.socket, "--state-dir", self.state, "--config", self.config]
        if self.grace is not None:
            args += ["--grace", str(self.grace)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         preexec_fn=_pdeathsig)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"agend exited at start ({self.proc.returncode}):\n{self.read_log()}")
            try:
                with RawConn(self.socket) as c:
                    c.call("org.varlink.service.GetInfo")
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"agend did not answer within 15 s:\n{self.read_log()}")
                time.sleep(0.01)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -1

    def read_log(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class RawConn:
    """A blocking varlink connection that owes nothing to the package under test."""

    def __init__(self, path: str, timeout: float = GUARD):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, method: str, params: dict[str, Any] | None = None, more: bool = False) -> None:
        msg: dict[str, Any] = {"method": method, "parameters": params or {}}
        if more:
            msg["more"] = True
        self.sock.sendall(json.dumps(msg).encode() + b"\0")

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        if timeout is not None:
            self.sock.settimeout(timeout)
        while b"\0" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("agend closed the connection")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.send(method, params)
        r = self.recv()
        if "error" in r:
            raise RuntimeError(f"{method}: {r}")
        return r.get("parameters", {})


class Waiter(RawConn):
    """Another client that asks for the resource (Acquire with more) and waits for it."""

    def __init__(self, path: str, resource: str, description: str = "waiter"):
        super().__init__(path)
        self.resource = resource
        self.description = description
        self.send("io.agend.Lease.Acquire", {"resource": resource, "description": description}, more=True)
        self.first = self.recv()
        self.granted_at: float | None = None
        self.lease: dict[str, Any] | None = None
        if self.first.get("parameters", {}).get("state") == "granted":
            self.granted_at = time.monotonic()
            self.lease = self.first["parameters"]["lease"]

    @property
    def queued(self) -> bool:
        return self.first.get("parameters", {}).get("state") == "queued"

    def wait_granted(self, timeout: float = GUARD) -> dict[str, Any]:
        """Blocks (no event loop needed) until the grant; fails the test after timeout."""
        deadline = time.monotonic() + timeout
        while self.lease is None:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{self.description}: no grant of {self.resource!r} within {timeout} s")
            try:
                r = self.recv(left)
            except socket.timeout:
                pytest.fail(f"{self.description}: no grant of {self.resource!r} within {timeout} s")
            p = r.get("parameters", {})
            if "error" in r:
                pytest.fail(f"{self.description}: Acquire failed: {r}")
            if p.get("state") == "granted":
                self.granted_at = time.monotonic()
                self.lease = p["lease"]
        return self.lease

    def not_granted_within(self, seconds: float) -> bool:
        """True if no grant arrives within seconds (the lease is still held by the other)."""
        try:
            self.sock.settimeout(seconds)
            while True:
                r = self.recv(seconds)
                if r.get("parameters", {}).get("state") == "granted":
                    self.lease = r["parameters"]["lease"]
                    return False
        except socket.timeout:
            return True


def holders(path: str, resource: str) -> list[dict[str, Any]]:
    with RawConn(path) as c:
        return c.call("io.agend.Lease.List", {"resource": resource}).get("leases", [])


def history(path: str, resource: str) -> list[dict[str, Any]]:
    with RawConn(path) as c:
        return c.call("io.agend.Lease.History", {"resource": resource}).get("events", [])


def end_reasons(path: str, resource: str) -> list[str]:
    return [e.get("reason") or "" for e in history(path, resource) if e["type"] == "released"]


def assert_taken_over(agend: Agend, waiter: Waiter, timeout: float = GUARD) -> None:
    """The waiter holds the lease now: it got the grant, and List shows it as the holder."""
    lease = waiter.wait_granted(timeout)
    held = holders(agend.socket, waiter.resource)
    assert [h["id"] for h in held] == [lease["id"]], held
    assert held[0]["description"] == waiter.description


@pytest.fixture(scope="session")
def agend() -> Any:
    a = Agend()
    a.start()
    yield a
    rc = a.stop()
    log = a.read_log()
    a.cleanup()
    assert rc == 0, f"agend ended with {rc} on SIGTERM, not 0:\n{log}"


@pytest.fixture
def own_agend() -> Any:
    """A daemon of the test's own (for restarts); tests may set .grace before start()."""
    a = Agend()
    yield a
    a.cleanup()


@pytest.fixture
def resource(request: pytest.FixtureRequest) -> str:
    """A resource name no other test uses."""
    return "py-" + request.node.name.replace("[", "-").replace("]", "")[:80]


def run_script(agend: Agend, code: str, *args: str) -> subprocess.Popen[str]:
    """Starts a Python child running code, with the package importable and AGEND_SOCKET set;
    stdin, stdout and stderr are pipes."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(AGEN_PYTHON_DIR), AGEND_SOCKET=agend.socket,
               PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([PYTHON, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_pdeathsig)


def tell(proc: subprocess.Popen[str], line: str = "go") -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def read_line(proc: subprocess.Popen[str], timeout: float = GUARD) -> str:
    """One line of the child's stdout, within timeout (the child must flush)."""
    import selectors
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        proc.kill()
        pytest.fail(f"child said nothing within {timeout} s; stderr: {proc.communicate()[1]}")
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"child ended ({proc.wait()}) without a line; stderr: {proc.communicate()[1]}")
    return line.strip()
