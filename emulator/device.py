"""One provisioned device: its fuses and its hardware counters, under $SEZ_HOME/devices/NAME/."""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import EmulatorError
from .paths import SezHome, check_name

__all__ = ["Device", "UDS_SIZE"]

UDS_SIZE = 32
FUSES_FILE = "fuses.bin"
INFO_FILE = "device.json"
BOOTS_FILE = "boot_counter"


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Device:
    name: str
    directory: Path

    @classmethod
    def open(cls, name: str, home: SezHome | None = None) -> "Device":
        home = home or SezHome.default()
        return cls(name, home.existing_device(name))

    @classmethod
    def provision(cls, name: str, home: SezHome | None = None) -> "Device":
        """Blow the fuses of a new device: a fresh random unique device secret (UDS)."""
        home = home or SezHome.default()
        directory = home.device_dir(check_name(name))
        if directory.exists():
            raise EmulatorError(f"device {name!r} already exists in {directory}")
        directory.mkdir(parents=True, mode=0o700)
        _write_atomic(directory / FUSES_FILE, secrets.token_bytes(UDS_SIZE))
        info = {"name": name, "created": int(time.time()), "ueid": secrets.token_hex(16)}
        _write_atomic(directory / INFO_FILE, (json.dumps(info, indent=2) + "\n").encode(), 0o644)
        return cls(name, directory)

    @property
    def fuses(self) -> Path:
        return self.directory / FUSES_FILE

    @property
    def info(self) -> dict[str, object]:
        return dict(json.loads((self.directory / INFO_FILE).read_text()))

    @property
    def boot_counter(self) -> int:
        try:
            return int((self.directory / BOOTS_FILE).read_text())
        except (OSError, ValueError):
            return 0

    def count_boot(self) -> int:
        """Advance the hardware boot counter (at every power-on) and return the new value."""
        value = self.boot_counter + 1
        _write_atomic(self.directory / BOOTS_FILE, f"{value}\n".encode(), 0o644)
        return value
