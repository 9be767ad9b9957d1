"""The control channel against a booted zone: sessions, echo, pipelining, bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from firmware import FIRMWARE_VERSION
from firmware.abi import wire
from firmware.abi.errors import Code
from host_driver import BadArgs, ChannelBusy, ConnectError, SyncZone, UnknownOp, Zone, ZoneError
from host_driver.lifecycle import BootedZone
from host_driver.relay import client

from .conftest import RawChannel

pytestmark = pytest.mark.e2e


async def test_hello_and_info(sez_zone: BootedZone) -> None:
    async with await Zone.connect(sez_zone.url) as zone:
        assert zone.greeting["protocol"] == wire.VERSION
        assert zone.greeting["firmware"] == FIRMWARE_VERSION
        assert zone.greeting["max_payload"] == wire.MAX_PAYLOAD
        info = await zone.info()
    assert info["firmware"] == FIRMWARE_VERSION
    assert info["protocol"] == wire.VERSION
    assert info["boot_counter"] >= 1
    assert info["debug"] is False
    assert 0 < info["uptime"] < 3600
    assert 0 < info["memory"]["available"] <= info["memory"]["total"]
    assert info["host_sessions"] >= 1


async def test_sessions_are_counted(sez_zone: BootedZone) -> None:
    async with await Zone.connect(sez_zone.url) as zone:
        first = zone.greeting["session"]
        again = await zone.hello()
    assert again["session"] == first + 1


async def test_one_mebibyte_echo_is_intact(sez_zone: BootedZone) -> None:
    data = os.urandom(1 << 20)
    async with await Zone.connect(sez_zone.url) as zone:
        assert await zone.echo(data, timeout=60) == data


async def test_200_pipelined_requests_are_matched_by_id(sez_zone: BootedZone) -> None:
    async with await Zone.connect(sez_zone.url, heartbeat=None) as zone:
        before = (await zone.stats())["frames_in"]
        payloads = [os.urandom(i % 97 + 1) for i in range(200)]
        results = await asyncio.gather(*(zone.echo(p, timeout=60) for p in payloads))
        after = (await zone.stats())["frames_in"]
    assert results == payloads
    assert after - before == 201  # the 200 echoes and the second stats


def test_sync_facade(sez_zone: BootedZone) -> None:
    with SyncZone(sez_zone.url) as zone:
        assert zone.echo(b"sync") == b"sync"
        assert zone.info()["firmware"] == FIRMWARE_VERSION


async def test_unknown_op_and_bad_args_are_typed(sez_zone: BootedZone) -> None:
    async with await Zone.connect(sez_zone.url) as zone:
        with pytest.raises(UnknownOp) as unknown:
            await zone.request("format-the-disk")
        assert unknown.value.code == Code.UNKNOWN_OP
        with pytest.raises(BadArgs):
            await zone.request("echo", {"data": "text, not bytes"})
        assert await zone.echo(b"still here") == b"still here"


async def test_bad_schedule_and_audit_requests_are_typed(sez_zone: BootedZone) -> None:
    async with await Zone.connect(sez_zone.url) as zone:
        for op, args, code in (
                ("schedule", {"change": "text, not a signed document"}, Code.BAD_ARGS),
                ("schedule", {"change": b"\xd2\x84 not COSE"}, Code.NOT_OWNER),
                ("unschedule", {}, Code.BAD_ARGS),
                ("audit", {"after": -1}, Code.BAD_ARGS),
                ("audit", {"limit": 0}, Code.BAD_ARGS),
                ("audit", {"after": "1"}, Code.BAD_ARGS),
                ("audit-ack", {"upto": "all"}, Code.BAD_ARGS),
                ("audit-ack", {}, Code.BAD_ARGS)):
            with pytest.raises(ZoneError) as failure:
                await zone.request(op, args)
            assert failure.value.code == code, (op, args, failure.value)
        log = await zone.audit()
        assert len(log["chain"]) == 2 and log["next"] >= 1
        assert await zone.echo(b"still here") == b"still here"


# -- bad input on the raw channel ------------------------------------------------------------


def assert_zone_answers(raw: RawChannel, request_id: int = 4242) -> None:
    raw.request(request_id, "echo", {"data": b"alive"})
    answer = raw.response(request_id)
    assert answer["ok"] is True and answer["result"]["data"] == b"alive"


def test_random_bytes_then_a_request(raw_channel: RawChannel) -> None:
    junk = os.urandom(64 * 1024).replace(b"SZ", b"sz")
    raw_channel.write(junk)
    error = raw_channel.error(Code.BAD_FRAME)
    assert error["id"] is None
    assert_zone_answers(raw_channel)


def test_a_half_sent_frame_waits_for_the_next_session(raw_channel: RawChannel) -> None:
    """A host that falls silent mid-message is not guessed from silence (a slow host under
    load looks the same): the next session's BREAK ends the frame, its first message ends the
    message, and the zone says what it dropped."""
    message = wire.encode_request(1, "echo", {"data": os.urandom(200_000)})
    raw_channel.write(message[:150_000])  # two whole frames of four, and part of the third
    raw_channel.write(wire.BREAK)
    raw_channel.request(4243, "echo", {"data": b"next"})
    error = raw_channel.error(Code.TRUNCATED_FRAME)
    assert error["id"] is None and "did not finish" in error["error"]["message"]
    assert raw_channel.response(4243)["result"]["data"] == b"next"
    assert_zone_answers(raw_channel)


def test_oversized_length_field(raw_channel: RawChannel) -> None:
    raw_channel.write(wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Kind.REQUEST, 2**32 - 1))
    raw_channel.error(Code.FRAME_TOO_LARGE)
    assert_zone_answers(raw_channel)


def test_invalid_cbor(raw_channel: RawChannel) -> None:
    body = b"\x1c\x00\x00"
    raw_channel.write(wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Kind.REQUEST, len(body))
                      + body)
    raw_channel.error(Code.BAD_CBOR)
    assert_zone_answers(raw_channel)


@pytest.mark.parametrize("payload, code", [
    ({"op": "echo", "args": {}}, Code.BAD_REQUEST),  # no id
    ({"id": -1, "op": "echo"}, Code.BAD_REQUEST),  # id not unsigned
    ({"id": 1, "op": 7}, Code.BAD_REQUEST),  # op not text
    (["id", 1, "op", "echo"], Code.BAD_REQUEST),  # not a map
    ({"id": 1, "op": "echo", "args": [1, 2]}, Code.BAD_ARGS),
    ({"id": 1, "op": "no-such-op"}, Code.UNKNOWN_OP),
])
def test_malformed_requests(raw_channel: RawChannel, payload: object, code: str) -> None:
    raw_channel.write(wire.encode_frame(wire.Kind.REQUEST, payload))
    raw_channel.error(code)
    assert_zone_answers(raw_channel)


def test_out_of_order_frame_kind(raw_channel: RawChannel) -> None:
    raw_channel.write(wire.encode_frame(wire.Kind.RESPONSE, {"id": 9, "ok": True, "result": 1}))
    error = raw_channel.error(Code.UNEXPECTED_KIND)
    assert error["id"] == 9
    assert_zone_answers(raw_channel)


async def test_host_leaves_mid_frame_and_a_new_host_attaches(sez_zone: BootedZone) -> None:
    raw = RawChannel(sez_zone.url)
    frame = wire.encode_request(1, "echo", {"data": b"y" * 5000})
    raw.write(frame[:3000])
    raw.close()
    async with await Zone.connect(sez_zone.url, timeout=10) as zone:
        assert await zone.echo(b"new host") == b"new host"


async def test_a_second_driver_is_told_the_channel_is_busy(sez_zone: BootedZone) -> None:
    async with await Zone.connect(sez_zone.url):
        started = time.monotonic()
        with pytest.raises(ChannelBusy):
            await Zone.connect(sez_zone.url)
        assert time.monotonic() - started < 2


async def test_a_missing_channel_is_a_connect_error() -> None:
    with pytest.raises(ConnectError, match="does not exist"):
        await Zone.connect("/dev/pts/no-such-pty")


DRIVER = textwrap.dedent("""
    import asyncio, sys
    from firmware.abi import wire
    from host_driver import Zone
    async def main():
        zone = await Zone.connect(sys.argv[1], heartbeat=None)
        message = wire.encode_request(1, "echo", {"data": b"z" * (8 << 20)})
        zone._channel.write(message[:len(message) // 2])  # half of an 8 MiB request
        await zone._channel.drain()
        print("half sent", flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")


async def test_driver_killed_mid_request_then_a_new_driver(sez_zone: BootedZone) -> None:
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, sez_zone.url], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"half sent\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # The new session's BREAK ends the half-sent request by construction: its first hello is
    # answered (a hello timeout shorter than the retry interval allows no second one).
    async with await Zone.connect(sez_zone.url, timeout=15,
                                  hello_timeout=client.HELLO_RETRY - 0.5) as zone:
        assert await zone.echo(b"after the kill") == b"after the kill"
        stats = await zone.stats()
    assert stats["errors"].get(Code.TRUNCATED_FRAME, 0) >= 1
