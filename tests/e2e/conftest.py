"""E2E fixtures: real QEMU, real guest, real virtio-serial channel.

The zone fixtures come from host_driver.pytest_plugin (sez_zone, sez_zone_factory).
``raw_channel`` opens the zone's channel without the driver, to send bytes no driver would.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from firmware.abi import wire
from host_driver.lifecycle import BootedZone
from tests.rawport import RawPort

pytestmark = pytest.mark.e2e


class RawChannel:
    """The zone's channel, opened raw: write any bytes, read back frames within a deadline."""

    def __init__(self, url: str) -> None:
        self.port = RawPort(url)
        self.decoder = wire.FrameDecoder()
        self.items: list[Any] = []
        self.write(wire.BREAK)  # a new session: end whatever an earlier host left half-sent

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def request(self, request_id: int, op: str, args: Any = None) -> None:
        self.write(wire.encode_request(request_id, op, args if args is not None else {}))

    def read_until(self, predicate: Any, timeout: float = 10.0) -> Any:
        """The first frame or fault matching ``predicate``; fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, item in enumerate(self.items):
                if predicate(item):
                    del self.items[: i + 1]
                    return item
            self.items.clear()
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing matching arrived within {timeout} s")
            self.items += self.decoder.feed(self.port.read(1 << 16))

    def response(self, request_id: Any, timeout: float = 10.0) -> dict[str, Any]:
        item = self.read_until(lambda i: isinstance(i, wire.Frame)
                               and i.payload.get("id") == request_id, timeout)
        return dict(item.payload)

    def error(self, code: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next error frame with ``code`` (and no request id)."""
        item = self.read_until(lambda i: isinstance(i, wire.Frame) and i.payload.get("ok") is False
                               and i.payload["error"]["code"] == code, timeout)
        return dict(item.payload)

    def close(self) -> None:
        self.port.close()


@pytest.fixture
def raw_channel(sez_zone: BootedZone) -> Iterator[RawChannel]:
    channel = RawChannel(sez_zone.url)
    try:
        yield channel
    finally:
        channel.close()
