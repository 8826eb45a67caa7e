#!/usr/bin/python3
# A tiny varlink client for tests/test-systemd.sh, run inside the test container (which has
# python3 but none of our client code's build dependencies). Standard library only.
#
#   systemd-varlink.py call METHOD [JSON]       one call; prints the reply's parameters;
#                                               exit 1 (error name on stderr) on an error
#   systemd-varlink.py owner RESOURCE           try once to acquire RESOURCE; prints the
#                                               owner the daemon recorded and, on a second
#                                               line, our own uid, gid and pid; releases
#   systemd-varlink.py lease ID                 prints "STATE PID UID TOKEN" of lease ID
#                                               (List), or "none"
#   systemd-varlink.py hold RESOURCE STATEFILE  acquire (wait), then hold; after every
#                                               disconnect reconnect and Reclaim; STATEFILE
#                                               tells the test what happened
#   systemd-varlink.py many N PREFIX STATEFILE  hold N leases on PREFIX0..PREFIX<N-1>, on one
#                                               connection, and reclaim them all after a restart
#   systemd-varlink.py probe RESOURCE STOPFILE  until STOPFILE exists, try once every 20 ms to
#                                               acquire RESOURCE; prints the counts as JSON
#
# The socket is $AGEND_SOCKET or /run/agend/io.agend.Lease.
import json
import os
import socket
import sys
import time

SOCKET = os.environ.get("AGEND_SOCKET", "/run/agend/io.agend.Lease")


class VarlinkError(Exception):
        def __init__(self, name, params):
                super().__init__(name)
                self.name = name
                self.params = params


class Conn:
        def __init__(self, path=SOCKET, timeout=None):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)
                self.buf = b""

        def send(self, method, params=None, more=False):
                msg = {"method": "io.agend.Lease." + method if "." not in method else method}
                if params:
                        msg["parameters"] = params
                if more:
                        msg["more"] = True
                self.sock.sendall(json.dumps(msg).encode() + b"\0")

        def recv(self):
                """The next reply; raises EOFError when the daemon closed the connection."""
                while b"\0" not in self.buf:
                        chunk = self.sock.recv(1 << 16)
                        if not chunk:
                                raise EOFError("connection closed")
                        self.buf += chunk
                msg, _, self.buf = self.buf.partition(b"\0")
                reply = json.loads(msg)
                if "error" in reply:
                        raise VarlinkError(reply["error"], reply.get("parameters", {}))
                return reply

        def call(self, method, params=None):
                self.send(method, params)
                return self.recv().get("parameters", {})

        def close(self):
                self.sock.close()


def write_state(path, text):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
                f.write(text + "\n")
        os.replace(tmp, path)


def connect_retry(seconds=60):
        """Connect, retrying while the socket is absent or refuses (daemon and socket down)."""
        end = time.monotonic() + seconds
        while True:
                try:
                        return Conn()
                except OSError:
                        if time.monotonic() > end:
                                raise
                        time.sleep(0.02)


def cmd_call(method, params="{}"):
        c = Conn(timeout=30)
        try:
                print(json.dumps(c.call(method, json.loads(params))))
        except VarlinkError as e:
                print(e.name, json.dumps(e.params), file=sys.stderr)
                return 1
        return 0


def cmd_owner(resource):
        c = Conn(timeout=30)
        r = c.call("Acquire", {"resource": resource, "timeout": 0})
        # What the daemon recorded, then what this process knows about itself.
        print(json.dumps(r["lease"]["owner"]))
        print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}))
        c.call("Release", {"id": r["lease"]["id"]})
        return 0


def cmd_lease(lid):
        c = Conn(timeout=30)
        for lease in c.call("List")["leases"]:
                if lease["id"] == lid:
                        o = lease["owner"]
                        print(lease["state"], o["pid"], o["uid"], lease["token"])
                        return 0
        print("none")
        return 0


def cmd_hold(resource, state):
        c = Conn()
        r = c.call("Acquire", {"resource": resource, "description": "held by test-systemd"})
        lease, secret = r["lease"], r["secret"]
        reclaims = 0
        write_state(state, f"granted {lease['id']} {lease['token']} {os.getpid()} {reclaims}")
        while True:
                try:
                        c.recv()        # nothing is expected: returns only on EOF
                except (EOFError, OSError):
                        pass
                c.close()
                write_state(state, f"disconnected {lease['id']} {lease['token']} {os.getpid()} {reclaims}")
                c = connect_retry()
                try:
                        r = c.call("Reclaim", {"id": lease["id"], "token": lease["token"], "secret": secret})
                except (VarlinkError, EOFError, OSError) as e:
                        write_state(state, f"lost {lease['id']} {lease['token']} {os.getpid()} {reclaims} {e}")
                        return 1
                reclaims += 1
                lease = r["lease"]
                write_state(state, f"reclaimed {lease['id']} {lease['token']} {os.getpid()} {reclaims}")


def pipelined(c, calls, batch=256):
        """Sends calls (method, params) in batches and reads each batch's replies before the
        next, so that neither side blocks on a full socket buffer. Returns one reply
        parameters dict or VarlinkError per call."""
        out = []
        for i in range(0, len(calls), batch):
                part = calls[i:i + batch]
                for method, params in part:
                        c.send(method, params)
                for _ in part:
                        try:
                                out.append(c.recv().get("parameters", {}))
                        except VarlinkError as e:
                                out.append(e)
        return out


def cmd_many(n, prefix, state):
        n = int(n)
        c = Conn()
        # Try-once acquires do not wait, so they pipeline on one connection.
        replies = pipelined(c, [("Acquire", {"resource": f"{prefix}{i}", "timeout": 0}) for i in range(n)])
        held = []
        for r in replies:
                if isinstance(r, VarlinkError):
                        write_state(state, f"failed {r.name} {json.dumps(r.params)}")
                        return 1
                held.append((r["lease"]["id"], r["lease"]["token"], r["secret"]))
        write_state(state, f"granted {n}")
        rounds = 0
        while True:
                try:
                        c.recv()
                except (EOFError, OSError):
                        pass
                c.close()
                t0 = time.monotonic()
                write_state(state, f"disconnected {n} {rounds}")
                c = connect_retry()
                replies = pipelined(c, [("Reclaim", {"id": lid, "token": token, "secret": secret})
                                        for lid, token, secret in held])
                ok = sum(1 for r in replies if not isinstance(r, VarlinkError))
                errors = {}
                for r in replies:
                        if isinstance(r, VarlinkError):
                                errors[r.name] = errors.get(r.name, 0) + 1
                rounds += 1
                ms = (time.monotonic() - t0) * 1000
                write_state(state, f"reclaimed {ok} {rounds} {ms:.0f} {json.dumps(errors)}")


def cmd_probe(resource, stopfile):
        counts = {"granted": 0, "busy": 0, "errors": 0, "disconnects": 0}
        c = None
        while not os.path.exists(stopfile):
                try:
                        if c is None:
                                c = connect_retry()
                        r = c.call("Acquire", {"resource": resource, "timeout": 0, "description": "probe"})
                        counts["granted"] += 1
                        print(f"granted {r['lease']['id']} token {r['lease']['token']}", file=sys.stderr)
                        c.call("Release", {"id": r["lease"]["id"]})
                except VarlinkError as e:
                        if e.name == "io.agend.Lease.Timeout":
                                counts["busy"] += 1
                        else:
                                counts["errors"] += 1
                                print("error", e.name, json.dumps(e.params), file=sys.stderr)
                except (EOFError, OSError):
                        counts["disconnects"] += 1
                        if c is not None:
                                c.close()
                        c = None
                time.sleep(0.02)
        print(json.dumps(counts))
        return 0


def main(argv):
        cmds = {"call": cmd_call, "owner": cmd_owner, "lease": cmd_lease, "hold": cmd_hold, "many": cmd_many, "probe": cmd_probe}
        if len(argv) < 2 or argv[1] not in cmds:
                print(__doc__ if __doc__ else "usage: see the header", file=sys.stderr)
                return 2
        return cmds[argv[1]](*argv[2:])


if __name__ == "__main__":
        sys.exit(main(sys.argv))
