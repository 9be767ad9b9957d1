"""Attested sessions: TLS 1.3 connections that terminate in the monitor, carried over the
control channel, many at once.

The host relays a session's bytes and reads none of them::

    host -> zone   session-open {}                -> {session}
                   session-data {session, data}   -> {}    (TLS bytes from the client)
                   session-close {session}        -> {}
    zone -> host   event {event: "session", session, data}               (TLS bytes to it)
                   event {event: "session", session, closed: {code, message}}

Inside TLS the client speaks the channel's own protocol (abi.wire frames, ``{id, op, args}``
requests), so a session offers every operation of the plain channel, and those only a
session may carry (secret-put), once the client has asked for evidence in that session (a
client that skips the appraisal gets ``needs-session``). The monitor answers in the session,
encrypted.

The TLS key is made by layer 0 at the first session-open and certified by the alias key
(abi.dice.issue_session_cert); evidence signed from then on names it, which binds fresh
evidence to the connection (RA-TLS). The monitor holds that key, for this boot only: it is
the TLS endpoint, and it sees what the sessions carry in clear anyway. The key reaches the
ssl module through a memfd, never a file. No session tickets, no resumption: each session
is a full handshake. A TLS failure (bytes flipped, dropped, replayed, reordered or forged)
ends that session with ``session-failed``; the others go on. A new host session (hello)
ends them all: their TLS clients lived with the host that went away.
"""

from __future__ import annotations

import os

from ..abi import wellformed, wire
from ..abi.errors import (BadArgs, Code, NeedsSession, NoSuchSession, SessionFailed,
                          TooManySessions, ZoneError)
from ..abi.ops import Op
from ..runtime.console import log
from ..runtime.ipc import KeeperOp
from .deferred import Deferred
from .links import KeeperLink

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Any, Callable

__all__ = ["Sessions", "Session", "MAX_SESSIONS", "IN_FLIGHT", "EVENT_DATA"]

#: Sessions open at once.
MAX_SESSIONS = 16
#: Most TLS bytes one session event carries: an answer of up to wire.MAX_PAYLOAD is more
#: than that once encrypted, so it goes in several events.
EVENT_DATA = 1 << 20
#: Bytes of unfinished messages all sessions together may hold (each may hold one message of
#: up to wire.MAX_PAYLOAD): a session that would take more ends with ``session-failed``. Sixteen
#: sessions each half-way through a 16 MiB message would otherwise hold 256 MiB, more than the
#: monitor has (platform.limit_memory).
IN_FLIGHT = 2 * wire.MAX_PAYLOAD
_READ = 1 << 16


class Session:
    """One TLS connection: bytes in from the host, requests out to the monitor, answers back
    in encrypted."""

    def __init__(self, sessions: "Sessions", number: int, context: ssl.SSLContext) -> None:
        import ssl  # noqa: F811 (the monitor imports ssl at its first session, not at boot)

        self.sessions = sessions
        self.number = number
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=True)
        self._handshaken = False
        self.closed = False
        self.decoder = wire.FrameDecoder(limits=wellformed.INBOUND)
        self.encoder = wire.FrameEncoder()
        self.requests = 0
        self.appraisable = False  # the client has asked for evidence in this session
        self.ops = {**sessions.ops, Op.HELLO: lambda args: sessions.hello(args, number),
                    Op.ATTEST: self._attest}
        for op, handler in sessions.only.items():
            self.ops[op] = self._after_evidence(handler)

    def _attest(self, args: dict[str, Any]) -> Any:
        self.appraisable = True
        return self.sessions.ops[Op.ATTEST](args)

    def _after_evidence(self, handler: Callable[[dict[str, Any]], Any]
                        ) -> Callable[[dict[str, Any]], Any]:
        """``handler``, once the client has asked for evidence in this session: a client that
        skips the appraisal does not get to hand the zone a secret."""
        def guarded(args: dict[str, Any]) -> Any:
            if not self.appraisable:
                raise NeedsSession("this session is not attested yet: ask for evidence in it "
                                   "(attest) and appraise it first")
            return handler(args)
        return guarded

    def feed(self, data: bytes) -> None:
        """TLS bytes from the client: handshake, then requests."""
        import ssl  # noqa: F811

        self._in.write(data)
        try:
            if not self._handshaken:
                try:
                    self._tls.do_handshake()
                except ssl.SSLWantReadError:
                    return
                self._handshaken = True
            while not self.closed:
                try:
                    chunk = self._tls.read(_READ)
                except ssl.SSLWantReadError:
                    break
                if not chunk:
                    self.sessions.end(self, None)
                    return
                for item in self.decoder.feed(chunk):
                    if type(item) is wire.Fault:
                        self.send_error(None, item.code, item.message)
                    else:
                        self.requests += 1
                        self.sessions.handle(item, self)  # type: ignore[arg-type]
                if self.decoder.pending and self.sessions.in_flight() > IN_FLIGHT:
                    self.sessions.end(self, SessionFailed(
                        f"the sessions hold more than {IN_FLIGHT >> 20} MiB of unfinished "
                        "messages: this one is ended"))
                    return
        except ssl.SSLZeroReturnError:
            self.sessions.end(self, None)
        except ssl.SSLError as exc:
            self.sessions.end(self, SessionFailed(f"TLS: {exc.reason or exc}"[:200]))
        finally:
            self._flush()

    def respond(self, request_id: Any, result: Any) -> None:
        try:
            parts = self.encoder.response(request_id, result)
        except (ValueError, TypeError) as exc:
            log(f"session {self.number}: cannot encode the result of request {request_id!r}")
            self.send_error(request_id, Code.INTERNAL, f"result not encodable: {exc}"[:200])
            return
        self._send(parts)

    def send_error(self, request_id: Any, code: str, message: str) -> None:
        self._send(self.encoder.error(request_id, code, message))

    def _send(self, parts: list[bytes | memoryview]) -> None:
        import ssl  # noqa: F811

        if self.closed:
            return  # an answer that outlived its session: nobody can read it
        try:
            self._tls.write(b"".join(parts))
        except ssl.SSLError as exc:
            self.sessions.end(self, SessionFailed(f"TLS: {exc.reason or exc}"[:200]))
        self._flush()

    def _flush(self) -> None:
        data = self._out.read()
        for start in range(0, len(data), EVENT_DATA):
            self.sessions.event({"event": "session", "session": self.number,
                                 "data": data[start:start + EVENT_DATA]})

    def close(self) -> None:
        """Send close_notify (if the handshake got that far) and forget the connection."""
        import ssl  # noqa: F811

        if self._handshaken and not self.closed:
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass
            self._flush()
        self.release()

    def release(self) -> None:
        """Mark the session closed and let go of its unfinished message now. Its ops refer
        back to it: dropping them breaks that cycle, so the session's memory goes when the
        last answer it waits for does, not whenever the cyclic garbage collector next runs
        (in a monitor that makes few objects, that can be long: closed sessions holding
        16 MiB each once ran it out of memory)."""
        self.closed = True
        self.decoder.reset()
        self.ops = {}


class Sessions:
    """The sessions of the current host, by number."""

    def __init__(self, keeper: KeeperLink, ops: dict[str, Callable[[dict[str, Any]], Any]],
                 only: dict[str, Callable[[dict[str, Any]], Any]],
                 hello: Callable[[dict[str, Any], int], dict[str, Any]],
                 handle: Callable[[wire.Frame, Session], None],
                 event: Callable[[dict[str, Any]], None]) -> None:
        """``ops`` is what a session may request, ``only`` what only a session may, once
        its client asked for evidence in it; ``hello`` answers a session's hello, ``handle``
        serves one request of a session, ``event`` sends an event to the host."""
        self.keeper = keeper
        self.ops = ops
        self.only = only
        self.hello = hello
        self.handle = handle
        self.event = event
        self.open: dict[int, Session] = {}
        self.opened = self.failed = 0
        self._next = 0
        self._context: Deferred | None = None

    def table(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {Op.SESSION_OPEN: self.op_open, Op.SESSION_DATA: self.op_data,
                Op.SESSION_CLOSE: self.op_close}

    def _tls_context(self) -> Deferred:
        """The server context, made once per monitor with a key layer 0 certifies."""
        if self._context is None or self._context.error is not None:
            self._context = self.keeper.call(KeeperOp.SESSION_KEY, {}).then(_server_context)
        return self._context

    def op_open(self, args: dict[str, Any]) -> Deferred:
        if len(self.open) >= MAX_SESSIONS:
            raise TooManySessions(f"{MAX_SESSIONS} sessions are open: close one first")

        def start(context: ssl.SSLContext) -> dict[str, Any]:
            if len(self.open) >= MAX_SESSIONS:
                raise TooManySessions(f"{MAX_SESSIONS} sessions are open: close one first")
            self._next += 1
            self.open[self._next] = Session(self, self._next, context)
            self.opened += 1
            return {"session": self._next}

        return self._tls_context().then(start)

    def _session(self, args: dict[str, Any]) -> Session:
        number = args.get("session")
        session = self.open.get(number) if type(number) is int else None
        if session is None:
            raise NoSuchSession(f"no open session {number!r:.40}")
        return session

    def op_data(self, args: dict[str, Any]) -> dict[str, Any]:
        session = self._session(args)
        data = args.get("data")
        if not isinstance(data, bytes):
            raise BadArgs("session-data takes {session, data: bytes}")
        session.feed(data)
        return {}

    def op_close(self, args: dict[str, Any]) -> dict[str, Any]:
        session = self._session(args)
        self.open.pop(session.number, None)
        session.close()
        return {}

    def end(self, session: Session, error: ZoneError | None) -> None:
        """The zone ends ``session``: its client closed it (``error`` None), its TLS failed, or
        it would hold more than IN_FLIGHT."""
        if self.open.pop(session.number, None) is None:
            return
        if error is None:
            session.close()
        else:  # no close_notify, which would tell the client all went well: the event says why
            session.release()
        closed = {"code": error.code, "message": error.message} if error else None
        if error is not None:
            self.failed += 1
            log(f"session {session.number} failed: {error.message}")
        session._flush()
        self.event({"event": "session", "session": session.number, "closed": closed})

    def reset(self) -> None:
        """A new host: end every session silently (their clients went with the old host)."""
        sessions, self.open = self.open, {}
        for session in sessions.values():
            session.release()

    def in_flight(self) -> int:
        """Bytes of unfinished messages the open sessions hold."""
        return sum(session.decoder.pending for session in self.open.values())

    def stats(self) -> dict[str, int]:
        return {"open": len(self.open), "opened": self.opened, "failed": self.failed}


def _server_context(keeper_answer: dict[str, Any]) -> ssl.SSLContext:
    import ssl  # noqa: F811

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.num_tickets = 0
    fd = os.memfd_create("sez-session", os.MFD_CLOEXEC)
    try:
        os.write(fd, keeper_answer["chain"] + keeper_answer["key"])
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context
