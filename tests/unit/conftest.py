"""Unit fixtures: a device's layer 0 run on the host (no QEMU), and its factory."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import cbor2
import pytest

from emulator.factory import Factory
from emulator.paths import SezHome
from firmware.abi import dice
from firmware.abi.errors import error_for_code
from firmware.layer0.identity import Identity
from firmware.layer0.keeper import Keeper
from firmware.monitor.deferred import Deferred
from firmware.pid1.hardware import Hardware
from firmware.runtime.ipc import KeeperOp
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


def keeper_call(keeper: Keeper, op: str, args: Any) -> dict[str, Any]:
    """One request as it crosses the keeper's socket: CBOR there and back."""
    return dict(cbor2.loads(cbor2.dumps(keeper.handle(cbor2.dumps(
        {"id": 1, "op": op, "args": args})))))


class HostKeeper:
    """The monitor's keeper link, answered at once by the real layer-0 code on the host."""

    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, op: KeeperOp, args: dict[str, Any]) -> Deferred:
        self.calls.append((op, args))
        reply = keeper_call(self.keeper, op, args)
        if reply["ok"]:
            return Deferred.of(reply["result"])
        return Deferred.failed(error_for_code(reply["error"]["code"], reply["error"]["message"]))


def settle(deferred: Deferred) -> Any:
    assert deferred.done, "the host keeper answers at once"
    if deferred.error is not None:
        raise deferred.error
    return deferred.value
