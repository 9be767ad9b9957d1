"""A blocking facade over :class:`~host_driver.relay.client.Zone`, for scripts and the CLI.

    with SyncZone("/dev/pts/3") as zone:
        print(zone.info())

It runs a private event loop in a daemon thread. Its request methods are not written out
again: each public coroutine method of ``Zone`` (``info``, ``run``, ``result`` …) becomes a
blocking method of the same name, signature and docstring that runs the coroutine on that
loop. Every call is bounded by what the call itself may take (``bounds.seconds_bound``: its
``timeout``, or the client's, or the method's own bound) plus a margin, so a wedged loop still
cannot hang the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any, Callable, Coroutine, TypeVar

from ..errors import ZoneTimeout
from .bounds import seconds_bound
from .client import DEFAULT_TIMEOUT, HEARTBEAT, Zone

if TYPE_CHECKING:
    from cryptography import x509

    from ..verifier import AttestationResult, Reference

__all__ = ["SyncZone"]

T = TypeVar("T")
#: Seconds a blocking call waits beyond the bound of the call itself.
_MARGIN = 5.0
#: Zone's coroutine methods that are not requests: SyncZone opens the session in its
#: constructor and closes it (and its loop) in its own close(); ``session`` is written out
#: below; a tunnel's bytes are for asyncio code (``sez relay``).
_SESSION = frozenset({"open", "close", "session", "tunnel"})


class SyncZone:
    """A session with one zone, every call blocking (see the module's docstring)."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 hello_timeout: float | None = None,
                 heartbeat: float | None = HEARTBEAT) -> None:
        self.timeout = timeout
        self._owns_loop = True
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
    def greeting(self) -> dict[str, Any]:
        """The zone's answer to this session's ``hello``."""
        return self.zone.greeting

    if TYPE_CHECKING:
        # The blocking request methods are made from Zone's below, at import time.
        def __getattr__(self, name: str) -> Any: ...

    @property
    def attestation(self) -> AttestationResult | None:
        """What the appraisal of an attested session proved (None on the plain channel)."""
        return self.zone.attestation

    def session(self, *, root: x509.Certificate, reference: Reference,
                ueid: bytes | None = None, allow_debug: bool = False,
                timeout: float | None = None) -> "SyncZone":
        """Blocking :meth:`Zone.session <host_driver.relay.client.Zone.session>`: an attested
        session with the same blocking methods, on this facade's loop. Close it (or use it
        as a context manager) before this facade."""
        timeout = self.timeout if timeout is None else timeout
        session = self._call(self.zone.session(root=root, reference=reference, ueid=ueid,
                                               allow_debug=allow_debug, timeout=timeout),
                             3 * timeout)
        facade = object.__new__(SyncZone)
        facade.timeout, facade._owns_loop = timeout, False
        facade._loop, facade._thread, facade.zone = self._loop, self._thread, session
        return facade

    def close(self) -> None:
        """Close the session and stop the private loop (unless it is a session's facade,
        which shares its zone's loop). Idempotent."""
        if self._loop.is_closed():
            return
        try:
            self._call(self.zone.close())
        finally:
            if self._owns_loop:
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


def _blocking(name: str, method: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """``SyncZone.<name>``: ``Zone.<name>`` run on the facade's loop, within its bound."""

    @functools.wraps(method)
    def call(self: SyncZone, *args: Any, **kwargs: Any) -> Any:
        coro = getattr(self.zone, name)(*args, **kwargs)
        return self._call(coro, seconds_bound(self.zone, name, args, kwargs))

    call.__qualname__ = f"SyncZone.{name}"
    call.__module__ = __name__
    return call


def _add_requests() -> None:
    """Give SyncZone a blocking method for each public coroutine method of Zone."""
    for name, method in vars(Zone).items():
        if not name.startswith("_") and name not in _SESSION and \
                inspect.iscoroutinefunction(method):
            setattr(SyncZone, name, _blocking(name, method))


_add_requests()
