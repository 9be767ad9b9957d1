"""Virtio-serial ports by name: the monitor serves ``org.sez.ctl``, layer 0 watches
``org.sez.tamper`` (firmware.abi.device)."""

from __future__ import annotations

import os
import time

from .console import log

__all__ = ["find_port", "wait_for_port"]

VIRTIO_PORTS = "/sys/class/virtio-ports"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def find_port(name: str, root: str = VIRTIO_PORTS) -> str:
    """The /dev node of the virtio-serial port called ``name``."""
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        entries = []
    for entry in entries:
        try:
            if _read(f"{root}/{entry}/name").strip() == name.encode():
                return f"/dev/{entry}"
        except OSError:
            continue
    raise FileNotFoundError(f"no virtio-serial port named {name}")


def wait_for_port(name: str, timeout: float = 30.0) -> str:
    """The /dev node of the port ``name``, once the virtio driver has made it.

    Raises TimeoutError if it has not appeared within ``timeout`` seconds: the process
    that waits then exits, and PID 1 restarts it (firmware.pid1.supervisor) if it may.
    """
    started = time.monotonic()
    warned = False
    while True:
        try:
            return find_port(name)
        except FileNotFoundError:
            waited = time.monotonic() - started
            if waited > timeout:
                raise TimeoutError(f"no virtio-serial port named {name} appeared within "
                                   f"{timeout:.0f} s") from None
            if not warned and waited > 5:
                log(f"still waiting for the virtio-serial port {name}")
                warned = True
            time.sleep(0.01)
