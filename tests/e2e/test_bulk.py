"""The bulk window (firmware.abi.bulk) on real zones: large fields travel through shared
memory, the control port carries only the messages; an applet's input and output go that way
with receipts that verify; bad spans are refused and the zone goes on; a machine resumed
from a template has a window too, and so does a cold one. (Sessions keep to their TLS:
test_sessions.)"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.factory import Factory
from emulator.paths import SezHome
from firmware.abi import bulk
from firmware.abi.errors import Code
from host_driver import BadArgs, SyncZone, Zone
from host_driver.lifecycle import BootedZone
from host_driver.owner import build_applet, generate_owner_key, owner_spki
from host_driver.verifier import verify_receipt

from .conftest import RawChannel

pytestmark = pytest.mark.e2e
APPLETS = Path(__file__).parent.parent / "applets"
MiB = 1 << 20


async def moved(zone: Zone, data: bytes) -> dict[str, int]:
    """Echo ``data``; what it added to the channel's and the window's byte counts."""
    before = await zone.stats()
    assert await zone.echo(data, timeout=60) == data
    after = await zone.stats()
    return {key: after[key] - before[key]
            for key in ("bytes_in", "bytes_out", "window_in", "window_out")}


@pytest.mark.parametrize("host", ["first", "next"])  # a host after others finds the lanes
async def test_large_fields_travel_through_the_window(sez_zone: BootedZone, host: str) -> None:
    async with await Zone.connect(sez_zone.url, heartbeat=None) as zone:
        counted = await moved(zone, os.urandom(4 * MiB))
        small = await moved(zone, os.urandom(bulk.WINDOW_MIN - 1))
        assert zone.greeting[bulk.HEAD] >= 0  # where the zone-to-host lane's positions are
    assert counted["window_in"] == counted["window_out"] == 4 * MiB
    assert counted["bytes_in"] < 4096 and counted["bytes_out"] < 4096  # the stats request too
    assert small["window_in"] == small["window_out"] == 0  # below WINDOW_MIN: inline


async def test_pipelined_transfers_beyond_a_lane_fall_back_to_the_port(sez_zone: BootedZone) -> None:
    payloads = [os.urandom(4 * MiB) for _ in range(12)]  # 48 MiB in flight: more than a lane
    async with await Zone.connect(sez_zone.url, heartbeat=None) as zone:
        before = await zone.stats()
        echoed = await asyncio.gather(*(zone.echo(p, timeout=120) for p in payloads))
        after = await zone.stats()
        assert echoed == payloads
        assert await zone.echo(payloads[0], timeout=60) == payloads[0]  # the lanes came free
    through_window = after["window_in"] - before["window_in"]
    assert 0 < through_window < 12 * 4 * MiB  # some went each way
    assert after["bytes_in"] - before["bytes_in"] > 4 * MiB


def test_an_applets_input_and_output_go_through_the_window(sez_zone_factory: Callable[..., BootedZone],
                                                      sez_home: SezHome,
                                                      tmp_path: Path) -> None:
    """Cold-booted (the other tests' zone is resumed from a template)."""
    owner: ec.EllipticCurvePrivateKey = generate_owner_key(tmp_path / "owner.pem")
    booted = sez_zone_factory("bulk-zone")
    data, nonce = os.urandom(MiB), os.urandom(16)  # null's output limit: 1 MiB
    with SyncZone(booted.url, timeout=120) as zone:
        zone.enroll(owner_spki(owner))
        zone.load(build_applet(APPLETS / "null", owner))
        before = zone.stats()
        answer = zone.run("null", data, nonce=nonce)
        after = zone.stats()
    assert answer["output"] == data
    assert after["window_in"] - before["window_in"] == len(data)
    assert after["window_out"] - before["window_out"] == len(data)
    verify_receipt(answer["receipt"], input=data, output=data, nonce=nonce,
                   root=Factory(sez_home).root_cert())


@pytest.mark.parametrize("refs", [
    {"data": [0, bulk.LANE_SIZE]},  # a whole lane: more than a message may be
    {"data": [bulk.LANE_SIZE - 10, 20]},  # across the lane's end
    {"data": [0, -1]},
    {"data": "everything"},
    {"data": [0, 1], "more": [1 << 63, 1]},
    "data",
])
def test_a_bad_span_is_bad_args_and_the_zone_goes_on(raw_channel: RawChannel, refs: object) -> None:
    raw_channel.request(1, "echo", {bulk.KEY: refs})
    answer = raw_channel.response(1)
    assert answer["ok"] is False and answer["error"]["code"] == Code.BAD_ARGS
    raw_channel.request(2, "echo", {"data": b"still here"})
    assert raw_channel.response(2)["result"] == {"data": b"still here"}


def test_the_zone_reads_a_span_once_when_the_request_comes(raw_channel: RawChannel) -> None:
    """Written by hand: the span's bytes are hashed by the zone as they were when it read the
    request; what the host writes there after the answer changes nothing."""
    assert raw_channel.port.window is not None
    fd = os.open(raw_channel.port.window, os.O_RDWR)
    try:
        data = os.urandom(bulk.WINDOW_MIN)
        os.pwrite(fd, data, bulk.H2Z_BASE)
        raw_channel.request(1, "echo", {bulk.KEY: {"data": [0, len(data)]}})
        first = raw_channel.response(1, timeout=30)["result"]["data"]
        os.pwrite(fd, bytes(len(data)), bulk.H2Z_BASE)
    finally:
        os.close(fd)
    assert hashlib.sha256(first).digest() == hashlib.sha256(data).digest()

