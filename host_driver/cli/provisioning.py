
"""``sez image``, ``sez template``, ``sez device``, ``sez factory``: the guest image and the
templates machines resume from, the manufacturer's root CA, and the provisioning of devices."""

from __future__ import annotations

import argparse
import sys

from cryptography.hazmat.primitives import hashes

from emulator.factory import Factory
from emulator.image import build_image, load_image
from emulator.device import Device
from emulator.machine import Machine
from emulator.sensors import describe, parse_sensors
from emulator.template import Template, remove_templates, template_for, templates
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


def _described(template: Template) -> dict[str, object]:
    return {"directory": str(template.directory), **template.meta}


def cmd_template_make(args: argparse.Namespace) -> None:
    template = template_for(load_image(), accel=args.accel, debug=args.debug)
    meta = template.meta
    emit(args, _described(template),
         f"template {template.directory}: made in {meta.get('seconds')} s, "
         f"{int(meta.get('ram_bytes', 0)) / 2**20:.0f} MiB of RAM kept")


def cmd_template_list(args: argparse.Namespace) -> None:
    found = templates()
    emit(args, {"templates": [_described(t) for t in found]},
         "\n".join(f"{t.directory}  image {t.meta.get('image')}  "
                   f"{int(t.meta.get('ram_bytes', 0)) / 2**20:.0f} MiB" for t in found)
         or "no templates (sez boot --snapshot or sez template make makes one)")


def cmd_template_clear(args: argparse.Namespace) -> None:
    removed = remove_templates()
    emit(args, {"removed": removed}, f"{removed} template(s) removed")


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

    template = group(sub, "template", "zones saved before they were any device, for machines to "
                     "resume from (sez boot --snapshot)")
    c = command(template, "make", cmd_template_make,
                "make the template of the image on this board now (one boot), if there is none")
    c.add_argument("--debug", action="store_true", help="the template of debug zones")
    c.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    command(template, "list", cmd_template_list, "the templates kept, and their sizes")
    command(template, "clear", cmd_template_clear,
            "remove every template (resumed zones keep running)")

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
