"""Hostile cases against one live zone, and the oracles checked after every batch.

    campaign = Campaign(url, console_log, trust=(root, reference), seed=7)
    await campaign.arm(owner_key)             # enrol, load applets, plant the secrets
    await campaign.batch("mutated", 500)      # on the plain channel, then the checkpoint
    await campaign.batch("ops", 500, session=True)   # inside an attested session
    campaign.report()                         # counts, codes, memory, timings

What each batch must leave behind (``Violation`` otherwise, saying which oracle failed):

* every request the zone can read (a shadow of its own frame decoder, fed the same bytes,
  says which) is answered, with its id, within ANSWER_BOUND seconds;
* every error frame carries a code of ``firmware.abi.errors.Code`` and none is ``internal``
  (a zone bug), on the channel and in the zone's own error counts (``stats``);
* a new host session (wire.BREAK, then ``hello``; every ``reconnect_every`` batches on a
  reopened channel) is answered within HELLO_BOUND seconds, with its nonce;
* ``info``: no monitor restart, the same boot, ``uptime`` grows (no reboot);
* ``stats``: the monitor's resident memory at most ``rss_bound`` bytes; no answer dropped;
* the planted secrets (a provisioned secret's value and a sealed plaintext, each a random
  marker, raw and in hex) appear in no byte the host reads (answers, errors, events), no
  session's plaintext, and no console line; the console holds no traceback (CONSOLE_ALARMS).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric import ec

from firmware.abi import wellformed, wire
from firmware.abi.errors import Code
from host_driver import Zone
from host_driver.owner import build_applet, owner_spki
from host_driver.relay.tls import TlsChannel

from .generator import Case, Generator

__all__ = ["Campaign", "Violation", "Markers", "ObservedZone", "Observer", "ANSWER_BOUND",
           "HELLO_BOUND", "RSS_BOUND", "APPLETS"]

#: Seconds after a batch's last byte within which every request it holds must be answered
#: (a ``result`` may wait up to 60 s by design; a job's wall time is at most 60 s).
ANSWER_BOUND = 120.0
#: Seconds within which a new host session's hello must be answered (the zone may still be
#: busy with the batch's last large case).
HELLO_BOUND = 30.0
#: The monitor's resident memory may not exceed this: one plain message in flight (16 MiB,
#: decoded: 3 copies), the sessions' in-flight budget (32 MiB), the queue of answers for a
#: host that does not read (64 MiB), and the interpreter with ssl and cryptography loaded.
RSS_BOUND = 192 << 20
#: Writes into a session are cut to this size (each becomes one ``session-data``).
SESSION_WRITE = 1 << 20
APPLETS = Path(__file__).resolve().parent.parent / "applets"
#: The applets a campaign loads: the planted secret is provisioned for ``secret-reader``,
#: the sealed marker made by ``vault``; ``misbehave`` and ``null`` run hostile jobs.
LOADED = ("null", "misbehave", "vault", "secret-reader")
SECRET_NAME = "fuzz-marker"
#: What the console must never say: a failure the zone only logged (a traceback), a
#: descriptor used after it was closed.
CONSOLE_ALARMS = (b"Traceback", b"Bad file descriptor")


class Violation(AssertionError):
    """An oracle failed: what, in which batch."""


@dataclass
class Markers:
    """The planted secrets: what must never come out of the zone, in any form searched."""

    secret: bytes = field(default_factory=lambda: b"SEZ-SECRET-" + os.urandom(12).hex().encode())
    sealed: bytes = field(default_factory=lambda: b"SEZ-SEALED-" + os.urandom(12).hex().encode())

    def forms(self) -> list[bytes]:
        """Each marker raw and in hex (lower and upper case)."""
        return [form for marker in (self.secret, self.sealed)
                for form in (marker, marker.hex().encode(), marker.hex().upper().encode())]

    def found_in(self, data: bytes) -> list[str]:
        return [f"marker {form[:14]!r}... ({len(form)} bytes)" for form in self.forms()
                if form in data]


class Observer:
    """Everything one end of a channel receives: answers counted by id, error codes by
    category, and the markers searched in every byte (across read boundaries)."""

    def __init__(self, markers: Markers, where: str) -> None:
        self.markers = markers
        self.where = where
        self.decoder = wire.FrameDecoder()
        self.answered: Counter[int] = Counter()
        #: Error frames with id null (but garbage skipped): answers to what had no usable id.
        self.unnamed = 0
        self.codes: Counter[str] = Counter()
        #: The last errors received, (id, code, message): what a test may look at.
        self.recent: deque[tuple[Any, str, str]] = deque(maxlen=64)
        self.oks = 0
        self.problems: list[str] = []
        self.received = 0
        self._tail = b""
        self._keep = max(len(form) for form in markers.forms())

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        window = self._tail + data
        for leak in self.markers.found_in(window):
            self.problems.append(f"{self.where}: {leak} in what the zone sent")
        self._tail = window[-self._keep:]
        for item in self.decoder.feed(data):
            if not isinstance(item, wire.Frame) or not isinstance(item.payload, dict):
                continue
            payload = item.payload
            if item.kind == wire.Kind.RESPONSE:
                request_id = payload.get("id")
                if isinstance(request_id, int):
                    self.answered[request_id] += 1
                elif request_id is None and not _garbage(payload):
                    self.unnamed += 1
                if payload.get("ok") is True:
                    self.oks += 1
                else:
                    self._error(payload.get("id"), payload.get("error"))

    def _error(self, request_id: Any, error: Any) -> None:
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        self.codes[str(code)] += 1
        self.recent.append((request_id, str(code), str(message)))
        if code not in set(Code) or code == Code.INTERNAL:
            self.problems.append(f"{self.where}: untyped or internal error {code!r}: "
                                 f"{str(message)[:200]}")
        if not isinstance(message, str) or len(message) > wire.MESSAGE_MAX:
            self.problems.append(f"{self.where}: error {code} with a message of "
                                 f"{len(str(message))} characters")


def _skipped(message: Any) -> bool:
    """Whether a fault is a run of garbage skipped: the zone reports one per run *per read*,
    so how many depends on how the bytes arrived (not counted against the shadow)."""
    return isinstance(message, str) and message.startswith("skipped ")


def _garbage(payload: dict[str, Any]) -> bool:
    error = payload.get("error")
    return isinstance(error, dict) and error.get("code") == Code.BAD_FRAME and _skipped(
        error.get("message"))


class ObservedZone(Zone):
    """A driver whose every received byte also goes to ``observer`` (set before opening)."""

    observer: Observer | None = None

    def _on_data(self, data: bytes) -> None:
        if self.observer is not None:
            self.observer.feed(data)
        super()._on_data(data)


class Stream:
    """Where a batch's cases go: the plain channel or a session's TLS. A shadow of the zone's
    frame decoder (the same code, fed the same bytes) says what the zone reads: each request
    with a usable id must be answered with that id, and everything else (a fault, a request
    without one) with one error frame of id null. It also says when a case left a frame
    unfinished: then a BREAK follows, so the next case starts on a frame boundary."""

    def __init__(self, write: Callable[[bytes], None], drain: Callable[[], Awaitable[None]],
                 chunk: int | None = None) -> None:
        self._write = write
        self._drain = drain
        self._chunk = chunk
        self.shadow = wire.FrameDecoder(limits=wellformed.INBOUND)
        self.expected: Counter[int] = Counter()
        self.unnamed = 0
        self.sent = 0

    async def send(self, data: bytes) -> None:
        for item in self.shadow.feed(data):
            payload = item.payload if isinstance(item, wire.Frame) else None
            request_id = payload.get("id") if isinstance(payload, dict) else None
            if type(request_id) is int and 0 <= request_id < 1 << 64:
                self.expected[request_id] += 1
            elif not (isinstance(item, wire.Fault) and _skipped(item.message)):
                self.unnamed += 1
        step = self._chunk or len(data) or 1
        for start in range(0, len(data), step):
            self._write(data[start:start + step])
            await self._drain()
        self.sent += len(data)

    async def case(self, case: Case) -> None:
        await self.send(case.data)
        if self.shadow.pending:
            await self.send(wire.BREAK)

    def reset(self) -> None:
        """The driver's own requests follow (they end any message left unfinished)."""
        self.shadow.reset()


@dataclass
class Tally:
    """What one category got: cases, frames, bytes, seconds, error codes, answers."""

    cases: int = 0
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0
    answered: int = 0
    codes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "frames": self.frames, "bytes": self.bytes,
                "seconds": round(self.seconds, 1), "requests_answered": self.answered,
                "codes": dict(self.codes.most_common())}


class Campaign:
    """One live zone (its channel ``url``, its ``console`` log) under hostile cases from
    ``seed``. ``trust`` is (root certificate, reference values) for attested sessions."""

    def __init__(self, url: str, console: Path, *, trust: tuple[Any, Any], seed: int,
                 rss_bound: int = RSS_BOUND, reconnect_every: int = 10,
                 big_budget: int = 40 << 20) -> None:
        self.url = url
        self.console = console
        self.root, self.reference = trust
        self.generator = Generator(seed, big_budget=big_budget)
        self.markers = Markers()
        self.rss_bound = rss_bound
        self.reconnect_every = reconnect_every
        self.tallies: dict[str, Tally] = {}
        self.batches = 0
        self.reconnects = 0
        self.hello_seconds: list[float] = []
        self.rss: list[int] = []
        self.peak = 0
        self.zone: ObservedZone | None = None
        self.observer = Observer(self.markers, "plain channel")
        self.session_observers: list[Observer] = []
        self.first: dict[str, Any] = {}
        self.last_info: dict[str, Any] = {}  # what the last checkpoint's info said
        self.last_uptime = 0.0
        #: Answers the zone dropped (a host too slow to read them): none may be, but for a
        #: flooding host's (hosts.flood moves this on).
        self.dropped = 0
        self._console_at = console.stat().st_size if console.exists() else 0
        self.blob = b""

    # -- set-up -------------------------------------------------------------------------------

    async def connect(self) -> ObservedZone:
        zone = ObservedZone(self.url, timeout=60, heartbeat=None)
        zone.observer = self.observer
        await zone.open(hello_timeout=HELLO_BOUND)
        self.zone = zone
        return zone

    async def arm(self, owner: ec.EllipticCurvePrivateKey) -> None:
        """Enrol ``owner``, load the test applets, and plant the secrets inside an attested
        session: a provisioned secret whose value is a marker (for ``secret-reader``) and a
        marker sealed by ``vault`` (its blob kept, to be fed back changed)."""
        zone = self.zone or await self.connect()
        await zone.enroll(owner_spki(owner))
        for name in LOADED:
            await zone.load(build_applet(APPLETS / name, owner))
        session = await zone.session(root=self.root, reference=self.reference)
        try:
            self._tap(session, "arming session")
            await session.secret_put(SECRET_NAME, self.markers.secret, applet="secret-reader")
            request = {"op": "seal", "data": self.markers.sealed.hex()}
            result = await session.run("vault", json.dumps(request).encode(), timeout=60)
            self.blob = bytes(result["output"])
        finally:
            await session.close()
        self.generator.context = {"secret": SECRET_NAME, "blob": self.blob}
        info, stats = await zone.info(), await zone.stats()
        self.first = {"boot_counter": info["boot_counter"], "restarts": info["monitor_restarts"],
                      "rss": stats["memory"]["rss"], "limit": stats["memory"]["limit"]}
        self.last_uptime = float(info["uptime"])
        self.dropped = stats["dropped_frames"]

    def _tap(self, session: Zone, where: str) -> Observer:
        """Observe every byte of ``session``'s plaintext (what its TLS channel hands on)."""
        observer = Observer(self.markers, where)
        channel = session._channel
        assert isinstance(channel, TlsChannel)
        forward = channel._on_data

        def tapped(data: bytes) -> None:
            observer.feed(data)
            forward(data)

        channel._on_data = tapped
        self.session_observers.append(observer)
        return observer

    # -- batches ------------------------------------------------------------------------------

    async def batch(self, category: str, count: int, *, session: bool = False) -> None:
        """``count`` cases of ``category`` on the plain channel, or inside a new attested
        session; then the checkpoint. Raises Violation if an oracle fails."""
        zone = self.zone or await self.connect()
        name = f"session/{category}" if session else category
        tally = self.tallies.setdefault(name, Tally())
        self.generator.in_session = session
        cases = self.generator.cases(category, count)
        started = time.monotonic()
        if session:
            inner = await zone.session(root=self.root, reference=self.reference)
            observer = self._tap(inner, f"session ({category})")
            channel = inner._channel
            assert isinstance(channel, TlsChannel)
            stream = Stream(channel.write, zone._drain, chunk=SESSION_WRITE)
        else:
            inner, observer = None, self.observer
            assert zone._channel is not None
            stream = Stream(zone._channel.write, zone._drain)
        codes_before = Counter(observer.codes)
        answered_before = sum(observer.answered.values())
        unnamed_before = observer.unnamed
        try:
            for case in cases:
                await stream.case(case)
                if inner is not None and inner.failure is not None:
                    raise Violation(f"{name}: the session ended: {inner.failure}")
            await self._answers(stream, observer, name, unnamed_before)
            if inner is not None:
                if inner.failure is not None:
                    raise Violation(f"{name}: the session ended: {inner.failure}")
                assert await inner.echo(b"alive", timeout=HELLO_BOUND) == b"alive"
        finally:
            if inner is not None:
                await inner.close()
        tally.cases += len(cases)
        tally.frames += sum(case.frames for case in cases)
        tally.bytes += stream.sent
        tally.seconds += time.monotonic() - started
        tally.answered += sum(observer.answered.values()) - answered_before
        tally.codes.update(observer.codes - codes_before)
        self.batches += 1
        await self.checkpoint(name, stream if inner is None else None)

    async def _answers(self, stream: Stream, observer: Observer, name: str,
                       unnamed_before: int) -> None:
        """Wait until the zone has answered everything of the batch it read: each request
        with a usable id, and each fault and id-less request with an error of id null."""
        deadline = time.monotonic() + ANSWER_BOUND
        while True:
            missing = stream.expected - observer.answered
            unnamed = stream.unnamed - (observer.unnamed - unnamed_before)
            if not missing and unnamed <= 0:
                if unnamed < 0:
                    raise Violation(f"{name}: {-unnamed} more errors of id null than faults")
                return
            if time.monotonic() > deadline:
                raise Violation(f"{name}: after {ANSWER_BOUND:.0f} s, {sum(missing.values())} "
                                f"requests unanswered (ids {sorted(missing)[:5]}) and {unnamed}"
                                " faults without their error frame")
            await asyncio.sleep(0.05)

    # -- the checkpoint -----------------------------------------------------------------------

    async def checkpoint(self, name: str, stream: Stream | None = None) -> None:
        """A new host session, then every oracle; Violation naming the batch otherwise."""
        zone = self.zone
        assert zone is not None
        started = time.monotonic()
        # The answers still owed to this host first (a closed session's last posts: its data
        # and session-close): a new host session drops what is queued for the old one, by
        # design, and the oracle below counts every dropped answer.
        owed = [future for future in zone._pending.values() if not future.done()]
        if owed:
            await asyncio.wait(owed, timeout=HELLO_BOUND)
        if self.batches % self.reconnect_every == 0:  # a new host on a reopened channel
            await zone.close()
            zone = await self.connect()
            self.reconnects += 1
        else:  # a new host session on the same channel: BREAK, hello
            assert zone._channel is not None
            zone._channel.write(wire.BREAK)
            if stream is not None:
                stream.reset()
            await asyncio.wait_for(zone.hello(), HELLO_BOUND)
        self.hello_seconds.append(time.monotonic() - started)
        info, stats = await zone.info(), await zone.stats()
        problems = list(self.observer.problems)
        for observer in self.session_observers:
            problems += observer.problems
        if info["monitor_restarts"] != self.first["restarts"]:
            problems.append(f"the monitor restarted ({info['monitor_restarts']} restarts)")
        if info["boot_counter"] != self.first["boot_counter"]:
            problems.append(f"the zone rebooted (boot {info['boot_counter']})")
        if float(info["uptime"]) <= self.last_uptime:
            problems.append(f"uptime went back: {info['uptime']} after {self.last_uptime}")
        self.last_uptime = float(info["uptime"])
        self.last_info = {key: info[key] for key in (
            "monitor_restarts", "boot_counter", "uptime", "host_sessions", "host_disconnects")}
        if stats["dropped_frames"] != self.dropped:
            problems.append(f"the zone dropped {stats['dropped_frames'] - self.dropped} answers")
        self.dropped = stats["dropped_frames"]
        unknown = set(stats["errors"]) - set(Code)
        if unknown or stats["errors"].get(Code.INTERNAL):
            problems.append(f"the zone counted untyped or internal errors: {stats['errors']}")
        memory = stats["memory"]
        self.rss.append(memory["rss"])
        self.peak = max(self.peak, memory["peak"])
        if memory["peak"] > self.rss_bound:
            problems.append(f"the monitor's memory peaked at {memory['peak'] >> 20} MiB, "
                            f"over the bound of {self.rss_bound >> 20} MiB")
        problems += self._console()
        if problems:
            raise Violation(f"after batch {self.batches} ({name}): " + "; ".join(problems[:5]))

    def _console(self) -> list[str]:
        """What the console printed since the last checkpoint that it must not have."""
        start = max(0, self._console_at - 64)  # and a little before: a marker across reads
        with open(self.console, "rb") as f:
            f.seek(start)
            window = f.read()
        text = window[self._console_at - start:]
        self._console_at = start + len(window)
        problems = [f"{leak} on the console" for leak in self.markers.found_in(window)]
        for sign in CONSOLE_ALARMS:
            if sign in text:
                line = text[text.index(sign):][:600].decode(errors="replace")
                problems.append(f"on the console: {line!r}")
        return problems

    # -- the report ---------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        return {"cases": sum(t.cases for t in self.tallies.values()),
                "frames": sum(t.frames for t in self.tallies.values()),
                "bytes": sum(t.bytes for t in self.tallies.values())}

    def report(self) -> dict[str, Any]:
        hello = sorted(self.hello_seconds) or [0.0]
        return {
            **self.totals(),
            "batches": self.batches,
            "categories": {name: t.as_dict() for name, t in sorted(self.tallies.items())},
            "codes": dict(sum((t.codes for t in self.tallies.values()), Counter()).most_common()),
            "new_host_sessions": len(self.hello_seconds), "reopened_channels": self.reconnects,
            "hello_seconds": {"p50": hello[len(hello) // 2], "max": hello[-1]},
            "memory": {"rss_before": self.first.get("rss"), "rss_after": self.rss[-1] if self.rss
                       else None, "rss_max": max(self.rss, default=0), "peak": self.peak,
                       "bound": self.rss_bound, "limit": self.first.get("limit")},
            "bytes_received": self.observer.received + sum(o.received
                                                           for o in self.session_observers),
        }
