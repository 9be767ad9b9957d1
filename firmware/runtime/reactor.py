"""The zone's event loop: one thread, epoll over file descriptors, and timers.

The monitor needs readers, writers and timers, nothing more; this is that, in a page, so the
zone does not pay for importing asyncio at every boot (0.5 s of a cold boot under TCG).
A callback that raises is logged and the loop goes on: nothing ends the loop but ``stop()``.
The same failure again within FAILURE_QUIET seconds is counted, not logged (a reader that fails
on every wake-up, e.g. with MemoryError, would otherwise flood the console).
"""

from __future__ import annotations

import heapq
import itertools
import select
import time

from .console import log_exception

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["Reactor", "Timer", "FAILURE_QUIET"]

#: Seconds during which a callback's repeated failure (same callback, same exception type)
#: is counted instead of logged.
FAILURE_QUIET = 10.0


class Timer:
    __slots__ = ("when", "seq", "callback", "args", "cancelled")

    def __init__(self, when: float, seq: int, callback: Callable[..., Any], args: tuple[Any, ...]):
        self.when, self.seq, self.callback, self.args = when, seq, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: "Timer") -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


_IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_OUT = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


class Reactor:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, list[Callable[[], None] | None]] = {}  # fd -> [reader, writer]
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._running = False
        self._failures: dict[tuple[str, type], tuple[float, int]] = {}

    # -- file descriptors ---------------------------------------------------------------------

    def _update(self, fd: int, slot: int, callback: Callable[[], None] | None) -> None:
        handlers = self._handlers.get(fd)
        registered = handlers is not None
        if handlers is None:
            handlers = self._handlers[fd] = [None, None]
        handlers[slot] = callback
        mask = (select.EPOLLIN if handlers[0] else 0) | (select.EPOLLOUT if handlers[1] else 0)
        if mask and registered:
            self._epoll.modify(fd, mask)
        elif mask:
            self._epoll.register(fd, mask)
        else:
            if registered:
                self._epoll.unregister(fd)
            del self._handlers[fd]

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._update(fd, 0, callback)

    def remove_reader(self, fd: int) -> None:
        if fd in self._handlers:
            self._update(fd, 0, None)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._update(fd, 1, callback)

    def remove_writer(self, fd: int) -> None:
        if fd in self._handlers:
            self._update(fd, 1, None)

    # -- timers ---------------------------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(time.monotonic() + delay, next(self._seq), callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    # -- running ----------------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        timers = self._timers
        handlers = self._handlers
        poll = self._epoll.poll
        call = self._call
        while self._running:
            while timers and timers[0].cancelled:
                heapq.heappop(timers)
            timeout = max(0.0, timers[0].when - time.monotonic()) if timers else -1
            for fd, events in poll(timeout):
                pair = handlers.get(fd)
                if pair is not None and events & _IN and pair[0] is not None:
                    call(pair[0])
                    pair = handlers.get(fd)
                if pair is not None and events & _OUT and pair[1] is not None:
                    call(pair[1])
            if timers:
                now = time.monotonic()
                while timers and timers[0].when <= now:
                    timer = heapq.heappop(timers)
                    if not timer.cancelled:
                        call(timer.callback, *timer.args)

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:
            self._failed(callback, exc)

    def _failed(self, callback: Callable[..., Any], exc: Exception) -> None:
        key = (getattr(callback, "__qualname__", repr(callback)), type(exc))
        now = time.monotonic()
        logged, repeats = self._failures.get(key, (-FAILURE_QUIET, 0))
        if now - logged < FAILURE_QUIET:
            self._failures[key] = (logged, repeats + 1)
            return
        if len(self._failures) > 64:  # the keys are code locations: few, but keep it bounded
            self._failures.clear()
        self._failures[key] = (now, 0)
        again = f" (it failed {repeats} times more since last logged)" if repeats else ""
        log_exception(f"callback failed{again}")
