"""Bounded waits of the host driver: Zone.result's long waits (the zone holds one answer at
most 60 s, so a longer wait asks again, in chunks) and SyncZone's bound on every call."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Iterator

import pytest

from host_driver import ZoneTimeout, ZoneUnresponsive
from host_driver.relay import client, sync
from host_driver.relay.client import Zone
from host_driver.relay.sync import SyncZone


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def asks(monkeypatch: pytest.MonkeyPatch, wait: float, states: list[str]
         ) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """The (wait, timeout) of every result request Zone.result makes while the zone answers
    ``states`` one after the other, each after holding it for the whole wait asked."""
    clock = FakeTime()
    monkeypatch.setattr(client, "time", clock)
    zone = Zone("unused", timeout=10.0)
    asked: list[tuple[float, float]] = []

    async def request(op: str, args: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        assert op == "result" and args["job"] == "7"
        asked.append((args["wait"], timeout))
        clock.now += args["wait"]
        return {"job": "7", "state": states[min(len(asked), len(states)) - 1]}

    monkeypatch.setattr(zone, "request", request)
    answer = asyncio.run(zone.result("7", wait=wait))
    return asked, answer


def test_a_long_wait_asks_again_until_it_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    asked, answer = asks(monkeypatch, 150, ["running"])
    assert asked == [(60, 70), (60, 70), (30, 40)]
    assert answer["state"] == "running"


def test_a_long_wait_ends_when_the_job_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    asked, answer = asks(monkeypatch, 600, ["queued", "running", "done"])
    assert asked == [(60, 70)] * 3
    assert answer["state"] == "done"


@pytest.mark.parametrize("wait", [0, 30, 60])
def test_a_wait_within_the_limit_is_one_request(monkeypatch: pytest.MonkeyPatch,
                                                wait: float) -> None:
    asked, _ = asks(monkeypatch, wait, ["running"])
    assert asked == [(wait, 10 + wait)]


@pytest.fixture
def bare_sync(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncZone]:
    """A SyncZone's private loop and bound, without a zone behind it."""
    monkeypatch.setattr(sync, "_MARGIN", 0.2)
    facade = SyncZone.__new__(SyncZone)
    facade.timeout = 0.1
    facade._loop = asyncio.new_event_loop()
    facade._thread = threading.Thread(target=facade._loop.run_forever, daemon=True)
    facade._thread.start()
    yield facade
    facade._stop_loop()


def test_a_zone_timeout_comes_through_the_facade_as_it_is(bare_sync: SyncZone) -> None:
    async def frozen() -> None:
        raise ZoneUnresponsive("the zone answered no heartbeat within 8 s", op="heartbeat")

    with pytest.raises(ZoneUnresponsive, match="no heartbeat"):
        bare_sync._call(frozen())


def test_a_call_that_never_ends_is_bounded_by_the_facade(bare_sync: SyncZone) -> None:
    async def hangs() -> None:
        await asyncio.sleep(60)

    started = time.monotonic()
    with pytest.raises(ZoneTimeout, match="no answer within 0.3 s"):
        bare_sync._call(hangs())
    assert time.monotonic() - started < 5
