"""Hostile hosts and hostile applets, against the zone of a :class:`Campaign`.

Each takes the campaign (its zone armed), does its harm, then makes the campaign's
checkpoint (a new host session answered, no restart, memory bounded, nothing leaked) and
returns its figures. The channel is held exclusively: a hostile host here is the
campaign's own driver let go and a raw writer in its place, or the driver itself misused.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from firmware.abi import wire
from firmware.abi.errors import Code
from firmware.abi.ops import Op
from firmware.monitor.sessions import IN_FLIGHT, MAX_SESSIONS
from host_driver import ZoneError
from tests.rawport import RawPort

from .campaign import HELLO_BOUND, Campaign, Violation

__all__ = ["flood", "slowloris", "reconnects", "hostile_applets", "APPLET_BEHAVIOURS"]

MIB = 1 << 20


def _flood_bytes(seconds: float, url: str) -> dict[str, float]:
    """Write pipelined requests to ``url`` as fast as it takes them for ``seconds``, reading
    nothing; the zone answers into a channel nobody reads."""
    chunk = b"".join([
        wire.encode_request(1, Op.SOURCE, {"size": MIB}),  # a large answer
        *[wire.encode_request(i, Op.ECHO, {"data": os.urandom(512)}) for i in range(64)],
        os.urandom(2048),  # garbage, answered with bad-frame
        wire.encode_request(2, "no-such-op", {}),
    ])
    port = RawPort(url, write_timeout=1.0)
    written = 0
    started = time.monotonic()
    try:
        data = wire.BREAK + chunk
        while time.monotonic() - started < seconds:
            try:
                written += port.write(data)
            except TimeoutError:  # the zone is not keeping up: go on pushing
                continue
            data = chunk
    finally:
        port.close()
    return {"seconds": time.monotonic() - started, "bytes": written,
            "requests": written // len(chunk) * 67}


async def flood(campaign: Campaign, seconds: float) -> dict[str, Any]:
    """A host that writes as fast as it can and reads nothing, then goes; the next host's
    hello must be answered within HELLO_BOUND."""
    zone = campaign.zone
    assert zone is not None
    before = await zone.stats()
    await zone.close()
    figures = await asyncio.to_thread(_flood_bytes, seconds, campaign.url)
    started = time.monotonic()
    zone = await campaign.connect()
    figures["next_hello_seconds"] = time.monotonic() - started
    stats, info = await zone.stats(), await zone.info()
    figures["dropped_frames"] = stats["dropped_frames"] - before["dropped_frames"]
    figures["stalls"] = info["host"]["stalls"]
    figures["rss_peak"] = stats["memory"]["peak"]
    campaign.dropped = stats["dropped_frames"]  # answers to a host that read none: dropped
    await campaign.checkpoint("flood")
    return figures


def _dribble(url: str, data: bytes, delay: float) -> float:
    """Write ``data`` one byte every ``delay`` s; the seconds until its answer (bounded)."""
    port = RawPort(url)
    decoder = wire.FrameDecoder()
    try:
        port.write(wire.BREAK)
        for byte in data:
            port.write(bytes([byte]))
            time.sleep(delay)
        sent = time.monotonic()
        while time.monotonic() - sent < HELLO_BOUND:
            for item in decoder.feed(port.read(1 << 16)):
                if isinstance(item, wire.Frame) and item.payload.get("id") == 77:
                    if item.payload.get("result") != {"data": b"slow"}:
                        raise Violation(f"slowloris: the dribbled echo got {item.payload}")
                    return time.monotonic() - sent
        raise Violation(f"slowloris: no answer {HELLO_BOUND:.0f} s after the last byte")
    finally:
        port.close()


async def slowloris(campaign: Campaign, *, delay: float = 0.005,
                    session_message: int = 3 * MIB) -> dict[str, Any]:
    """Slow and half-open input: a request dribbled a byte at a time; every session the zone
    allows holding an unfinished message (more than the sessions' in-flight budget, so some
    are ended); an unfinished 16 MiB message on the plain channel, left for the next host."""
    zone = campaign.zone
    assert zone is not None
    figures: dict[str, Any] = {}
    # 1. One request, a byte at a time.
    await zone.close()
    request = wire.encode_request(77, Op.ECHO, {"data": b"slow"})
    figures["dribbled_bytes"] = len(request)
    figures["answer_after_last_byte_s"] = await asyncio.to_thread(
        _dribble, campaign.url, request, delay)
    zone = await campaign.connect()
    # 2. Every session holds an unfinished message.
    sessions = []
    for _ in range(MAX_SESSIONS):
        sessions.append(await zone.session(root=campaign.root, reference=campaign.reference))
    body = os.urandom(session_message)
    half = b"".join(bytes(p) for p in wire.frames_of(wire.Kind.REQUEST, body)[:-2])
    for session in sessions:
        channel = session._channel
        for start in range(0, len(half), MIB):
            if channel is None or session.failure is not None:
                break
            channel.write(half[start:start + MIB])
            await zone._drain()
    started = time.monotonic()
    assert await zone.echo(b"alive", timeout=HELLO_BOUND) == b"alive"
    figures["echo_with_sessions_half_open_s"] = time.monotonic() - started
    pending = session_message - (session_message % wire.CHUNK or wire.CHUNK)

    def held() -> int:  # what the sessions still open hold, unfinished
        return sum(s.failure is None for s in sessions) * pending

    deadline = time.monotonic() + HELLO_BOUND
    while held() > IN_FLIGHT and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the zone ends the sessions past its budget
    failed = [s for s in sessions if s.failure is not None]
    figures["sessions_half_open"] = len(sessions) - len(failed)
    figures["sessions_ended"] = len(failed)
    if held() > IN_FLIGHT or any("unfinished" not in str(s.failure) for s in failed):
        raise Violation(f"slowloris: {len(sessions) - len(failed)} sessions hold {held()} "
                        f"bytes (budget {IN_FLIGHT}); ended: "
                        f"{[str(s.failure) for s in failed][:3]}")
    figures["rss_with_sessions_half_open"] = (await zone.stats())["memory"]["rss"]
    for session in sessions:
        await session.close()
    # 3. A 16 MiB message left unfinished on the plain channel; the next host's hello.
    big = wire.encode_request(78, Op.ECHO, {"data": bytes(wire.MAX_PAYLOAD - 64)})
    assert zone._channel is not None
    zone._channel.write(big[:-wire.CHUNK])
    await zone._drain()
    await zone.close()
    started = time.monotonic()
    await campaign.connect()
    figures["hello_after_unfinished_16mib_s"] = time.monotonic() - started
    await campaign.checkpoint("slowloris")
    return figures


async def reconnects(campaign: Campaign, count: int, *, reopen: bool,
                     away: float = 0.0) -> dict[str, Any]:
    """``count`` new hosts, each leaving half a frame behind. With ``reopen``, each closes
    the channel and the next opens it again, ``away`` seconds later; otherwise each is a
    new host session on the same channel (BREAK, hello)."""
    zone = campaign.zone
    assert zone is not None
    before = await zone.info()
    half = wire.encode_request(79, Op.ECHO, {"data": os.urandom(3000)})[:1500]
    seconds = []
    started = time.monotonic()
    for _ in range(count):
        assert zone._channel is not None
        zone._channel.write(half)
        await zone._drain()
        if reopen:
            await zone.close()
            await asyncio.sleep(away)
            begun = time.monotonic()
            zone = await campaign.connect()
        else:
            begun = time.monotonic()
            assert zone._channel is not None
            zone._channel.write(wire.BREAK)
            await asyncio.wait_for(zone.hello(), HELLO_BOUND)
        seconds.append(time.monotonic() - begun)
    total = time.monotonic() - started
    after = await zone.info()
    await campaign.checkpoint("reconnects")
    seconds.sort()
    return {"count": count, "reopen": reopen, "away_s": away, "seconds": round(total, 1),
            "hello_p50_s": round(seconds[len(seconds) // 2], 4),
            "hello_p99_s": round(seconds[int(len(seconds) * 0.99)], 4),
            "hello_max_s": round(seconds[-1], 4),
            "host_sessions": after["host_sessions"] - before["host_sessions"]}


#: What a misbehaving applet (tests/applets/misbehave) does, and what its job must end in:
#: applet-failed saying this, or (None) an answer, the zone unharmed either way.
APPLET_BEHAVIOURS: dict[str, str | None] = {
    "spin": "CPU time", "sleep": "wall_seconds", "allocate": "MemoryError", "grow": "memory",
    "fork": "raised", "output": "output limit", "huge-output": "emory",
    "dev-mem": "Permission", "bbram": "Permission", "fuses": "No such file",
    "keeper": "Permission", "kill-parent": "PermissionError", "kill-init": "PermissionError",
    "abort": "signal 6", "raise": "ZeroDivisionError", "not-bytes": "not bytes",
    "garbage": "broke the job protocol (bad-frame)",
    "bignum": "broke the job protocol (bad-cbor)",
    "deep": "broke the job protocol (bad-cbor)",
    "many-items": "broke the job protocol (bad-cbor)",
    "bad-args": "[bad-args]", "unknown-call": "[unknown-op]",
    "secret:fuzz-marker": "[secret-denied]",
    "response-frame": None, "log-flood": None, "forge-log": None,
}


async def hostile_applets(campaign: Campaign) -> dict[str, str]:
    """Run every misbehaviour once; each must end as APPLET_BEHAVIOURS says, within its
    limits (wall time 4 s), and the zone answer at once after it."""
    zone = campaign.zone
    assert zone is not None
    console_at = campaign.console.stat().st_size
    outcomes = {}
    for behaviour, says in APPLET_BEHAVIOURS.items():
        started = time.monotonic()
        try:
            await zone.run("misbehave", behaviour.encode(), timeout=60)
            outcome = "answered"
            if says is not None:
                raise Violation(f"applet {behaviour}: answered, not applet-failed ({says})")
        except ZoneError as exc:
            outcome = f"[{exc.code}] {exc.message}"
            if says is None or exc.code != Code.APPLET_FAILED or says not in exc.message:
                raise Violation(f"applet {behaviour}: {outcome}, expected {says}") from exc
        outcomes[behaviour] = f"{outcome[:120]} ({time.monotonic() - started:.1f} s)"
        assert await zone.echo(b"after " + behaviour.encode()) == b"after " + behaviour.encode()
    await campaign.checkpoint("applets")
    console = campaign.console.read_bytes()[console_at:]
    forged = [line for line in console.splitlines() if b"the key keeper ended" in line]
    if any(not line.rstrip().endswith(b"[2J") or b"job " not in line for line in forged):
        raise Violation(f"applet forge-log: its line was not kept whole: {forged}")
    flooded = sum(b"(misbehave): line " in line for line in console.splitlines())
    if flooded > 20:
        raise Violation(f"applet log-flood: {flooded} of its lines reached the console")
    return outcomes

