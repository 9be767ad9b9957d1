"""The monitor's links to the other zone processes: the key keeper and the applet runner.

Both listen on root-only unix sockets (firmware.runtime.ipc). Calls return a
:class:`~firmware.monitor.deferred.Deferred`; a call made before the other side listens (it may
still be starting) waits for it, for at most its timeout.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, Callable

import cbor2

from ..abi.errors import NoIdentity, error_for_code
from ..runtime.console import log
from ..runtime.ipc import (KEEPER_SOCKET, KEEPER_TIMEOUT, MAX_MESSAGE, RUNNER_SOCKET, KeeperOp,
                           RunnerOp, size_buffers)
from ..runtime.reactor import Reactor
from .deferred import Deferred

__all__ = ["KeeperLink", "RunnerLink", "LOST"]

#: Seconds between attempts to reach the other process.
RETRY = 0.05
#: The event a RunnerLink reports when the runner went away.
LOST = "lost"


class _Link:
    """A SOCK_SEQPACKET client that connects when the server is up and queues until then."""

    def __init__(self, loop: Reactor, path: str, name: str) -> None:
        self.loop = loop
        self.path = path
        self.name = name
        self.sock: socket.socket | None = None
        #: The server's process id while connected (SO_PEERCRED): what ``info`` reports on.
        self.peer_pid: int | None = None
        self._queue: list[tuple[bytes, list[int]]] = []
        self._connect()

    def _connect(self) -> None:
        """Connect without blocking the reactor: a unix socket connects at once or fails (a
        server not yet listening, or with a full backlog: EAGAIN); then try again later.
        What waits meanwhile is bounded by its caller (KEEPER_TIMEOUT, a job's wall time)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        size_buffers(sock)
        sock.setblocking(False)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            self.loop.call_later(RETRY, self._connect)
            return
        self.sock = sock
        self.peer_pid = _peer_pid(sock)
        self.loop.add_reader(sock.fileno(), self._readable)
        queue, self._queue = self._queue, []
        for message, fds in queue:
            self.send(message, fds)

    def send(self, message: bytes, fds: list[int] | None = None) -> None:
        """Send ``message`` (and pass ``fds``, which are closed here once sent)."""
        fds = fds or []
        if self.sock is None:
            self._queue.append((message, fds))
            return
        try:
            if fds:
                socket.send_fds(self.sock, [message], fds)
            else:
                self.sock.send(message)
        except OSError as exc:
            log(f"{self.name}: send failed: {exc}")
            self._queue.append((message, fds))
            self._lost()
            return
        for fd in fds:
            os.close(fd)

    def _readable(self) -> None:
        try:
            message = self.sock.recv(MAX_MESSAGE)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:
            self._lost()
            return
        try:
            decoded = cbor2.loads(message)
        except (ValueError, TypeError) as exc:  # cbor2's decode errors are ValueErrors
            log(f"{self.name}: unreadable message: {exc!r}")
            return
        self.received(decoded)

    def received(self, message: Any) -> None:
        raise NotImplementedError

    def lost(self) -> None:
        """The server went away (a subclass fails what waited on it)."""

    def _lost(self) -> None:
        log(f"{self.name}: connection lost")
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
            self.peer_pid = None
        self.lost()
        self.loop.call_later(RETRY, self._connect)


def _peer_pid(sock: socket.socket) -> int | None:
    """The process id of the server ``sock`` is connected to (it called listen())."""
    creds = struct.Struct("3i")  # struct ucred: pid, uid, gid
    try:
        pid, _, _ = creds.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 creds.size))
    except OSError:
        return None
    return pid or None


class KeeperLink(_Link):
    """Calls to the key keeper: ``call(op, args)`` -> Deferred of the result."""

    def __init__(self, loop: Reactor, path: str = KEEPER_SOCKET) -> None:
        self._pending: dict[int, Deferred] = {}
        self._next_id = 0
        super().__init__(loop, path, "keeper")

    def call(self, op: KeeperOp, args: dict[str, Any]) -> Deferred:
        self._next_id += 1
        request_id = self._next_id
        deferred = Deferred()
        self._pending[request_id] = deferred
        self.loop.call_later(KEEPER_TIMEOUT, self._expire, request_id)
        self.send(cbor2.dumps({"id": request_id, "op": op, "args": args}))
        return deferred

    def _expire(self, request_id: int) -> None:
        deferred = self._pending.pop(request_id, None)
        if deferred is not None:
            deferred.resolve(error=NoIdentity(
                f"the key keeper did not answer within {KEEPER_TIMEOUT:.0f} s"))

    def received(self, reply: Any) -> None:
        request_id = reply.get("id") if isinstance(reply, dict) else None
        deferred = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if deferred is None:
            return
        if reply.get("ok"):
            deferred.resolve(reply.get("result"))
        else:
            error = reply.get("error") or {}
            deferred.resolve(error=error_for_code(str(error.get("code")),
                                                  str(error.get("message"))))

    def lost(self) -> None:
        pending, self._pending = self._pending, {}
        for deferred in pending.values():
            deferred.resolve(error=NoIdentity("the key keeper is gone"))


class RunnerLink(_Link):
    """Requests to the applet runner; its events (``exit``, and LOST when it went away) go to
    ``on_event``."""

    def __init__(self, loop: Reactor, on_event: Callable[[dict[str, Any]], None],
                 path: str = RUNNER_SOCKET) -> None:
        self.on_event = on_event
        super().__init__(loop, path, "runner")

    def start(self, job: str, uid: int, limits: dict[str, int], fd: int,
              warm: bytes | None = None) -> None:
        """Run the job whose socket is ``fd``: in a new process, or with ``warm`` (the
        applet's measurement) in a warm worker of that applet."""
        self.send(cbor2.dumps({"op": RunnerOp.START, "job": job, "uid": uid, "limits": limits,
                               "warm": warm}), [fd])

    def kill(self, job: str) -> None:
        self.send(cbor2.dumps({"op": RunnerOp.KILL, "job": job}))

    def received(self, message: Any) -> None:
        if isinstance(message, dict):
            self.on_event(message)

    def lost(self) -> None:
        self.on_event({"event": LOST})
