"""The tamper response's parts that run without QEMU: the line's parsing, the hardware's wipe
and record, provisioning anew, the verifier's check."""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import pytest

from emulator.device import Device
from emulator.errors import DeviceTampered
from emulator.factory import Factory, FactoryError
from emulator.paths import SezHome
from emulator.sensors import describe, parse_sensors
from firmware.abi import claims, cose
from firmware.abi.device import BBRAM_SIZE
from firmware.layer0 import bbram
from firmware.layer0.tamper import TamperLine
from firmware.pid1.hardware import Hardware, parse_tamper_record
from host_driver.verifier import VerificationError, verify_evidence

from .conftest import NONCE, Zone


@pytest.mark.parametrize(("raw", "record"), [
    (b"0", {"count": 0, "last": None}),
    (b"2 lid opened\n", {"count": 2, "last": "lid opened"}),
    (b"3 caus\x00e\x1b[31m", {"count": 3, "last": "cause[31m"}),
    (b"x" * 300, {"count": 0, "last": None}),
    (b"1 " + b"a" * 200, {"count": 1, "last": "a" * 80}),
])
def test_the_tamper_record_from_fw_cfg(raw: bytes, record: dict[str, object]) -> None:
    assert parse_tamper_record(raw) == record


def test_the_line_trips_on_any_bytes_and_keeps_a_printable_cause() -> None:
    theirs, ours = os.pipe()
    line = TamperLine(theirs)
    os.set_blocking(theirs, False)
    assert line.read_trip() is None  # nothing there
    os.write(ours, b"TAMPER probe\x07 on pin 3\nmore")
    assert line.read_trip() == "probe on pin 3"
    os.write(ours, b"\x00\x01")
    assert line.read_trip() == "tamper line"
    os.close(ours)
    assert line.read_trip() is None and not line.listening()  # hung up: left alone a while
    os.close(theirs)


def test_bbram_wipe_zeroes_the_slots_and_the_log(tmp_path: Path) -> None:
    disk = tmp_path / "bbram.img"
    disk.write_bytes(os.urandom(BBRAM_SIZE))
    bbram.wipe(str(disk))
    assert not any(disk.read_bytes())
    assert bbram.Bbram(bytes(32), str(disk)).load() == ({}, [])


def test_the_hardware_wipes_the_fuses_and_counts(tmp_path: Path) -> None:
    home = SezHome(tmp_path)
    factory = Factory(home)
    factory.init()
    device = factory.provision("d")
    uds = device.fuses.read_bytes()
    ueid = device.info["ueid"]
    (device.directory / "bbram.img").write_bytes(os.urandom(4096))
    record = device.zeroise("drilled")
    assert record["count"] == 1 and record["last"]["cause"] == "drilled"  # type: ignore[index]
    assert not device.fuses.exists() and device.tampered
    assert not any((device.directory / "bbram.img").read_bytes())
    for path in device.directory.rglob("*"):
        assert uds not in path.read_bytes()
    with pytest.raises(DeviceTampered, match="--force"):
        device.require_fuses()
    with pytest.raises(FactoryError, match="--force"):
        factory.provision("d")
    renewed = factory.provision("d", force=True)
    assert renewed.info["ueid"] != ueid
    assert renewed.tamper_record == record
    assert renewed.fuses.read_bytes() != uds and not renewed.tampered


def test_the_verifier_checks_the_tamper_record(factory: Factory, tmp_path: Path) -> None:
    zone = Zone(factory.home, "once-tampered", tmp_path)
    zone.identity.tamper = {"count": 2, "last": "lid opened"}
    result = verify_evidence(zone.evidence(), nonce=NONCE, root=factory.root_cert(),
                             reference=zone.reference, max_tamper_count=2)
    assert result.tamper == {"count": 2, "last": "lid opened"}
    with pytest.raises(VerificationError) as refused:
        verify_evidence(zone.evidence(), nonce=NONCE, root=factory.root_cert(),
                        max_tamper_count=1)
    assert refused.value.check == "tamper"
    zone.identity.tamper = {"count": "two"}  # type: ignore[dict-item]
    with pytest.raises(VerificationError) as malformed:
        verify_evidence(zone.evidence(), nonce=NONCE, root=factory.root_cert())
    assert malformed.value.check == "tamper"


def test_a_fresh_device_claims_no_tamper_events(factory: Factory, zone: Zone) -> None:
    payload = cbor2.loads(cose.decode_sign1(zone.evidence()).payload)
    assert payload["sez.tamper_state"] == {"count": 0, "last": None}
    assert claims.NONCE in payload
    assert Hardware().tamper == {"count": 0, "last": None}


@pytest.mark.parametrize(("spec", "settings"), [
    ("none", {}), ("", {}),
    ("all", {"stopped": 5.0, "dump": True, "migration": True, "gdb": True}),
    ("stopped=2.5, gdb", {"stopped": 2.5, "gdb": True}),
])
def test_sensor_settings(spec: str, settings: dict[str, object]) -> None:
    assert parse_sensors(spec) == settings
    assert parse_sensors(describe(settings)) == settings


@pytest.mark.parametrize("spec", ["heat", "stopped", "stopped=0", "stopped=x", "dump=1",
                                  "stopped=99999"])
def test_bad_sensor_settings(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_sensors(spec)
