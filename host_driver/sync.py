"""A blocking facade over :class:`~host_driver.client.Zone`, for scripts and the CLI.

    with SyncZone("/dev/pts/3") as zone:
        print(zone.info())

It runs a private event loop in a daemon thread; every call is bounded by the same timeouts
as the async client (plus a margin, so a wedged loop still cannot hang the caller).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine, TypeVar

from .client import DEFAULT_TIMEOUT, HEARTBEAT, Zone
from .errors import ZoneTimeout

__all__ = ["SyncZone"]

T = TypeVar("T")
_MARGIN = 5.0


class SyncZone:
    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 hello_timeout: float | None = None,
                 heartbeat: float | None = HEARTBEAT) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sez-zone",
                                        daemon=True)
        self._thread.start()
        try:
            self.zone: Zone = self._call(Zone.connect(url, timeout=timeout,
                                                      hello_timeout=hello_timeout,
                                                      heartbeat=heartbeat),
                                         hello_timeout or timeout)
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the private loop for at most its timeout + _MARGIN seconds. What it
        raises comes through as it is (a ZoneTimeout stays itself: since Python 3.11
        concurrent.futures.TimeoutError is the builtin TimeoutError that ZoneTimeout
        subclasses, so it must not be caught as the wait's own timeout)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        limit = (timeout if timeout is not None else self.timeout) + _MARGIN
        if not concurrent.futures.wait([future], limit).done:
            future.cancel()
            raise ZoneTimeout(f"no answer within {limit:.1f} s", seconds=limit)
        return future.result()

    @property
    def session(self) -> dict[str, Any]:
        return self.zone.session

    def request(self, op: str, args: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> Any:
        return self._call(self.zone.request(op, args, timeout=timeout), timeout)

    def hello(self) -> dict[str, Any]:
        return self._call(self.zone.hello())

    def info(self) -> dict[str, Any]:
        return self._call(self.zone.info())

    def echo(self, data: bytes, *, timeout: float | None = None) -> bytes:
        return self._call(self.zone.echo(data, timeout=timeout), timeout)

    def stats(self) -> dict[str, Any]:
        return self._call(self.zone.stats())

    def attest(self, nonce: bytes, *, timeout: float | None = None) -> bytes:
        return self._call(self.zone.attest(nonce, timeout=timeout), timeout)

    def identity(self, *, timeout: float | None = None) -> dict[str, Any]:
        return self._call(self.zone.identity(timeout=timeout), timeout)

    def owner(self) -> dict[str, Any]:
        return self._call(self.zone.owner())

    def enroll(self, owner: bytes, authorization: bytes | None = None) -> dict[str, Any]:
        return self._call(self.zone.enroll(owner, authorization))

    def load(self, signed: bytes, *, timeout: float | None = None) -> dict[str, Any]:
        return self._call(self.zone.load(signed, timeout=timeout), timeout)

    def applets(self) -> list[dict[str, Any]]:
        return self._call(self.zone.applets())

    def run(self, applet: str, data: bytes, *, nonce: bytes = b"",
            timeout: float | None = None) -> dict[str, Any]:
        return self._call(self.zone.run(applet, data, nonce=nonce, timeout=timeout), timeout)

    def submit(self, applet: str, data: bytes, *, nonce: bytes = b"",
               key: bytes | None = None) -> dict[str, Any]:
        return self._call(self.zone.submit(applet, data, nonce=nonce, key=key))

    def result(self, job: str, *, wait: float = 0.0) -> dict[str, Any]:
        # Zone.result asks in chunks of at most 60 s, each bounded by timeout + its chunk.
        asks = 1 + int(max(wait, 0.0) // 60)
        return self._call(self.zone.result(job, wait=wait), asks * self.timeout + max(wait, 0.0))

    def ack(self, job: str) -> None:
        self._call(self.zone.ack(job))

    def jobs(self) -> list[dict[str, Any]]:
        return self._call(self.zone.jobs())

    def schedule(self, change: bytes) -> dict[str, Any]:
        return self._call(self.zone.schedule(change))

    def unschedule(self, change: bytes) -> dict[str, Any]:
        return self._call(self.zone.unschedule(change))

    def schedules(self) -> dict[str, Any]:
        return self._call(self.zone.schedules())

    def audit(self, *, after: int = 0, nonce: bytes | None = None) -> dict[str, Any]:
        return self._call(self.zone.audit(after=after, nonce=nonce))

    def audit_ack(self, upto: int) -> dict[str, Any]:
        return self._call(self.zone.audit_ack(upto))

    def poweroff(self) -> None:
        self._call(self.zone.poweroff())

    def close(self) -> None:
        """Close the session and stop the private loop. Idempotent."""
        if self._loop.is_closed():
            return
        try:
            self._call(self.zone.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> "SyncZone":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
