"""One provisioned device under $SEZ_HOME/devices/NAME/ (made by emulator.factory):

``fuses.bin``     the unique device secret (UDS), 32 bytes, 0600: the hardware hands it to
                  layer 0 through fw_cfg and nothing else reads it
``deviceid.pem``  the DeviceID certificate the factory signed
``device.json``   name, creation time, UEID; ``tamper``: the factory's record of the device's
                  tamper events, {count, last: {cause, at}}, kept when it is provisioned anew
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

from .errors import DeviceTampered
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
               device_id_cert: bytes, tamper: dict[str, object] | None = None) -> "Device":
        """Write a new device's files (the factory calls this; see Factory.provision).
        ``tamper``: the record of a device provisioned anew after tamper events."""
        directory = home.device_dir(name)
        directory.mkdir(parents=True, mode=0o700)
        write_atomic(directory / FUSES_FILE, uds)
        write_atomic(directory / DEVICE_ID_FILE, device_id_cert, 0o644)
        device = cls(name, directory)
        device._write_info({"name": name, "created": int(time.time()), "ueid": ueid.hex(),
                            "tamper": tamper or {"count": 0, "last": None}})
        device.ensure_bbram()
        return device

    def _write_info(self, info: dict[str, object]) -> None:
        write_atomic(self.directory / INFO_FILE, (json.dumps(info, indent=2) + "\n").encode(),
                     0o644)

    @property
    def tamper_record(self) -> dict[str, object]:
        """{count, last: {cause, at} or None}: what the factory knows of the device's past."""
        record = self.info.get("tamper")
        return dict(record) if isinstance(record, dict) else {"count": 0, "last": None}

    @property
    def sensors(self) -> dict[str, object]:
        """The environmental sensors enabled for the device (emulator.sensors), {} if none."""
        sensors = self.info.get("sensors")
        return dict(sensors) if isinstance(sensors, dict) else {}

    def set_sensors(self, settings: dict[str, object]) -> None:
        self._write_info({**self.info, "sensors": settings})

    @property
    def tampered(self) -> bool:
        """The fuses are gone: zeroised by a tamper event, not provisioned anew since."""
        return not self.fuses.exists()

    def require_fuses(self) -> None:
        if self.tampered:
            last = self.tamper_record.get("last") or {}
            cause = last.get("cause") if isinstance(last, dict) else None
            raise DeviceTampered(
                f"device {self.name!r} was tampered with ({cause or 'unknown cause'}) and "
                f"zeroised: provision it anew with sez device new {self.name} --force")

    def zeroise(self, cause: str) -> dict[str, object]:
        """The hardware's side of a tamper event: overwrite the fuses with zeros, durably,
        and remove them; zero the BBRAM disk; count the event in the device's record.
        Returns the new record."""
        for path in (self.fuses, self.directory / BBRAM_FILE):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                size = os.fstat(fd).st_size
                zeros = bytes(1 << 20)
                for offset in range(0, size, len(zeros)):
                    os.pwrite(fd, zeros[:size - offset], offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        self.fuses.unlink(missing_ok=True)
        record = self.tamper_record
        record = {"count": int(str(record.get("count", 0))) + 1,
                  "last": {"cause": cause, "at": int(time.time())}}
        self._write_info({**self.info, "tamper": record})
        return record

    def ensure_bbram(self) -> Path:
        """The BBRAM disk, created blank (sparse zeros) if the device has none yet, and
        extended with blank space if it is smaller than this firmware's (an older device's
        two slots get an empty log after them)."""
        path = self.directory / BBRAM_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < BBRAM_SIZE:
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
