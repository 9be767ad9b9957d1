"""What the emulated hardware hands the zone at power-on, through fw_cfg (the items are
listed in firmware.abi.device).

PID 1 reads them once, then unloads the fw_cfg driver and deletes its module, so nothing that
runs later can read the fuses through sysfs again.
"""

from __future__ import annotations

import os

from ..abi import device
from ..runtime.console import log
from . import kmod

FW_CFG = "/sys/firmware/qemu_fw_cfg/by_name/" + device.FW_CFG_PREFIX.rstrip("/")
FW_CFG_MODULE = "/lib/modules/qemu_fw_cfg.ko"


def _read(name: str) -> bytes | None:
    try:
        with open(f"{FW_CFG}/{name}/raw", "rb") as f:
            return f.read()
    except OSError:
        return None


def _read_secret(name: str, size: int) -> bytearray | None:
    """Read into a bytearray (which can be wiped), never into an immutable bytes object."""
    buf = bytearray(size)
    try:
        with open(f"{FW_CFG}/{name}/raw", "rb", buffering=0) as f:
            n = f.readinto(buf)
    except OSError:
        return None
    return buf if n == size else None


class Hardware:
    def __init__(self, *, uds: bytearray | None = None, device_id_cert: bytes | None = None,
                 measurements: dict[str, bytes] | None = None, boot_counter: int = 0,
                 debug: bool = False, tamper: dict[str, object] | None = None) -> None:
        self.uds = uds
        self.device_id_cert = device_id_cert
        self.measurements = measurements or {}
        self.boot_counter = boot_counter
        self.debug = debug
        #: The factory's record of the device's past: {count, last} (abi.evidence.TAMPER_STATE).
        self.tamper = tamper or {"count": 0, "last": None}

    @classmethod
    def read(cls) -> "Hardware":
        measurements = {}
        for line in (_read(device.FW_MEASUREMENTS) or b"").decode(errors="replace").splitlines():
            name, _, value = line.partition(" ")
            try:
                measurements[name] = bytes.fromhex(value)
            except ValueError:
                log(f"hardware: unreadable measurement line {line!r}")
        counter = (_read(device.FW_BOOT_COUNTER) or b"0").strip()
        return cls(uds=_read_secret(device.FW_UDS, device.UDS_SIZE),
                   device_id_cert=_read(device.FW_DEVICE_ID),
                   measurements=measurements, boot_counter=int(counter) if counter.isdigit() else 0,
                   debug=_read(device.FW_DEBUG) == b"1",
                   tamper=parse_tamper_record(_read(device.FW_TAMPER) or b"0"))

    def wipe_fuses(self) -> None:
        if self.uds is not None:
            self.uds[:] = bytes(len(self.uds))
            self.uds = None


def parse_tamper_record(raw: bytes) -> dict[str, object]:
    """``COUNT CAUSE`` (fw_cfg ``tamper``) as {count, last}: the cause None when there was
    none, printable ASCII and at most TAMPER_CAUSE_MAX characters otherwise."""
    count, _, cause = raw.decode("ascii", errors="replace").strip().partition(" ")
    cause = device.tamper_cause(cause)
    return {"count": int(count) if count.isdigit() else 0, "last": cause or None}


def seal_fw_cfg() -> None:
    """Unload the fw_cfg driver and delete its module: the fuses are out of reach from now on."""
    if not os.path.exists("/sys/firmware/qemu_fw_cfg"):
        return
    try:
        kmod.unload("qemu_fw_cfg")
    except OSError as exc:
        log(f"hardware: could not unload qemu_fw_cfg ({exc.strerror})")
    if os.path.exists("/sys/firmware/qemu_fw_cfg"):
        log("hardware: qemu_fw_cfg is still there")
    try:
        os.unlink(FW_CFG_MODULE)
    except FileNotFoundError:
        pass
