"""Opening the byte channel to the zone's control port (docs/architecture.md, "A request's path").

Accepted addresses:

* a PTY path, ``/dev/pts/N`` or ``pty:/dev/pts/N`` (what QMP ``query-chardev`` reports):
  opened and locked exclusively with pyserial (raw mode, stale input flushed), then driven
  by asyncio's pipe transports (256 KiB reads, buffered non-blocking writes);
* ``unix://PATH`` or ``unix:PATH``: a unix-socket chardev (what a zone's machine offers:
  ``Machine.channel``), held exclusively through a lock on ``PATH.lock``: QEMU serves one
  client at a time and would leave a second one waiting, unanswered. ``?bulk=FILE`` names
  the zone's bulk window (firmware.abi.bulk), mapped while the channel is held;
* ``socket://HOST:PORT``: a TCP chardev (pyserial's URL form).
"""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from firmware.abi.bulk import WINDOW_SIZE

import serial

from ..errors import ChannelBusy, ConnectError

__all__ = ["Channel", "open_channel"]


class _Flow(asyncio.Protocol):
    """Write-side flow control: ``drain()`` waits while the transport's buffer is full."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()


class _Receiver(_Flow):
    def __init__(self, on_data: Callable[[bytes], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        super().__init__()
        self._on_data = on_data
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._on_lost(exc)


class Channel:
    """An open channel: ``write`` queues bytes, ``drain`` waits for room, ``close`` ends it."""

    def __init__(self, url: str, writer: asyncio.WriteTransport, flow: _Flow,
                 closers: list[Callable[[], None]], window: mmap.mmap | None = None) -> None:
        self.url = url
        #: The zone's bulk window, mapped (None if the address names none).
        self.window = window
        self._writer = writer
        self._flow = flow
        self._closers = closers

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._flow.drain()

    def close(self) -> None:
        closers, self._closers = self._closers, []
        for close in closers:
            try:
                close()
            except OSError:
                pass


async def open_channel(url: str, on_data: Callable[[bytes], None],
                       on_lost: Callable[[Exception | None], None]) -> Channel:
    """Open ``url``; ``on_data`` gets every chunk read, ``on_lost`` the end of the channel."""
    loop = asyncio.get_running_loop()
    receiver = _Receiver(on_data, on_lost)
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            path = url[len("unix://"):] if url.startswith("unix://") else url[len("unix:"):]
            path, _, query = path.partition("?")
            window = parse_qs(query).get("bulk", [None])[-1]
            return await _open_unix(url, path, receiver, window)
        if parts.scheme == "socket":
            if not parts.hostname or not parts.port:
                raise ConnectError(f"{url}: expected socket://HOST:PORT")
            transport, _ = await loop.create_connection(lambda: receiver, parts.hostname,
                                                        parts.port)
        elif parts.scheme in ("", "pty", "file"):
            return await _open_pty(url.split(":", 1)[1] if parts.scheme else url, receiver)
        else:
            raise ConnectError(f"{url}: unsupported channel address (use a PTY path, "
                               "unix://PATH or socket://HOST:PORT)")
    except OSError as exc:
        raise ConnectError(f"cannot open channel {url}: {exc.strerror or exc}") from exc
    assert isinstance(transport, asyncio.WriteTransport)
    return Channel(url, transport, receiver, [transport.close])


async def _open_unix(url: str, path: str, receiver: _Receiver,
                     window_path: str | None) -> Channel:
    loop = asyncio.get_running_loop()
    if not os.path.exists(path):
        raise ConnectError(f"channel {path} does not exist (is the zone running?)")
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    window = None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if window_path is not None:
            window = _map_window(window_path)
        transport, _ = await loop.create_unix_connection(lambda: receiver, path)
    except BlockingIOError as exc:
        os.close(lock)
        raise ChannelBusy(f"channel {path} is held by another driver") from exc
    except BaseException:
        if window is not None:
            window.close()
        os.close(lock)
        raise
    assert isinstance(transport, asyncio.WriteTransport)
    closers = [transport.close, lambda: os.close(lock)]
    if window is not None:
        closers.insert(1, window.close)
    return Channel(url, transport, receiver, closers, window)


def _map_window(path: str) -> mmap.mmap:
    """The bulk window's file, mapped shared; ConnectError unless it is a window's size."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != WINDOW_SIZE:
            raise ConnectError(f"bulk window {path} is not {WINDOW_SIZE} bytes long")
        return mmap.mmap(fd, WINDOW_SIZE)
    finally:
        os.close(fd)


async def _open_pty(path: str, receiver: _Receiver) -> Channel:
    loop = asyncio.get_running_loop()
    if path.startswith("//"):
        path = path[2:]
    if not os.path.exists(path):
        raise ConnectError(f"channel {path} does not exist (is the zone running?)")
    try:
        port = serial.Serial(path, exclusive=True, timeout=0, write_timeout=0)
    except serial.SerialException as exc:
        if "lock" in str(exc).lower():
            raise ChannelBusy(f"channel {path} is held by another driver") from exc
        raise ConnectError(f"cannot open channel {path}: {exc}") from exc
    port.reset_input_buffer()  # bytes written for an earlier host: not ours
    fd = port.fileno()
    reader = os.fdopen(os.dup(fd), "rb", buffering=0)
    writer = os.fdopen(os.dup(fd), "wb", buffering=0)
    flow = _Flow()
    rtransport, _ = await loop.connect_read_pipe(lambda: receiver, reader)
    wtransport, _ = await loop.connect_write_pipe(lambda: flow, writer)
    return Channel(path, wtransport, flow, [wtransport.close, rtransport.close, port.close])
