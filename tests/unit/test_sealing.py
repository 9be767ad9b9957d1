"""Sealing for applets, by the real layer-0 code on the host: who opens which blob."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.device import Device
from emulator.factory import Factory
from firmware.abi import dice
from firmware.abi.applet import SEAL_MAX
from firmware.abi.errors import BadArgs, BadBlob
from firmware.layer0.sealing import Sealer

from .conftest import Zone

OWNER, OTHER_OWNER = b"o" * 32, b"p" * 32
SECRET = b"the applet's own secret"


def test_a_blob_opens_for_its_applet_and_later_versions(zone: Zone) -> None:
    sealer = zone.identity.sealer
    blob = sealer.seal(OWNER, "vault", 1, SECRET)
    assert SECRET not in blob
    assert sealer.unseal(OWNER, "vault", 1, blob) == SECRET
    assert sealer.unseal(OWNER, "vault", 3, blob) == SECRET
    assert sealer.seal(OWNER, "vault", 1, SECRET) != blob  # a fresh nonce each time


def test_an_older_version_does_not_open_a_newer_ones_blob(zone: Zone) -> None:
    blob = zone.identity.sealer.seal(OWNER, "vault", 2, SECRET)
    with pytest.raises(BadBlob, match="version 2"):
        zone.identity.sealer.unseal(OWNER, "vault", 1, blob)


@pytest.mark.parametrize("owner, name", [(OTHER_OWNER, "vault"), (OWNER, "vault-b")])
def test_another_owner_or_applet_is_refused(zone: Zone, owner: bytes, name: str) -> None:
    blob = zone.identity.sealer.seal(OWNER, "vault", 1, SECRET)
    with pytest.raises(BadBlob, match="does not open"):
        zone.identity.sealer.unseal(owner, name, 1, blob)


def test_any_changed_byte_is_refused(zone: Zone) -> None:
    blob = zone.identity.sealer.seal(OWNER, "vault", 1, SECRET)
    for i in range(len(blob)):
        changed = bytearray(blob)
        changed[i] ^= 0x01
        with pytest.raises(BadBlob):
            zone.identity.sealer.unseal(OWNER, "vault", 1, bytes(changed))
    for cut in (0, 5, 20, len(blob) - 1):
        with pytest.raises(BadBlob):
            zone.identity.sealer.unseal(OWNER, "vault", 1, blob[:cut])


def test_another_device_or_a_debug_zone_is_refused(zone: Zone, factory: Factory,
                                                   tmp_path: Path) -> None:
    blob = zone.identity.sealer.seal(OWNER, "vault", 1, SECRET)
    other = Zone(factory.home, "sealing-other", tmp_path / "other")
    with pytest.raises(BadBlob, match="does not open"):
        other.identity.sealer.unseal(OWNER, "vault", 1, blob)
    # The same device booted in debug mode derives other sealing keys.
    uds = Device.open("a", factory.home).fuses.read_bytes()
    debug = Sealer(dice.seal_root(uds, debug=True), zone.ueid)
    with pytest.raises(BadBlob, match="does not open"):
        debug.unseal(OWNER, "vault", 1, blob)
    assert Sealer(dice.seal_root(uds, debug=False), zone.ueid).unseal(
        OWNER, "vault", 1, blob) == SECRET


def test_too_much_data_is_refused_before_anything_is_sealed(zone: Zone) -> None:
    with pytest.raises(BadArgs, match="at most"):
        zone.identity.sealer.seal(OWNER, "vault", 1, bytes(SEAL_MAX + 1))
