"""Sealing for applets on real zones: a blob opens for its applet and its later versions, on
its device, under its owner, and for nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from firmware.abi.errors import AppletFailed
from host_driver import SyncZone
from host_driver.lifecycle import BootedZone
from host_driver.owner import build_applet, enroll_authorization, owner_spki

pytestmark = pytest.mark.e2e
VAULT = Path(__file__).parent.parent / "applets" / "vault"
SECRET = b"a key the applet keeps across reboots"


def vault(tmp: Path, version: int, name: str = "vault") -> Path:
    target = tmp / f"{name}-v{version}"
    shutil.copytree(VAULT, target)
    (target / "manifest.toml").write_text(
        f'name = "{name}"\nversion = {version}\nentry = "main:run"\n')
    return target


def seal(zone: SyncZone, applet: str, data: bytes) -> bytes:
    request = json.dumps({"op": "seal", "data": data.hex()}).encode()
    return bytes(zone.run(applet, request)["output"])


def unseal(zone: SyncZone, applet: str, blob: bytes) -> bytes:
    request = json.dumps({"op": "unseal", "blob": blob.hex()}).encode()
    return bytes(zone.run(applet, request)["output"])


def refused(zone: SyncZone, applet: str, blob: bytes) -> str:
    with pytest.raises(AppletFailed) as failure:
        unseal(zone, applet, blob)
    return failure.value.message


def test_sealed_blobs_open_only_for_their_applet_device_and_owner(
        sez_zone_factory: Callable[..., BootedZone], tmp_path: Path) -> None:
    first, second = (ec.generate_private_key(ec.SECP384R1()) for _ in range(2))
    booted, other = sez_zone_factory("seal-zone"), sez_zone_factory("seal-other")
    with SyncZone(booted.url, timeout=60) as zone, SyncZone(other.url, timeout=60) as elsewhere:
        zone.enroll(owner_spki(first))
        zone.load(build_applet(vault(tmp_path, 1), first))
        blob = seal(zone, "vault", SECRET)
        assert SECRET not in blob
        assert unseal(zone, "vault", blob) == SECRET

        v2 = build_applet(vault(tmp_path, 2), first)
        zone.load(v2)  # a later version opens it
        assert unseal(zone, "vault", blob) == SECRET
        newer = seal(zone, "vault", SECRET)

        zone.load(build_applet(vault(tmp_path, 1, name="vault-b"), first))
        assert "bad-blob" in refused(zone, "vault-b", blob)  # another applet
        changed = bytearray(blob)
        changed[-1] ^= 1
        assert "bad-blob" in refused(zone, "vault", bytes(changed))

        elsewhere.enroll(owner_spki(first))  # the same owner and applet, another device
        elsewhere.load(v2)
        assert "bad-blob" in refused(elsewhere, "vault", newer)

        state = zone.owner()  # the same device and applet, another owner
        zone.enroll(owner_spki(second), enroll_authorization(
            first, owner_spki(second), bytes(state["ueid"]), state["epoch"]))
        zone.load(build_applet(vault(tmp_path, 3), second))
        assert "bad-blob" in refused(zone, "vault", newer)
        assert unseal(zone, "vault", seal(zone, "vault", SECRET)) == SECRET
        assert zone.echo(b"alive") == b"alive"
