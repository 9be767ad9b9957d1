"""Non-blocking, frame-queueing I/O over one file descriptor (the control port, job sockets).

Writes never block the zone: frames that do not fit go to a queue flushed when the descriptor
is writable; headers and chunks leave with writev, the chunks not copied.
"""

from __future__ import annotations

import os
import time
from collections import deque

from .console import log
from .reactor import Reactor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

#: Re-poll a port whose host end is closed this often.
HOST_POLL = 0.05
#: Bytes queued for a reader that does not read, before the oldest unsent frames are dropped.
MAX_QUEUED = 64 * 1024 * 1024
READ_BURST = 1 << 20
_PAGE = 4096


class Port:
    """Non-blocking reader and writer of frames over one file descriptor.

    ``on_data`` gets every chunk read. At end of file, a port that ``repoll``s (the
    virtio-serial control port, whose host end may come back) calls ``on_eof`` once and polls
    again every HOST_POLL seconds; one that does not (a job's socket) calls it and stops.
    """

    def __init__(self, loop: Reactor, fd: int, path: str, on_data: Callable[[bytes], None],
                 on_eof: Callable[[], None], *, repoll: bool = False) -> None:
        self.path = path
        self._on_data = on_data
        self._on_eof = on_eof
        self._repoll = repoll
        self.fd = fd
        os.set_blocking(fd, False)
        self._loop = loop
        self._out: deque[list[memoryview]] = deque()  # frames not yet fully written
        self._queued = 0
        self._head_started = False  # the first queued frame is partly written
        self.host_present = True
        self.dropped_frames = 0
        self.blocked_since: float | None = None  # when a write last found no room
        self.closed = False
        self._loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        # virtio-serial hands out at most one page-sized buffer per read. A full page means
        # more is likely queued: keep reading (up to READ_BURST bytes) so bulk data costs one
        # wake-up, not one per page; a short read is the end of what has arrived.
        total = 0
        while total < READ_BURST:
            try:
                data = os.read(self.fd, READ_BURST)
            except BlockingIOError:
                return
            except OSError as exc:
                log(f"read {self.path}: {exc}")
                data = b""
            if not data:
                self._host_closed()
                return
            self.host_present = True
            self._on_data(data)
            if self.closed or len(data) < _PAGE:  # (``on_data`` may close the port: a job that
                return  # answered; its descriptor's number may already be another's)
            total += len(data)

    def _host_closed(self) -> None:
        self._loop.remove_reader(self.fd)
        if not self._repoll:
            self._on_eof()
            return
        # The host end is closed: poll again later instead of spinning on EOF.
        self._loop.call_later(HOST_POLL, self._loop.add_reader, self.fd, self._readable)
        if self.host_present:
            self.host_present = False
            self._on_eof()

    def close(self) -> None:
        self.closed = True
        self._loop.remove_reader(self.fd)
        self._loop.remove_writer(self.fd)
        self._out.clear()
        os.close(self.fd)

    def send(self, parts: list[bytes | memoryview]) -> None:
        """Queue one message: its frames as header, chunk, header, chunk … (see abi.wire).
        What the descriptor takes at once goes with one writev, the chunks not copied."""
        frames = [[memoryview(parts[i]), memoryview(parts[i + 1])]
                  for i in range(0, len(parts), 2)]
        size = sum(len(part) for part in parts)
        if not self._out:  # nothing queued: try to write it at once
            try:
                n = os.writev(self.fd, parts)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._write_failed(exc)
                return
            if n == size:
                return
            self._queued += size - n
            while n >= _size(frames[0]):  # frames that went out whole
                n -= _size(frames.pop(0))
            _consume(frames[0], n)
            self._head_started = n > 0
            self._out.extend(frames)
            self.blocked_since = time.monotonic()
            self._loop.add_writer(self.fd, self._flush)
            return
        if self._queued + size > MAX_QUEUED:
            self.drop_unsent()
        self._out.extend(frames)
        self._queued += size

    def drop_unsent(self) -> None:
        """Forget queued frames that have not started to go out (a new host session)."""
        keep = 1 if self._head_started else 0
        while len(self._out) > keep:
            self._queued -= _size(self._out.pop())
            self.dropped_frames += 1

    def _write_failed(self, exc: OSError) -> None:
        """A write error other than "would block": the frame cannot go out; drop it."""
        log(f"write {self.path}: {exc}; dropping a frame")
        self.dropped_frames += 1

    def _flush(self) -> None:
        out = self._out
        while out:
            frame = out[0]
            try:
                n = os.writev(self.fd, frame)
            except BlockingIOError:
                return
            except OSError as exc:
                self._queued -= _size(out.popleft())
                self._head_started = False
                self._write_failed(exc)
                continue
            self._queued -= n
            if _consume(frame, n):
                out.popleft()
                self._head_started = False
            else:
                self._head_started = True
        self.blocked_since = None
        self._loop.remove_writer(self.fd)


def _size(parts: list[memoryview]) -> int:
    return sum(len(part) for part in parts)


def _consume(parts: list[memoryview], n: int) -> bool:
    """Drop the first ``n`` bytes of ``parts`` (in place); True if nothing is left."""
    while parts and n >= len(parts[0]):
        n -= len(parts.pop(0))
    if n:
        parts[0] = parts[0][n:]
    return not parts


