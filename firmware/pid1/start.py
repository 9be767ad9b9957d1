"""The start line (abi.device.START_PORT): PID 1 waits there for the hardware's word before
it touches anything of the device's own, then makes the zone's randomness its own.

A zone at READY belongs to no device: the kernel and the machine's drivers are up and the
zone's processes set up, but the fw_cfg driver (the fuses) and the disk driver (BBRAM) are
bound to nothing, and the firmware has drawn no random number and made no key. The emulator may
snapshot the machine there (a template, emulator.template) and resume any number of machines
from it, each as any device. So after START, before anything draws a random number:

1. ``reseed``: 64 bytes of the virtio RNG go into the kernel's input pool and the CRNG is
   reseeded at once (RNDADDENTROPY, RNDRESEEDCRNG: PID 1 still holds CAP_SYS_ADMIN); the
   reseed draws on RDRAND too. Each machine resumed from one template has a CRNG state of its
   own, and so does every process forked after (OpenSSL seeds its generators in them, from
   the kernel, when they first draw).
2. ``bind_devices``: the BBRAM disk's and fw_cfg's drivers (/etc/sez/modules.device) were
   loaded by /init with the buses' automatic probing off; they are bound to their devices
   now (fw_cfg at once, the disk once the monitor is started: probing it takes ~90 ms under
   TCG, and only layer 0 reads it), and probing is turned back on.

3. ``attach_window``: the bulk window's device is enabled, after a rescan of the PCI bus on a
   machine resumed from a template: a template's machine has no window. (QEMU 7.2 resumes a
   template with ``x-ignore-shared`` only if each shared memory region sits where it sat when
   the template was saved, and checks that before it loads the devices' state, when no PCI
   BAR is mapped yet: a window's BAR never would.)

A cold power-on goes the same way: its emulator says START as soon as QEMU runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import time
from typing import Callable

from ..abi import device
from ..runtime.console import log
from .hardware import PCI_BUS, bulk_window
from ..runtime.virtio import wait_for_port

__all__ = ["FW_CFG_DEVICE", "await_start", "reseed", "bind_devices", "attach_window"]

#: Seconds a START said before the port was opened (a cold power-on) takes to arrive once it
#: is: PID 1 waits this long before it waits for its children's set-up and says READY.
START_GRACE = 0.1
#: Seconds the start line's port may take to appear (virtio-serial adds ports after the
#: driver loads); a machine without one starts at once.
PORT_TIMEOUT = 10.0
#: fw_cfg's platform device (its ACPI id): the device PID 1 binds on the platform bus.
FW_CFG_DEVICE = "QEMU0002"
HWRNG = "/dev/hwrng"
SEED_BYTES = 64
#: Seconds the virtio RNG may take to give SEED_BYTES.
SEED_TIMEOUT = 2.0
#: linux/random.h
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207


def await_start(set_up: Callable[[], None]) -> None:
    """Wait until the hardware says START on the start line. If it has not said it already
    (a cold power-on says it at once), first wait for the zone's processes to be set up
    (``set_up``), then say READY: a template is saved only once they are."""
    try:
        path = wait_for_port(device.START_PORT, PORT_TIMEOUT)
    except TimeoutError:
        log("start: this machine has no start line; starting at once")
        return
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        heard = _Line(fd)
        if not heard.start(wait=START_GRACE):
            set_up()
            os.write(fd, device.START_READY + b"\n")
            heard.start(wait=True)
    finally:
        os.close(fd)


class _Line:
    """The words the hardware says on the start line, a line each."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = b""

    def start(self, *, wait: float | bool) -> bool:
        """True once START was said; False if it was not within ``wait`` seconds (True:
        for as long as it takes)."""
        deadline = None if wait is True else time.monotonic() + float(wait)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], left)[0]:
                return False
            chunk = os.read(self.fd, 256)
            if not chunk:  # the host end is not there yet
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
                continue
            *words, self.pending = (self.pending + chunk).split(b"\n")
            if device.START_GO in (w.strip() for w in words):
                return True
            self.pending = self.pending[-256:]


def reseed() -> bool:
    """Credit SEED_BYTES of the virtio RNG to the kernel and reseed its CRNG now. False if
    the RNG gave nothing in time (the reseed still draws on RDRAND)."""
    request = bytearray(8 + SEED_BYTES)  # struct rand_pool_info {entropy_count, buf_size, buf}
    seed = memoryview(request)[8:]
    filled = 0
    try:
        rng = os.open(HWRNG, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        log(f"start: no hardware RNG ({exc.strerror})")
    else:
        deadline = time.monotonic() + SEED_TIMEOUT
        try:
            while filled < SEED_BYTES and time.monotonic() < deadline:
                try:
                    filled += os.readv(rng, [seed[filled:]])
                except OSError as exc:
                    if exc.errno != errno.EAGAIN:
                        log(f"start: the hardware RNG failed ({exc.strerror})")
                        break
                    time.sleep(0.001)
        finally:
            os.close(rng)
    struct.pack_into("ii", request, 0, 8 * filled, filled)
    try:
        with open("/dev/urandom", "wb", buffering=0) as pool:
            if filled:
                fcntl.ioctl(pool, RNDADDENTROPY, request)
            fcntl.ioctl(pool, RNDRESEEDCRNG)
    finally:
        request[:] = bytes(len(request))
    return filled == SEED_BYTES


def bind_devices(bus: str, prefix: str = "") -> None:
    """Bind the devices of ``bus`` (virtio, platform: /init held both) whose names start with
    ``prefix`` and have no driver yet, then let the bus probe on its own again. Needs no
    capability: PID 1's uid owns sysfs."""
    root = f"/sys/bus/{bus}"
    try:
        names = sorted(os.listdir(f"{root}/devices"))
    except OSError:
        names = []
    for name in names:
        if not name.startswith(prefix) or os.path.exists(f"{root}/devices/{name}/driver"):
            continue
        try:
            with open(f"{root}/drivers_probe", "w") as f:
                f.write(name)
        except OSError as exc:  # no driver for it: not one of ours
            if exc.errno != errno.ENODEV:
                log(f"start: binding {bus} device {name} failed ({exc.strerror})")
    try:
        with open(f"{root}/drivers_autoprobe", "w") as f:
            f.write("1")
    except OSError as exc:
        log(f"start: {bus} probing stays off ({exc.strerror})")


def attach_window() -> None:
    """Make the bulk window's memory reachable: find its device (on a machine resumed from a
    template, by rescanning the bus: the template's machine had none) and enable it."""
    if bulk_window() is None:
        try:
            with open(f"{PCI_BUS}/rescan", "w") as f:
                f.write("1")
        except OSError as exc:
            log(f"start: cannot rescan the PCI bus ({exc.strerror})")
    pci = bulk_window()
    if pci is None:
        return
    try:
        with open(f"{pci}/enable", "w") as f:
            f.write("1")
    except OSError as exc:
        log(f"start: cannot enable the bulk window ({exc.strerror})")
