"""What the emulated hardware hands the zone at power-on, through fw_cfg (the items are
listed in firmware.abi.device).

PID 1 reads them once, then unloads the fw_cfg driver and deletes its module, so nothing that
runs later can read the fuses through sysfs again. It hands the record to layer 0 over a pipe
(``handing_over``, ``receive``: layer 0 is forked before the hardware is read).
"""

from __future__ import annotations

import os

import cbor2

from ..abi import device
from ..runtime.caps import unload_module
from ..runtime.console import log

FW_CFG = "/sys/firmware/qemu_fw_cfg/by_name/" + device.FW_CFG_PREFIX.rstrip("/")
PCI_BUS = "/sys/bus/pci"
FW_CFG_MODULE = "/lib/modules/qemu_fw_cfg.ko"


def bulk_window(root: str = PCI_BUS + "/devices") -> str | None:
    """The sysfs directory of the bulk window's PCI device (abi.device.BULK_PCI_ID), or None
    on a machine without one."""
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(f"{root}/{entry}/vendor") as vendor, open(f"{root}/{entry}/device") as dev:
                if (vendor.read().strip(), dev.read().strip()) == device.BULK_PCI_ID:
                    return f"{root}/{entry}"
        except OSError:
            continue
    return None


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

    def handing_over(self) -> list[bytes | bytearray | memoryview]:
        """The record as PID 1 writes it to layer 0 (``receive``): a byte saying whether the
        fuses were read, the fuses (never copied: the bytearray itself), then the rest as
        CBOR."""
        rest = cbor2.dumps({"device_id_cert": self.device_id_cert,
                            "measurements": self.measurements, "boot_counter": self.boot_counter,
                            "debug": self.debug, "tamper": self.tamper})
        fuses = memoryview(self.uds) if self.uds is not None else bytes(device.UDS_SIZE)
        return [b"\x01" if self.uds is not None else b"\x00", fuses, rest]

    @classmethod
    def receive(cls, fd: int) -> "Hardware":
        """The record ``handing_over`` wrote on ``fd``, read to its end; the fuses straight
        into a bytearray. ValueError if it is cut short or malformed."""
        head = os.read(fd, 1)
        uds = bytearray(device.UDS_SIZE)
        view, got = memoryview(uds), 0
        while got < len(uds) and (n := os.readv(fd, [view[got:]])):
            got += n
        view.release()
        rest = b""
        while chunk := os.read(fd, 65536):
            rest += chunk
        os.close(fd)
        if head not in (b"\x00", b"\x01") or got != len(uds):
            uds[:] = bytes(len(uds))
            raise ValueError("PID 1 handed over a record cut short")
        record = cbor2.loads(rest)
        return cls(uds=uds if head == b"\x01" else None, device_id_cert=record["device_id_cert"],
                   measurements=record["measurements"], boot_counter=record["boot_counter"],
                   debug=record["debug"], tamper=record["tamper"])

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
        unload_module("qemu_fw_cfg")
    except OSError as exc:
        log(f"hardware: {exc.strerror}")
    if os.path.exists("/sys/firmware/qemu_fw_cfg"):
        log("hardware: qemu_fw_cfg is still there")
    try:
        os.unlink(FW_CFG_MODULE)
    except FileNotFoundError:
        pass
