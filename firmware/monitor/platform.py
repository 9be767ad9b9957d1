"""The monitor's view of the machine: the power button it serves, memory and uptime for
``info``, powering off, and its own memory bound. (Its port: firmware.runtime.virtio.)"""

from __future__ import annotations

import os
import resource
import struct
import time

from ..runtime.console import log

__all__ = ["find_power_buttons", "is_power_press", "power_off", "meminfo", "uptime",
           "limit_memory", "own_memory"]

INPUT_CLASS = "/sys/class/input"
INPUT_EVENT = struct.Struct("llHHi")  # struct input_event on x86-64
_EV_KEY, _KEY_POWER = 1, 116


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def is_power_press(data: bytes) -> bool:
    """Whether input events ``data`` (from a power button's evdev node) hold a press."""
    for offset in range(0, len(data) - INPUT_EVENT.size + 1, INPUT_EVENT.size):
        _, _, kind, code, value = INPUT_EVENT.unpack_from(data, offset)
        if kind == _EV_KEY and code == _KEY_POWER and value == 1:
            return True
    return False


def find_power_buttons(root: str = INPUT_CLASS) -> list[str]:
    """The evdev nodes of the ACPI power button(s) (QMP system_powerdown presses them)."""
    found = []
    try:
        entries = sorted(e for e in os.listdir(root) if e.startswith("event"))
    except OSError:
        entries = []
    for entry in entries:
        try:
            if _read(f"{root}/{entry}/device/name").strip() == b"Power Button":
                found.append(f"/dev/input/{entry}")
        except OSError:
            continue
    return found


def meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in _read("/proc/meminfo").decode().splitlines():
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def own_memory() -> dict[str, int]:
    """This process's memory in bytes: ``rss`` now, ``peak`` (the most it has had resident)
    and ``limit`` (its address-space limit, 0 for none), for ``stats``."""
    out = {"rss": 0, "peak": 0}
    try:
        for line in _read("/proc/self/status").decode().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss" if key == "VmRSS" else "peak"] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    out["limit"] = 0 if limit == resource.RLIM_INFINITY else limit
    return out


def uptime() -> float:
    try:
        return float(_read("/proc/uptime").split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def power_off() -> None:
    import ctypes

    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(0x4321FEDC)  # LINUX_REBOOT_CMD_POWER_OFF


def limit_memory() -> None:
    """Bound the monitor's address space so hostile input ends in MemoryError, not the OOM killer."""
    total = meminfo().get("MemTotal", 0)
    if total:
        limit = max(total * 3 // 4, 192 * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


