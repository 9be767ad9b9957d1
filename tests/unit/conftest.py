"""Unit fixtures: a device's layer 0 run on the host (no QEMU), and its factory."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from emulator.factory import Factory
from emulator.paths import SezHome
from firmware.abi import dice
from firmware.layer0.identity import Identity
from firmware.pid1.hardware import Hardware
from host_driver.verifier import Reference

NONCE = b"verifier-nonce-0123"


class Zone:
    """A device's layer 0 run on the host: what the zone would sign."""

    def __init__(self, home: SezHome, name: str, tmp: Path, debug: bool = False,
                 measurements: dict[str, bytes] | None = None,
                 provisioned: datetime.datetime | None = None,
                 validity: datetime.timedelta = datetime.timedelta(days=3650)) -> None:
        device = Factory(home).provision(name, now=provisioned, validity=validity)
        self.root = tmp / f"root-{name}"
        (self.root / "opt" / "sez" / "firmware").mkdir(parents=True)
        (self.root / "init").write_text("#!/bin/sh\n")
        (self.root / "opt" / "sez" / "firmware" / "monitor.py").write_text("pass\n")
        self.measurements = measurements or {n: os.urandom(48) for n in dice.MEASURED[:3]}
        hw = Hardware(uds=bytearray(device.fuses.read_bytes()),
                      device_id_cert=device.device_id_cert.read_bytes(),
                      measurements=dict(self.measurements), boot_counter=7, debug=debug)
        self.identity = Identity(hw, root=str(self.root))
        self.ueid = bytes.fromhex(str(device.info["ueid"]))
        self.reference = Reference({**self.measurements,
                                    "firmware": dice.measure_firmware(str(self.root))})

    def evidence(self, nonce: bytes = NONCE) -> bytes:
        return self.identity.evidence(nonce, {})


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Factory:
    home = SezHome(tmp_path_factory.mktemp("home"))
    Factory(home).init()
    return Factory(home)


@pytest.fixture(scope="module")
def zone(factory: Factory, tmp_path_factory: pytest.TempPathFactory) -> Zone:
    return Zone(factory.home, "a", tmp_path_factory.mktemp("a"))
