
"""``sez image``, ``sez device``, ``sez factory``: the guest image, the manufacturer's root CA,
and the provisioning of devices."""

from __future__ import annotations

import argparse
import sys

from cryptography.hazmat.primitives import hashes

from emulator.factory import Factory
from emulator.image import build_image
from emulator.device import Device
from emulator.machine import Machine
from emulator.sensors import describe, parse_sensors
from firmware.abi.errors import SezError

from .common import command, emit, group

__all__ = ["register"]


def progress(message: str) -> None:
    print(f"sez: {message}", file=sys.stderr, flush=True)


def cmd_image_build(args: argparse.Namespace) -> None:
    image = build_image(force=args.force, progress=progress)
    m = image.manifest
    emit(args, m, "\n".join([
        f"image {image.directory}",
        f"  kernel     {m['kernel']['release']}  sha384:{m['kernel']['sha384']}",
        f"  initramfs  {m['initramfs']['size'] / 2**20:.1f} MiB  sha384:{m['initramfs']['sha384']}",
        f"  cmdline    sha384:{m['cmdline']['sha384']}",
        f"  firmware   {m['firmware_version']}",
    ]))


def cmd_factory_init(args: argparse.Namespace) -> None:
    factory = Factory()
    cert = factory.init()
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    emit(args, {"root": str(factory.root_cert_path), "sha256": fingerprint},
         f"manufacturer root CA (ECDSA P-384) in {factory.root_cert_path}\n"
         f"  SHA-256 fingerprint {fingerprint}")


def cmd_device_new(args: argparse.Namespace) -> None:
    if args.force and Machine(args.name).is_running():
        raise SezError(f"zone {args.name} is running: sez stop {args.name} first")
    sensors = parse_sensors(args.sensors) if args.sensors is not None else None
    device = Factory().provision(args.name, force=args.force)
    if sensors is not None:
        device.set_sensors(sensors)
    emit(args, {"name": device.name, "directory": str(device.directory), **device.info},
         f"device {device.name} provisioned in {device.directory}: UEID {device.info['ueid']}")


def cmd_device_sensors(args: argparse.Namespace) -> None:
    device = Device.open(args.name)
    if args.sensors is not None:
        device.set_sensors(parse_sensors(args.sensors))
    emit(args, {"name": args.name, "sensors": device.sensors},
         f"device {args.name}: sensors {describe(device.sensors)}"
         + (" (from its next boot)" if args.sensors is not None
            and Machine(args.name).is_running() else ""))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = group(sub, "image", "the guest image")
    c = command(image, "build", cmd_image_build, "build vmlinux + initramfs + manifest.json")
    c.add_argument("--force", action="store_true", help="download and build again")

    device = group(sub, "device", "provisioned devices")
    c = command(device, "new", cmd_device_new,
                "provision a device: fuses (UDS) + DeviceID certificate")
    c.add_argument("name")
    c.add_argument("--force", action="store_true", help="provision an existing device anew "
                   "(after a tamper event): new fuses and DeviceID, blank BBRAM; the record "
                   "of its tamper events is kept")
    c.add_argument("--sensors", metavar="SPEC", help="environmental sensors that trip the "
                   "tamper line: stopped=SECONDS,dump,migration,gdb, all or none (default "
                   "none; kept by --force)")
    c = command(device, "sensors", cmd_device_sensors,
                "show or set a device's environmental sensors (they watch from its next boot)")
    c.add_argument("name")
    c.add_argument("sensors", nargs="?", metavar="SPEC",
                   help="stopped=SECONDS,dump,migration,gdb, all or none")

    factory = group(sub, "factory", "the manufacturer")
    command(factory, "init", cmd_factory_init, "make the manufacturer root CA")
