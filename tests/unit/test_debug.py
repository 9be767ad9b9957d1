"""Debug mode's keys without QEMU: one device's layer 0 (the real code, run on the host) in
production and in debug. Every key it derives differs with the mode — alias, applet keys,
BBRAM, applets' sealing, provisioned secrets — while the device stays the same device; and a
debug zone takes only secrets whose policy says ``debug: true``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cbor2
import pytest

from emulator.factory import Factory
from firmware.abi import dice, keys, secret
from firmware.abi.device import BBRAM_SIZE
from firmware.abi.errors import BadArgs, BadBlob, BbramError, DebugRefused
from firmware.layer0.bbram import Bbram
from firmware.layer0.identity import Identity
from firmware.layer0.keeper import Keeper
from firmware.layer0.secrets import Applet
from firmware.pid1.hardware import Hardware

OWNER = b"o" * 32
MEASUREMENT = bytes(range(48))
VALUE = b"a production database password"
POLICY: secret.Policy = {"applet": "keyring", "min_version": 1, "owner": OWNER}
DEBUG_POLICY: secret.Policy = {**POLICY, "debug": True}
APPLET = Applet({"measurement": MEASUREMENT, "name": "keyring", "version": 1, "owner": OWNER})


class BothModes:
    """One provisioned device, whose layer 0 boots in either mode on the same firmware."""

    def __init__(self, factory: Factory, tmp: Path) -> None:
        self.device = factory.provision("modes")
        self.root = tmp / "root"
        (self.root / "opt" / "sez" / "firmware").mkdir(parents=True)
        (self.root / "init").write_text("#!/bin/sh\n")
        (self.root / "opt" / "sez" / "firmware" / "monitor.py").write_text("pass\n")
        self.measurements = {name: os.urandom(48) for name in dice.MEASURED[:3]}

    def boot(self, debug: bool) -> Identity:
        hw = Hardware(uds=bytearray(self.device.fuses.read_bytes()),
                      device_id_cert=self.device.device_id_cert.read_bytes(),
                      measurements=dict(self.measurements), boot_counter=1, debug=debug)
        return Identity(hw, root=str(self.root))


@pytest.fixture(scope="module")
def modes(factory: Factory, tmp_path_factory: pytest.TempPathFactory) -> BothModes:
    return BothModes(factory, tmp_path_factory.mktemp("modes"))


@pytest.fixture(scope="module")
def production(modes: BothModes) -> Identity:
    return modes.boot(debug=False)


@pytest.fixture(scope="module")
def debug(modes: BothModes) -> Identity:
    return modes.boot(debug=True)


def alias(identity: Identity) -> bytes:
    return keys.spki(identity.alias)


def applet_key(identity: Identity) -> bytes:
    return bytes(identity.applet_sign(MEASUREMENT, b"data")["public_key"])


def test_the_device_stays_the_device(production: Identity, debug: Identity,
                                     modes: BothModes) -> None:
    assert debug.ueid == production.ueid == bytes.fromhex(str(modes.device.info["ueid"]))
    assert debug.chain[1] == production.chain[1]  # the same DeviceID certificate
    assert debug.debug is True and production.debug is False


def test_a_reboot_in_the_same_mode_derives_the_same_keys(production: Identity,
                                                         modes: BothModes) -> None:
    """The control: what differs below differs because of the mode alone."""
    again = modes.boot(debug=False)
    assert alias(again) == alias(production) and again.cdi == production.cdi
    assert applet_key(again) == applet_key(production)
    blob = production.sealer.seal(OWNER, "keyring", 1, VALUE)
    assert again.sealer.unseal(OWNER, "keyring", 1, blob) == VALUE
    sealed = production.secrets.seal("db", POLICY, VALUE)
    assert again.secrets.open("db", POLICY, sealed, APPLET) == VALUE


def test_the_alias_and_applet_keys_differ(production: Identity, debug: Identity) -> None:
    assert debug.cdi != production.cdi
    assert alias(debug) != alias(production)
    assert applet_key(debug) != applet_key(production)


@pytest.mark.parametrize("sealed_in", ["production", "debug"])
def test_an_applets_blob_opens_only_in_its_mode(production: Identity, debug: Identity,
                                                sealed_in: str) -> None:
    sealer, other = ((production, debug) if sealed_in == "production" else (debug, production))
    blob = sealer.sealer.seal(OWNER, "keyring", 1, VALUE)
    with pytest.raises(BadBlob) as refused:
        other.sealer.unseal(OWNER, "keyring", 1, blob)
    assert VALUE.decode() not in str(refused.value)
    assert sealer.sealer.unseal(OWNER, "keyring", 1, blob) == VALUE


@pytest.mark.parametrize("sealed_in", ["production", "debug"])
def test_a_secret_opens_only_in_its_mode(production: Identity, debug: Identity,
                                         sealed_in: str) -> None:
    """Under a policy both modes take (debug: true), so only the key can refuse it."""
    sealer, other = ((production, debug) if sealed_in == "production" else (debug, production))
    blob = sealer.secrets.seal("db", DEBUG_POLICY, VALUE)
    with pytest.raises(BadBlob, match="does not open") as refused:
        other.secrets.open("db", DEBUG_POLICY, blob, APPLET)
    assert VALUE.decode() not in str(refused.value)
    assert sealer.secrets.open("db", DEBUG_POLICY, blob, APPLET) == VALUE


def test_bbram_of_one_mode_is_unauthenticated_in_the_other(production: Identity,
                                                           debug: Identity,
                                                           tmp_path: Path) -> None:
    disk = tmp_path / "bbram.img"
    disk.write_bytes(bytes(BBRAM_SIZE))
    stored = Bbram(dice.bbram_key(production.cdi), str(disk))
    assert stored.load() == ({}, []) and stored.status == "fresh"
    stored.commit(cbor2.dumps({"secrets": {"db": {"policy": POLICY, "blob": b"x"}}}))
    seen = Bbram(dice.bbram_key(debug.cdi), str(disk))
    assert seen.load() == ({}, []) and seen.status == "unauthenticated"
    with pytest.raises(BbramError, match="unauthenticated"):
        seen.commit(cbor2.dumps({}))  # the production state is left as it was
    again = Bbram(dice.bbram_key(production.cdi), str(disk))
    assert again.load()[0]["secrets"]["db"]["blob"] == b"x" and again.status == "ok"


def test_a_debug_zone_takes_only_debug_policies(production: Identity, debug: Identity) -> None:
    with pytest.raises(DebugRefused, match="debug zone") as refused:
        debug.secrets.seal("db", POLICY, VALUE)
    assert VALUE.decode() not in str(refused.value)
    blob = debug.secrets.seal("db", DEBUG_POLICY, VALUE)
    assert debug.secrets.open("db", DEBUG_POLICY, blob, APPLET) == VALUE
    with pytest.raises(DebugRefused):  # a stored policy stripped of its flag: refused first
        debug.secrets.open("db", POLICY, blob, APPLET)
    for policy in (POLICY, DEBUG_POLICY):  # production takes both; the flag widens nothing
        sealed = production.secrets.seal("db", policy, VALUE)
        assert production.secrets.open("db", policy, sealed, APPLET) == VALUE


def test_the_keeper_of_a_debug_zone_answers_debug_refused(debug: Identity) -> None:
    keeper = Keeper(debug, None)
    request = {"id": 1, "op": "secret-seal",
               "args": {"name": "db", "policy": {"measurement": MEASUREMENT}, "value": VALUE}}
    answer = keeper.handle(cbor2.dumps(request))
    assert answer["ok"] is False and answer["error"]["code"] == "debug-refused"
    assert VALUE.decode() not in answer["error"]["message"]
    request["args"]["policy"] = {"measurement": MEASUREMENT, "debug": True}  # type: ignore[index]
    assert keeper.handle(cbor2.dumps(request))["ok"] is True


@pytest.mark.parametrize("raw", [{"measurement": MEASUREMENT}, POLICY])
def test_the_debug_flag_in_a_policy(raw: dict[str, Any]) -> None:
    assert secret.parse_policy({**raw, "debug": True}) == {**raw, "debug": True}
    assert secret.allows_debug(secret.parse_policy({**raw, "debug": True}))
    plain = secret.parse_policy({**raw, "debug": False})
    assert plain == raw and not secret.allows_debug(plain)
    # a policy without the flag encodes as before it existed: secrets sealed then still open
    assert secret.encode_policy(plain) == cbor2.dumps(raw, canonical=True)
    for wrong in ("yes", 1, None, b"\x01"):
        with pytest.raises(BadArgs, match="debug is true or false"):
            secret.parse_policy({**raw, "debug": wrong})
