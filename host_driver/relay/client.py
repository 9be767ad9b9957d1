"""The asyncio client of the zone's control port.

    async with await Zone.connect("/dev/pts/3") as zone:
        info = await zone.info()
        data = await zone.echo(b"ping")

Requests are pipelined: each carries an id, many can be in flight, and responses are matched
by id in whatever order they come. Every call has a timeout (``DEFAULT_TIMEOUT`` unless
given) and raises :class:`~host_driver.errors.ZoneTimeout` when it runs out, never returning
partial data (``bounds`` says how long a call may take in all). Error frames become the
:class:`~firmware.abi.errors.ZoneError` subclass of their code. Frames with ``id: null`` (the
zone's answer to bytes it could not read) are kept in ``Zone.faults``.

(Over 400 lines: ``Zone`` is one state machine, its session, requests and incoming frames
sharing one table of pending requests.)
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable

from firmware.abi import audit as audit_claims
from firmware.abi import bulk
from firmware.abi import wire
from firmware.abi.errors import Internal, ProtocolError, SezError, ZoneError, error_for_code
from firmware.abi.jobs import FINAL, RESULT_WAIT_MAX
from firmware.abi.ops import Op

from ..errors import ChannelClosed, StateError, ZoneTimeout, ZoneUnresponsive
from ..verifier import AttestationResult, Reference, verify_session
from .bounds import bounded_by
from .bulk import HostWindow
from .channel import Channel, open_channel
from .tls import TlsChannel, client_context
from .tunnel import Tunnel

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["Zone", "ZoneState", "DEFAULT_TIMEOUT", "HELLO_RETRY", "RESULT_CHUNK"]

log = logging.getLogger(__name__)

#: Seconds a request waits for its answer unless told otherwise.
DEFAULT_TIMEOUT = 10.0
#: Seconds between heartbeats, and how long one may go unanswered before the zone counts as
#: frozen or gone: a dead zone is detected within HEARTBEAT + HEARTBEAT_TIMEOUT seconds.
HEARTBEAT = 2.0
HEARTBEAT_TIMEOUT = 8.0
#: Seconds before hello is sent again when the zone has not answered it. (A session starts
#: with wire.BREAK, which ends whatever an earlier host left half-sent, so a running zone reads
#: the hello as soon as it arrives, and a booting one once its monitor starts: the retry only
#: covers a monitor that restarted and lost it.)
HELLO_RETRY = 5.0
#: The longest the zone holds one ``result`` answer (seconds): a longer wait asks again.
RESULT_CHUNK = float(RESULT_WAIT_MAX)


class ZoneState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    RUNNING = "running"
    CLOSED = "closed"


class Zone:
    """A session with one zone over its control channel, or (``Zone.session``) an attested
    session with it, over TLS inside that channel."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 heartbeat: float | None = HEARTBEAT,
                 tls: tuple[Tunnel, ssl.SSLContext] | None = None) -> None:
        self.url = url
        self._tls = tls
        #: What the appraisal of an attested session proved (None on the plain channel).
        self.attestation: AttestationResult | None = None
        self.timeout = timeout
        self.heartbeat = heartbeat
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.state = ZoneState.IDLE
        self.greeting: dict[str, Any] = {}
        self.faults: list[ZoneError] = []
        self.failure: Exception | None = None
        self._channel: Channel | None = None
        self._decoder = wire.FrameDecoder()
        self._encoder = wire.FrameEncoder()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        #: The bulk window (plain channel to a zone that has one) and, per request sent
        #: through it, the host-to-zone lane's head (HostWindow.freed once it is answered).
        self._window: HostWindow | None = None
        self._marks: dict[int, int] = {}
        self._tunnels: dict[int, Tunnel] = {}
        self._next_id = secrets.randbits(40)
        self.log = log.getChild(url.rsplit("/", 1)[-1])

    @classmethod
    async def connect(cls, url: str, *, timeout: float = DEFAULT_TIMEOUT,
                      hello_timeout: float | None = None,
                      heartbeat: float | None = HEARTBEAT) -> "Zone":
        """Open the channel and start a session (``hello``); ``hello_timeout`` bounds the wait
        for a zone that is still booting (default: ``timeout``). Every ``heartbeat`` seconds
        (None: never) the client checks that the zone answers; when it has not for
        HEARTBEAT_TIMEOUT seconds, every waiting and later call raises ZoneUnresponsive."""
        zone = cls(url, timeout=timeout, heartbeat=heartbeat)
        await zone.open(hello_timeout=hello_timeout)
        return zone

    async def open(self, *, hello_timeout: float | None = None) -> dict[str, Any]:
        if self.state is not ZoneState.IDLE:
            raise StateError(f"open() needs state idle, the zone client is {self.state.value}")
        self.state = ZoneState.CONNECTING
        try:
            self._channel = await self._open_channel()
            self.greeting = await self._handshake(hello_timeout or self.timeout)
        except BaseException:
            await self.close()
            raise
        self.state = ZoneState.RUNNING
        if self.heartbeat:
            self._heartbeat_task = asyncio.ensure_future(self._beat(self.heartbeat))
        return self.greeting

    async def _open_channel(self) -> Channel:
        if self._tls is None:
            channel = await open_channel(self.url, self._on_data, self._on_lost)
            if channel.window is not None:
                self._window = HostWindow(channel.window)
            return channel
        channel = TlsChannel(*self._tls, self._on_data, self._on_lost)
        await channel.handshake(self.timeout)
        return channel

    async def _beat(self, interval: float) -> None:
        while self.state is ZoneState.RUNNING:
            await asyncio.sleep(interval)
            if self.state is not ZoneState.RUNNING:
                return
            try:
                await self.request(Op.ECHO, {"data": b""}, timeout=HEARTBEAT_TIMEOUT)
            except ZoneTimeout:
                self.log.error("no heartbeat answer within %.0f s", HEARTBEAT_TIMEOUT)
                self._dead(ZoneUnresponsive(
                    f"the zone answered no heartbeat within {HEARTBEAT_TIMEOUT:.0f} s: it is "
                    "frozen or gone", op="heartbeat", seconds=HEARTBEAT_TIMEOUT))
                return
            except (ChannelClosed, StateError):  # closed under the beat: nothing left to watch
                return
            except ZoneError as exc:  # an error frame is an answer: the zone is alive
                self.log.warning("heartbeat answered with an error: %s", exc)

    def _dead(self, exc: Exception) -> None:
        self.state = ZoneState.CLOSED
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        self._fail_pending(exc)
        self.failure = exc

    async def _handshake(self, timeout: float) -> dict[str, Any]:
        """Send wire.BREAK and ``hello`` until the zone answers, for at most ``timeout`` s.

        BREAK ends any frame an earlier host left half-sent (see firmware.abi.wire), so the
        zone reads this hello as soon as it arrives, or, still booting, once its monitor starts.
        """
        deadline = time.monotonic() + timeout
        while True:
            nonce = secrets.token_bytes(16)
            if self._tls is None:  # a new TLS connection has no half-sent frame to end
                self._channel.write(wire.BREAK)  # type: ignore[union-attr]
            request_id, future = self._send(Op.HELLO, {"nonce": nonce})
            wait = min(HELLO_RETRY, max(0.0, deadline - time.monotonic()))
            await asyncio.wait({future}, timeout=wait)
            if future.done():
                greeting = _session(future.result(), nonce)
                if self._window is not None:
                    self._window.started(greeting.get(bulk.HEAD))
                return greeting
            self._pending.pop(request_id, None)
            self._marks.pop(request_id, None)
            future.cancel()
            if time.monotonic() >= deadline:
                raise ZoneTimeout(f"zone did not answer hello within {timeout:.1f} s",
                                  op="hello", seconds=timeout)

    async def close(self) -> None:
        """Close the channel; requests still waiting fail with ChannelClosed. Idempotent."""
        self.state = ZoneState.CLOSED
        beat, self._heartbeat_task = self._heartbeat_task, None
        if beat is not None and beat is not asyncio.current_task():
            beat.cancel()
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        self._fail_pending(ChannelClosed("the channel was closed"))
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> "Zone":
        if self.state is ZoneState.IDLE:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests ---------------------------------------------------------------------------

    def _send(self, op: str, args: dict[str, Any],
              window: bool = True) -> tuple[int, asyncio.Future[Any]]:
        if self._channel is None:
            raise ChannelClosed("the channel is closed")
        self._next_id = (self._next_id + 1) & ((1 << 53) - 1)
        request_id = self._next_id
        if window and self._window is not None:
            args, self._marks[request_id] = self._window.put(args)
        frame = self._encoder.request(request_id, op, args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._channel.write(frame)
        return request_id, future

    async def request(self, op: str, args: dict[str, Any] | None = None, *,
                      timeout: float | None = None, window: bool = True) -> Any:
        """Send ``{op, args}`` and return the zone's result. Large byte strings (arguments and
        the result's) travel through the zone's bulk window when the channel has one, unless
        ``window`` is false (firmware.abi.bulk).

        Raises ZoneError (its subclass for the code) if the zone refuses, ZoneTimeout after
        ``timeout`` seconds (default ``self.timeout``), ChannelClosed if the channel goes away.
        """
        if self.state is not ZoneState.RUNNING:
            if self.failure is not None:
                raise self.failure
            raise StateError(f"request() needs state running, the zone client is {self.state.value}")
        timeout = self.timeout if timeout is None else timeout
        request_id, future = self._send(op, args or {}, window)
        timer = asyncio.get_running_loop().call_later(timeout, _expire, future, op, timeout)
        try:
            # Wait for room to write (flow control), but never past the request's own bound.
            drained = asyncio.ensure_future(self._channel.drain())  # type: ignore[union-attr]
            await asyncio.wait({drained, future}, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
            return await future
        finally:
            timer.cancel()
            self._pending.pop(request_id, None)
            self._marks.pop(request_id, None)

    async def hello(self) -> dict[str, Any]:
        """Start a new session: the zone forgets responses queued for an earlier host."""
        nonce = secrets.token_bytes(16)
        self.greeting = _session(await self.request(Op.HELLO, {"nonce": nonce}), nonce)
        return self.greeting

    async def info(self) -> dict[str, Any]:
        """Firmware and protocol versions, boot counter, uptime, memory, host sessions."""
        return dict(await self.request(Op.INFO))

    async def echo(self, data: bytes, *, timeout: float | None = None) -> bytes:
        """Send ``data`` to the zone and return what it sends back."""
        result = await self.request(Op.ECHO, {"data": data}, timeout=timeout)
        return bytes(result["data"])

    async def stats(self) -> dict[str, Any]:
        """The monitor's counters: frames and bytes each way, errors by code, ops served, CPU
        time, and its memory in bytes (``memory``: ``rss``, ``peak``, ``limit``)."""
        return dict(await self.request(Op.STATS))

    async def attest(self, nonce: bytes, *, timeout: float | None = None) -> bytes:
        """Evidence for ``nonce`` (8 to 64 bytes): a COSE_Sign1 EAT, raw CBOR. Appraise it
        with host_driver.verifier.verify_evidence; the host that relays it is not trusted."""
        result = await self.request(Op.ATTEST, {"nonce": nonce}, timeout=timeout)
        return bytes(result["evidence"])

    async def identity(self, *, timeout: float | None = None) -> dict[str, Any]:
        """UEID, alias and DeviceID certificates (DER), measurements, debug."""
        return dict(await self.request(Op.IDENTITY, timeout=timeout))

    async def owner(self) -> dict[str, Any]:
        """{owner: SHA-256 hex of the owner's public key or None, epoch, ueid}."""
        return dict(await self.request(Op.OWNER))

    async def enroll(self, owner: bytes, authorization: bytes | None = None) -> dict[str, Any]:
        """Bind ``owner`` (SPKI DER). Replacing an owner needs ``authorization``
        (host_driver.owner.enroll_authorization by the current owner). Raises ZoneError
        ``not-owner`` if it is missing or wrong."""
        args: dict[str, Any] = {"owner": owner}
        if authorization is not None:
            args["authorization"] = authorization
        return dict(await self.request(Op.ENROLL, args))

    async def load(self, signed: bytes, *, timeout: float | None = None) -> dict[str, Any]:
        """Load a signed applet (.sez bytes): {id, name, version, measurement, limits}.
        ZoneError codes: not-owner, rollback, bad-package."""
        return dict(await self.request(Op.LOAD, {"package": signed}, timeout=timeout))

    async def applets(self) -> list[dict[str, Any]]:
        return list((await self.request(Op.APPLETS))["applets"])

    async def run(self, applet: str, data: bytes, *, nonce: bytes = b"",
                  timeout: float | None = None) -> dict[str, Any]:
        """Run ``applet`` (name or id) on ``data``: {job, applet, output, receipt}. A failing
        applet raises ZoneError ``applet-failed`` saying why."""
        return dict(await self.request(Op.RUN, {"applet": applet, "input": data, "nonce": nonce},
                                       timeout=timeout))

    async def run_batch(self, applet: str, inputs: list[bytes], *, nonce: bytes = b"",
                        timeout: float | None = None) -> dict[str, Any]:
        """Run ``applet`` on each of ``inputs`` (1 to 1,024) in turn, in one job: {job,
        applet, outputs, receipt}, one receipt over all (verify_receipt with the lists). The
        applet's limits hold for the whole batch; an input that fails fails the batch."""
        return dict(await self.request(Op.RUN, {"applet": applet, "inputs": list(inputs),
                                                "nonce": nonce}, timeout=timeout))

    async def submit(self, applet: str, data: bytes, *, nonce: bytes = b"",
                     key: bytes | None = None) -> dict[str, Any]:
        """Queue a detached job: {job, state, duplicate}. With ``key`` (8-64 random bytes
        kept by the caller), resubmitting after a lost answer returns the same job and runs
        nothing twice. ZoneError ``outbox-full`` when the outbox has no room."""
        args: dict[str, Any] = {"applet": applet, "input": data, "nonce": nonce}
        if key is not None:
            args["key"] = key
        return dict(await self.request(Op.SUBMIT, args))

    def _result_bound(self, job: str, *, wait: float = 0.0) -> float:
        """The longest ``result(job, wait=wait)`` can take: one ask per RESULT_CHUNK of the
        wait and one more, each bounded by ``timeout`` + its chunk."""
        asks = 1 + int(max(wait, 0.0) // RESULT_CHUNK)
        return asks * self.timeout + max(wait, 0.0)

    @bounded_by(_result_bound)
    async def result(self, job: str, *, wait: float = 0.0) -> dict[str, Any]:
        """{job, state, applet, output?, receipt?, error?}; ``wait`` seconds (any length) hold
        the answer until the job is final. The zone holds one answer at most RESULT_CHUNK s, so a
        longer wait asks again, in chunks of at most that, until the job is final or ``wait`` is over;
        each ask is bounded by ``timeout`` + its chunk. The result stays in the zone until
        ``ack``. Raises ZoneError (``no-such-job``; ``bad-args`` for a negative wait),
        ZoneTimeout."""
        deadline = time.monotonic() + wait
        chunk = min(wait, RESULT_CHUNK)
        while True:
            answer = dict(await self.request(Op.RESULT, {"job": job, "wait": chunk},
                                             timeout=self.timeout + chunk))
            left = deadline - time.monotonic()
            if answer.get("state") in FINAL or left <= 0:
                return answer
            chunk = min(left, RESULT_CHUNK)

    async def ack(self, job: str) -> None:
        """Tell the zone the host has the result of ``job``: it leaves the outbox."""
        await self.request(Op.ACK, {"job": job})

    async def jobs(self) -> list[dict[str, Any]]:
        """The outbox: detached jobs not yet acknowledged, with their states."""
        return list((await self.request(Op.JOBS))["jobs"])

    async def schedule(self, change: bytes) -> dict[str, Any]:
        """Install an owner-signed schedule (host_driver.owner.schedule_change):
        {name, op, epoch}. ZoneError codes: not-owner, no-such-schedule, audit-full."""
        return dict(await self.request(Op.SCHEDULE, {"change": change}))

    async def unschedule(self, change: bytes) -> dict[str, Any]:
        """Remove a schedule (host_driver.owner.unschedule_change)."""
        return dict(await self.request(Op.UNSCHEDULE, {"change": change}))

    async def schedules(self) -> dict[str, Any]:
        """{ueid, epoch, schedules: [{name, applet, measurement, every, runs, skipped, ...}]}."""
        return dict(await self.request(Op.SCHEDULES))

    async def audit(self, *, after: int = 0, page: int = 256,
                    nonce: bytes | None = None) -> dict[str, Any]:
        """Every audit-log entry the zone keeps after sequence number ``after``:
        {chain: [alias, DeviceID], entries: [COSE_Sign1 bytes], first, next}. With ``nonce``,
        first the zone's evidence for it (``evidence``, ``nonce``): it names the last entry,
        which the fetch must then reach. Appraise it with host_driver.verifier.verify_audit_log
        (or verify_audit)."""
        head = {"evidence": await self.attest(nonce), "nonce": nonce} if nonce else {}
        chain: list[bytes] = []
        entries: list[bytes] = []
        while True:
            if len(entries) > audit_claims.KEPT:  # a zone that never stops: bounded
                raise ProtocolError(f"the zone sent more audit entries than it can keep "
                                    f"({audit_claims.KEPT})")
            answer = await self.request(Op.AUDIT, {"after": after, "limit": page})
            chain = [bytes(c) for c in answer["chain"]]
            got = [bytes(e) for e in answer["entries"]]
            entries += got
            if not got:
                return {"chain": chain, "entries": entries, "first": answer["first"],
                        "next": answer["next"], **head}
            after = max(after, int(answer["first"]) - 1) + len(got)

    async def audit_ack(self, upto: int) -> dict[str, Any]:
        """The host keeps the entries up to ``upto``: the zone forgets them."""
        return dict(await self.request(Op.AUDIT_ACK, {"upto": upto}))

    async def secret_put(self, name: str, value: bytes, *, measurement: bytes | None = None,
                         applet: str | None = None, min_version: int = 1,
                         debug: bool = False) -> dict[str, Any]:
        """Provision secret ``name`` (firmware.abi.secret) with ``value`` for exactly the
        applet of ``measurement``, or for any version >= ``min_version`` of ``applet`` under
        the zone's enrolled owner: {name, policy}. ``debug``: the policy lets a debug zone
        hold it (a debug zone refuses it otherwise). The zone takes it only inside an attested
        session (``needs-session`` outside one). ZoneError codes: secret-exists (written
        once), policy-unmatched (no loaded applet meets the policy), debug-refused, not-owner,
        bad-args. TypeError unless exactly one of ``measurement`` and ``applet`` is given."""
        if (measurement is None) == (applet is None):
            raise TypeError("secret_put takes exactly one of measurement= and applet=")
        policy: dict[str, Any] = ({"measurement": measurement} if measurement is not None
                                  else {"applet": applet, "min_version": min_version})
        if debug:
            policy["debug"] = True
        return dict(await self.request(Op.SECRET_PUT,
                                       {"name": name, "value": value, "policy": policy}))

    async def secret_list(self) -> list[dict[str, Any]]:
        """[{name, policy}] of the zone's provisioned secrets; values never leave the zone."""
        return list((await self.request(Op.SECRET_LIST))["secrets"])

    async def tunnel(self, *, kind: type[Tunnel] = Tunnel) -> Tunnel:
        """Open a session in the zone and return its bytes as the host sees them: a Tunnel
        carrying TLS to the zone's endpoint (``sez relay`` joins one to a TCP connection;
        ``kind``, a subclass, may look at or change what it carries: a hostile relay in
        the tests). TooManySessions when the zone has no room."""
        number = int((await self.request(Op.SESSION_OPEN))["session"])
        tunnel = self._tunnels[number] = kind(self.url, number, self._post, self._drain,
                                              self._forget_tunnel)
        return tunnel

    def _forget_tunnel(self, number: int) -> None:
        self._tunnels.pop(number, None)

    async def session(self, *, root: x509.Certificate, reference: Reference,
                      ueid: bytes | None = None, allow_debug: bool = False,
                      timeout: float | None = None, tunnel: Tunnel | None = None) -> "Zone":
        """An attested session, as a Zone whose requests travel inside TLS 1.3 to the zone:
        the host relays bytes it cannot read.

        In order, any failure closing the session: the TLS handshake, the zone's certificate
        chained to ``root`` (host_driver.relay.tls); ``hello``; then the appraisal, inside
        TLS: evidence for a fresh nonce, verified against ``root`` and ``reference`` (and
        ``ueid``; a debug zone only with ``allow_debug``), naming this connection's TLS key,
        whose certificate its alias key issued (host_driver.verifier.verify_session). Only
        then does the caller get the session, with ``attestation`` set: every operation of
        this client, and those only a session carries (``secret_put``). Raises
        VerificationError (``tls-certificate``, or the appraisal's check), SessionFailed (the
        TLS broke: bytes changed on the way), ZoneTimeout. ``tunnel``: one already opened
        (default: a new one)."""
        timeout = self.timeout if timeout is None else timeout
        tunnel = tunnel or await self.tunnel()
        session = Zone(tunnel.url, timeout=timeout, heartbeat=None,
                       tls=(tunnel, client_context(root)))
        try:
            await session.open()
            nonce = secrets.token_bytes(32)
            evidence = await session.attest(nonce)
            assert isinstance(session._channel, TlsChannel)
            session.attestation = verify_session(
                evidence, session._channel.peer_certificate, nonce=nonce, root=root,
                reference=reference, expected_ueid=ueid, allow_debug=allow_debug)
        except BaseException:
            await session.close()
            raise
        return session

    def _post(self, op: str, args: dict[str, Any],
              on_error: Callable[[SezError], None]) -> None:
        """Send a request whose answer only matters if it is an error (``on_error``)."""
        try:
            request_id, future = self._send(op, args)
        except SezError as exc:
            on_error(exc)
            return

        def answered(future: asyncio.Future[Any]) -> None:
            self._pending.pop(request_id, None)
            if not future.cancelled() and future.exception() is not None:
                error = future.exception()
                on_error(error if isinstance(error, SezError) else ChannelClosed(str(error)))

        future.add_done_callback(answered)

    async def _drain(self) -> None:
        if self._channel is not None:
            await self._channel.drain()

    async def poweroff(self) -> None:
        """Ask the zone to sync and power the machine off (QEMU exits)."""
        await self.request(Op.POWEROFF)

    # -- incoming ---------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, wire.Fault):
                self.log.warning("unreadable bytes from the zone: %s", item.message)
                continue
            payload = item.payload
            if item.kind == wire.Kind.EVENT and isinstance(payload, dict) and \
                    payload.get("event") == "session":
                tunnel = self._tunnels.get(payload.get("session"))  # type: ignore[arg-type]
                if tunnel is not None:
                    tunnel.event(payload)
                continue
            if item.kind != wire.Kind.RESPONSE or not isinstance(payload, dict):
                self.log.debug("ignoring %r", item)
                continue
            request_id = payload.get("id")
            if request_id is None and not payload.get("ok", True):
                self.faults.append(self._error(payload))
                continue
            future = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
            result: Any = payload.get("result")
            if self._window is not None:
                mark = self._marks.pop(request_id, None) if isinstance(request_id, int) else None
                if mark is not None:
                    self._window.freed(mark)
                try:
                    result = self._window.take(result)  # also for an answer no one waits for
                except ProtocolError as exc:
                    result = exc
            if future is None or future.done():
                self.log.debug("answer to no request of ours: id %r", request_id)
                continue
            if payload.get("ok") is not True:
                future.set_exception(self._error(payload))
            elif isinstance(result, ProtocolError):
                future.set_exception(result)
            else:
                future.set_result(result)

    @staticmethod
    def _error(payload: dict[str, Any]) -> ZoneError:
        error = payload.get("error")
        if not isinstance(error, dict):
            return Internal("malformed error frame from the zone")
        return error_for_code(str(error.get("code")), str(error.get("message")),
                              payload.get("id"))

    def _on_lost(self, exc: Exception | None) -> None:
        if self.state is not ZoneState.CLOSED:
            self.log.info("channel lost: %r", exc)
            self.state = ZoneState.CLOSED
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        if isinstance(exc, SezError):  # a session's TLS failed, or its tunnel was refused
            self.failure = exc
        self._fail_pending(exc if isinstance(exc, SezError) else
                           ChannelClosed(f"the channel to the zone closed ({exc or 'EOF'})"))

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        self._marks.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)
        tunnels, self._tunnels = self._tunnels, {}
        for tunnel in tunnels.values():
            tunnel._closed(exc if isinstance(exc, SezError) else ChannelClosed(str(exc)))


def _expire(future: asyncio.Future[Any], op: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(ZoneTimeout(f"zone did not answer {op} within {timeout:.1f} s",
                                         op=op, seconds=timeout))


def _session(answer: Any, nonce: bytes) -> dict[str, Any]:
    """The session ``hello`` started: ProtocolError unless the answer echoes this ``nonce``."""
    if not isinstance(answer, dict) or answer.get("nonce") != nonce:
        raise ProtocolError("hello answered with another session's nonce")
    return dict(answer)
