"""A zone's channel opened without the driver, blocking: to send bytes no driver would.

It takes the same addresses as ``host_driver.relay.channel`` for a running zone
(``unix:PATH``, ``?bulk=FILE`` after it naming the zone's bulk window: ``window``) and holds
the same lock, so a driver and a raw port exclude each other.
"""

from __future__ import annotations

import fcntl
import os
import socket

__all__ = ["RawPort"]


class RawPort:
    """``write`` sends all (each send bounded by ``write_timeout`` seconds: TimeoutError when
    the zone does not take the bytes), ``read`` returns what arrives within ``timeout``
    seconds (b"" if nothing)."""

    def __init__(self, url: str, *, timeout: float = 0.05, write_timeout: float = 10.0) -> None:
        if not url.startswith("unix:"):
            raise ValueError(f"{url}: a RawPort opens unix:PATH channels")
        path, _, query = url.removeprefix("unix:").removeprefix("//").partition("?")
        #: The bulk window's file, if the address names one.
        self.window = query.removeprefix("bulk=") if query.startswith("bulk=") else None
        self._lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(path)
        except BaseException:
            os.close(self._lock)
            raise
        self.timeout = timeout
        self.write_timeout = write_timeout

    def write(self, data: bytes) -> int:
        self._sock.settimeout(self.write_timeout)
        self._sock.sendall(data)
        return len(data)

    def read(self, size: int) -> bytes:
        self._sock.settimeout(self.timeout)
        try:
            return self._sock.recv(size)
        except TimeoutError:
            return b""

    def close(self) -> None:
        self._sock.close()
        os.close(self._lock)
