"""Errors of the emulated hardware (see firmware.abi.errors for the whole tree)."""

from __future__ import annotations

from firmware.abi.errors import SezError

__all__ = ["EmulatorError", "ImageError", "DeviceNotFound", "MachineStateError", "MachineTimeout",
           "LaunchError", "BootTimeout"]


class EmulatorError(SezError):
    """The emulated hardware could not do what was asked."""


class ImageError(EmulatorError):
    """The guest image is missing, incomplete, or could not be built."""


class DeviceNotFound(EmulatorError):
    """No device of that name has been provisioned under $SEZ_HOME/devices/."""


class DeviceTampered(EmulatorError):
    """The device was tampered with: its fuses are gone. ``sez device new NAME --force``
    provisions it anew."""


class MachineStateError(EmulatorError):
    """The machine is not in a state that allows this (already running, not running)."""


class MachineTimeout(EmulatorError, TimeoutError):
    """QEMU (its QMP socket) did not answer within the bound of the call."""


class LaunchError(EmulatorError):
    """QEMU did not start, or died. Carries its exit code, command line and output."""

    def __init__(self, message: str, *, exitcode: int | None = None,
                 command: list[str] | None = None, output: str = "", console: str = ""):
        super().__init__(message)
        self.exitcode = exitcode
        self.command = command or []
        self.output = output
        self.console = console


class BootTimeout(LaunchError):
    """The machine ran, but the firmware did not answer in time. ``console`` is the console's
    tail, ``qemu_status`` QEMU's run state from QMP then (or why QMP did not say)."""

    def __init__(self, message: str, *, console: str = "", qemu_status: str | None = None):
        super().__init__(message, console=console)
        self.qemu_status = qemu_status
