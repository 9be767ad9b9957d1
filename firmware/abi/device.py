"""The emulated hardware as the zone sees it: what the emulator wires up, by name.

Virtio-serial ports (the guest finds each under /sys/class/virtio-ports by its name):

``org.sez.ctl``     the control channel: the host's requests, the zone's answers (abi.wire)
``org.sez.tamper``  the tamper line, wired to the emulator alone: any bytes on it trip it
                    (``TAMPER <cause>`` by convention); layer 0 answers ``ZEROISED <ms>``
                    once every key, BBRAM and every other zone process are gone
``org.sez.start``   the start line, wired to the emulator alone: PID 1 says ``READY`` once
                    the machine is up, then waits for ``START`` before it touches the
                    device's own hardware (the BBRAM disk's and fw_cfg's drivers load after
                    it). A cold power-on says START at once; a template (a snapshot of a
                    zone at READY, of no device) says it when a machine resumes from it

fw_cfg items, under ``opt/sez/`` (read once by PID 1 at power-on, then the driver unloads):

``uds``             the fuses: the 32-byte unique device secret
``deviceid``        the DeviceID certificate (PEM) the factory signed
``measurements``    "kernel HEX", "initramfs HEX", "cmdline HEX" lines (SHA-384)
``boot_counter``    decimal
``debug``           "1" for a debug zone
``tamper``          the factory's record of the device's past: "COUNT CAUSE" (tamper events
                    before the device was provisioned anew, the last one's cause)

The bulk window is an ``ivshmem-plain`` PCI device (BULK_PCI_ID: vendor, device), its BAR 2
abi.bulk.WINDOW_SIZE bytes of memory the host maps too (abi.bulk says what goes there).

The BBRAM is the first virtio-blk disk (``/dev/vda``): two checkpoint slots of
BBRAM_SLOT_SIZE bytes, then a log of BBRAM_LOG_SIZE bytes (firmware.layer0.bbram). A disk of
the older two-slot size is extended with a blank log.
Runs in the guest and on the host: standard library only.
"""

from __future__ import annotations

__all__ = ["CONTROL_PORT", "TAMPER_PORT", "START_PORT", "START_READY", "START_GO", "FW_CFG_PREFIX", "FW_UDS", "FW_DEVICE_ID",
           "FW_MEASUREMENTS", "FW_BOOT_COUNTER", "FW_DEBUG", "FW_TAMPER", "UDS_SIZE",
           "BBRAM_SLOT_SIZE", "BBRAM_LOG_SIZE", "BBRAM_SIZE", "TAMPER_TRIP", "TAMPER_ZEROISED", "TAMPER_CAUSE_MAX",
           "tamper_cause", "BULK_PCI_ID", "BULK_BAR"]

CONTROL_PORT = "org.sez.ctl"
TAMPER_PORT = "org.sez.tamper"
START_PORT = "org.sez.start"
#: What PID 1 says on the start line, and the word it waits for, each a line.
START_READY = b"READY"
START_GO = b"START"

#: The bulk window's PCI vendor and device id (as sysfs spells them), and its memory BAR.
BULK_PCI_ID = ("0x1af4", "0x1110")
BULK_BAR = 2

FW_CFG_PREFIX = "opt/sez/"
FW_UDS = "uds"
FW_DEVICE_ID = "deviceid"
FW_MEASUREMENTS = "measurements"
FW_BOOT_COUNTER = "boot_counter"
FW_DEBUG = "debug"
FW_TAMPER = "tamper"

#: What the emulator writes on the tamper line (then the cause), and what layer 0 answers
#: (then the milliseconds from trip to zeroised), each a line.
TAMPER_TRIP = b"TAMPER"
TAMPER_ZEROISED = b"ZEROISED"
#: The longest cause kept (printable ASCII; the rest is dropped).
TAMPER_CAUSE_MAX = 80


def tamper_cause(text: str) -> str:
    """``text`` as a tamper cause is kept (on the line, in the factory's record, in evidence):
    printable ASCII, stripped, at most TAMPER_CAUSE_MAX characters; "" if nothing is left."""
    return "".join(c for c in text if " " <= c <= "~").strip()[:TAMPER_CAUSE_MAX]

#: The fuses' size in bytes.
UDS_SIZE = 32

BBRAM_SLOT_SIZE = 4 << 20
BBRAM_LOG_SIZE = 8 << 20
BBRAM_SIZE = 2 * BBRAM_SLOT_SIZE + BBRAM_LOG_SIZE
