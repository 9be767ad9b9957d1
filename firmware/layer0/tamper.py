"""The tamper line (abi.device.TAMPER_PORT) as layer 0 watches it.

The emulator wires the line's other end to itself alone (a pipe; see emulator.machine), the
way a real coprocessor wires its tamper mesh and sensors to the battery-backed circuit that
erases its keys. Any bytes on the line trip it: ``TAMPER <cause>`` by convention, the cause
kept as printable ASCII. Layer 0 answers ``ZEROISED <ms>`` once the zone is zeroised
(firmware.layer0.keeper.Keeper.zeroise).
"""

from __future__ import annotations

import os
import time

from ..abi import device
from ..runtime.console import log
from ..runtime.virtio import find_port

__all__ = ["TamperLine"]

#: Seconds the line is left alone after it reads as hung up (nothing wired to it).
_QUIET = 1.0


class TamperLine:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._quiet_until = 0.0

    @classmethod
    def open(cls) -> "TamperLine | None":
        """The line, or None (logged) where the hardware has none."""
        try:
            path = find_port(device.TAMPER_PORT)
            return cls(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError as exc:
            log(f"layer 0: no tamper line ({exc})")
            return None

    def fileno(self) -> int:
        return self.fd

    def listening(self) -> bool:
        return time.monotonic() >= self._quiet_until

    def read_trip(self) -> str | None:
        """The cause, if the line tripped; None if nothing is there (or nothing is wired)."""
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self._quiet_until = time.monotonic() + _QUIET
            return None
        line = data.split(b"\n", 1)[0]
        if line.startswith(device.TAMPER_TRIP):
            line = line[len(device.TAMPER_TRIP):]
        return device.tamper_cause(line.decode("latin-1")) or "tamper line"

    def acknowledge(self, milliseconds: float) -> None:
        try:
            os.write(self.fd, device.TAMPER_ZEROISED + f" {milliseconds:.1f}\n".encode())
        except OSError:
            pass
