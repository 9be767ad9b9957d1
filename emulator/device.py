"""One provisioned device under $SEZ_HOME/devices/NAME/ (made by emulator.factory):

``fuses.bin``     the unique device secret (UDS), 32 bytes, 0600: the hardware hands it to
                  layer 0 through fw_cfg and nothing else reads it
``deviceid.pem``  the DeviceID certificate the factory signed
``device.json``   name, creation time, UEID
``boot_counter``  the hardware's boot counter
``bbram.img``     battery-backed RAM: a raw disk the zone alone writes (encrypted with a key
                  derived from its CDI); attached as virtio-blk
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from firmware.abi.device import BBRAM_SIZE

from .paths import SezHome, write_atomic

__all__ = ["Device"]

FUSES_FILE = "fuses.bin"
DEVICE_ID_FILE = "deviceid.pem"
BBRAM_FILE = "bbram.img"
INFO_FILE = "device.json"
BOOTS_FILE = "boot_counter"


@dataclass(frozen=True)
class Device:
    name: str
    directory: Path

    @classmethod
    def open(cls, name: str, home: SezHome | None = None) -> "Device":
        home = home or SezHome.default()
        return cls(name, home.existing_device(name))

    @classmethod
    def create(cls, home: SezHome, name: str, *, uds: bytes, ueid: bytes,
               device_id_cert: bytes) -> "Device":
        """Write a new device's files (the factory calls this; see Factory.provision)."""
        directory = home.device_dir(name)
        directory.mkdir(parents=True, mode=0o700)
        write_atomic(directory / FUSES_FILE, uds)
        write_atomic(directory / DEVICE_ID_FILE, device_id_cert, 0o644)
        info = {"name": name, "created": int(time.time()), "ueid": ueid.hex()}
        write_atomic(directory / INFO_FILE, (json.dumps(info, indent=2) + "\n").encode(), 0o644)
        device = cls(name, directory)
        device.ensure_bbram()
        return device

    def ensure_bbram(self) -> Path:
        """The BBRAM disk, created blank (sparse zeros) if the device has none yet."""
        path = self.directory / BBRAM_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, BBRAM_SIZE)
            finally:
                os.close(fd)
        return path

    @property
    def fuses(self) -> Path:
        return self.directory / FUSES_FILE

    @property
    def device_id_cert(self) -> Path:
        return self.directory / DEVICE_ID_FILE

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
        write_atomic(self.directory / BOOTS_FILE, f"{value}\n".encode(), 0o644)
        return value
