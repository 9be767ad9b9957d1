"""The start line (abi.device.START_PORT): PID 1 waits there for the hardware's word before
it touches anything of the device's own, then makes the zone's randomness its own.

A zone at READY belongs to no device: the kernel and the machine's drivers are up and the
firmware's modules imported, but the fw_cfg driver (the fuses) and the disk driver (BBRAM) are
not loaded, and the firmware has drawn no random number and made no key. The emulator may
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

A cold power-on goes the same way: its emulator says START as soon as QEMU runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

from ..abi import device
from ..runtime.console import log
from ..runtime.virtio import wait_for_port

__all__ = ["FW_CFG_DEVICE", "await_start", "reseed", "bind_devices"]

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


def await_start() -> None:
    """Say READY on the start line, then wait (for as long as the machine is held there)
    until the hardware says START."""
    try:
        path = wait_for_port(device.START_PORT, PORT_TIMEOUT)
    except TimeoutError:
        log("start: this machine has no start line; starting at once")
        return
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.write(fd, device.START_READY + b"\n")
        line = b""
        while True:
            chunk = os.read(fd, 256)
            if not chunk:  # the host end is not there yet
                time.sleep(0.01)
                continue
            line += chunk
            *words, line = line.split(b"\n")
            if device.START_GO in (w.strip() for w in words):
                return
            line = line[-256:]
    finally:
        os.close(fd)


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
