"""DICE derivation: known answers from tests/vectors/dice.json, each vector its own case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from firmware.abi import dice

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "dice.json").read_text())
SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: f"debug={v['debug']}")
def test_known_answers(vector: dict[str, object]) -> None:
    uds = bytes.fromhex(str(vector["uds"]))
    measurements = {k: bytes.fromhex(v) for k, v in vector["measurements"].items()}  # type: ignore[attr-defined]
    assert dice.device_id_key(uds).public_key().public_bytes(*SPKI).hex() == \
        vector["device_id_public_key"]
    assert dice.ueid(uds).hex() == vector["ueid"]
    cdi = dice.cdi(uds, measurements, bool(vector["debug"]))
    assert cdi.hex() == vector["cdi"]
    assert dice.alias_key(cdi).public_key().public_bytes(*SPKI).hex() == \
        vector["alias_public_key"]


@pytest.mark.parametrize("uds", VECTORS["invalid_uds"], ids=lambda u: f"{len(u) // 2}-bytes")
def test_a_uds_of_the_wrong_size_is_refused(uds: str) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        dice.device_id_key(bytes.fromhex(uds))


def test_every_measurement_and_the_mode_change_the_alias_key() -> None:
    uds = bytes(range(32))
    base = {name: bytes(48) for name in dice.MEASURED}
    keys = {dice.alias_key(dice.cdi(uds, base, False)).public_key().public_bytes(*SPKI)}
    for name in dice.MEASURED:
        keys.add(dice.alias_key(dice.cdi(uds, {**base, name: b"\x01" * 48}, False))
                 .public_key().public_bytes(*SPKI))
    keys.add(dice.alias_key(dice.cdi(uds, base, True)).public_key().public_bytes(*SPKI))
    assert len(keys) == len(dice.MEASURED) + 2


def test_tcb_info_round_trip() -> None:
    measurements = {name: bytes([i]) * 48 for i, name in enumerate(dice.MEASURED)}
    for debug in (False, True):
        info = dice.decode_tcb_info(dice.encode_tcb_info(measurements, "1.2.3", debug))
        assert info["measurements"] == measurements
        assert info["debug"] is debug and info["version"] == "1.2.3" and info["layer"] == 1
    with pytest.raises(ValueError):
        dice.decode_tcb_info(b"\x30\x03\x02\x01\x01")


def test_firmware_measurement_covers_paths_and_contents(tmp_path: Path) -> None:
    (tmp_path / "opt" / "sez" / "firmware").mkdir(parents=True)
    (tmp_path / "init").write_text("#!/bin/sh\n")
    (tmp_path / "opt" / "sez" / "firmware" / "a.py").write_text("x = 1\n")
    first = dice.measure_firmware(str(tmp_path))
    (tmp_path / "opt" / "sez" / "firmware" / "a.py").write_text("x = 2\n")
    second = dice.measure_firmware(str(tmp_path))
    (tmp_path / "opt" / "sez" / "firmware" / "a.py").rename(
        tmp_path / "opt" / "sez" / "firmware" / "b.py")
    third = dice.measure_firmware(str(tmp_path))
    (tmp_path / "unrelated").write_text("not firmware")
    assert len({first, second, third}) == 3
    assert dice.measure_firmware(str(tmp_path)) == third
