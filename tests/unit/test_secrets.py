"""Provisioned secrets without QEMU: the policy contract (abi.secret), layer 0's sealing of
secrets (the real code on the host), the keeper's ops, and the monitor's store driven through
the real keeper."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.device import Device
from emulator.factory import Factory
from firmware.abi import cose, dice, secret
from firmware.abi.device import BBRAM_SIZE
from firmware.abi.errors import (BadArgs, BadBlob, NotOwner, PolicyUnmatched, SecretDenied,
                                 SecretExists, error_for_code)
from firmware.abi.keys import key_id
from firmware.layer0 import bbram
from firmware.layer0.keeper import Keeper
from firmware.layer0.secrets import Applet, SecretSealer
from firmware.monitor.deferred import Deferred
from firmware.monitor.links import KeeperLink
from firmware.monitor.store import ZoneStore
from firmware.runtime.ipc import KeeperOp
from host_driver.owner import build_applet, owner_spki

from .conftest import HostKeeper, Zone, keeper_call, settle

VALUE = b"the database password: correct horse battery staple"
M1, M2 = bytes(range(48)), bytes(range(1, 49))
OWNER, OTHER_OWNER = b"o" * 32, b"p" * 32
BY_MEASUREMENT: secret.Policy = {"measurement": M1}
BY_APPLET: secret.Policy = {"applet": "vault", "min_version": 2, "owner": OWNER}
APPLETS = Path(__file__).parent.parent / "applets"


def applet(measurement: bytes = M1, name: str = "vault", version: int = 2,
           owner: bytes = OWNER) -> Applet:
    return Applet({"measurement": measurement, "name": name, "version": version,
                   "owner": owner})


# -- the contract -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "db-password", "tls.key_2024", "A" * 64, "0.x"])
def test_valid_names(name: str) -> None:
    assert secret.check_name(name) == name


@pytest.mark.parametrize("name", ["", "A" * 65, ".hidden", "-x", "_x", "a b", "a/b", "a\n",
                                  "é", b"bytes", None, 7, "x" * 100_000])
def test_invalid_names_are_refused_without_repeating_them(name: Any) -> None:
    with pytest.raises(BadArgs, match="1 to 64") as failure:
        secret.check_name(name)
    if isinstance(name, str) and name:
        assert name not in failure.value.message


@pytest.mark.parametrize("size", [1, 1000, secret.VALUE_MAX])
def test_values_up_to_the_limit(size: int) -> None:
    assert secret.check_value(bytes(size)) == bytes(size)


@pytest.mark.parametrize("value, match", [
    (b"", "not 0"), (bytes(secret.VALUE_MAX + 1), f"not {secret.VALUE_MAX + 1}"),
    ("text", "must be bytes"), (None, "must be bytes")])
def test_absurd_values_are_refused(value: Any, match: str) -> None:
    with pytest.raises(BadArgs, match=match):
        secret.check_value(value)


def test_the_two_policy_forms_parse_to_new_maps() -> None:
    assert secret.parse_policy(BY_MEASUREMENT) == BY_MEASUREMENT
    assert secret.parse_policy(BY_APPLET) == BY_APPLET
    assert secret.parse_policy(BY_APPLET) is not BY_APPLET
    partial = {"applet": "vault", "min_version": 1}
    assert secret.parse_policy(partial, complete=False) == partial


@pytest.mark.parametrize("raw, match", [
    (None, "is a map"),
    ([M1], "is a map"),
    ({}, "names a measurement or an applet"),
    ({"owner": OWNER}, "names a measurement or an applet"),
    ({"measurement": M1[:32]}, "48 bytes"),
    ({"measurement": M1.hex()}, "48 bytes"),
    ({"measurement": M1, "applet": "vault"}, "only a measurement"),
    ({"applet": "Vault", "min_version": 1, "owner": OWNER}, "applet's name"),
    ({"applet": "vault\n", "min_version": 1, "owner": OWNER}, "applet's name"),
    ({"applet": "", "min_version": 1, "owner": OWNER}, "applet's name"),
    ({"applet": "vault", "owner": OWNER}, "min_version"),
    ({"applet": "vault", "min_version": 0, "owner": OWNER}, "min_version"),
    ({"applet": "vault", "min_version": True, "owner": OWNER}, "min_version"),
    ({"applet": "vault", "min_version": 1 << 32, "owner": OWNER}, "min_version"),
    ({"applet": "vault", "min_version": "2", "owner": OWNER}, "min_version"),
    ({"applet": "vault", "min_version": 1, "owner": OWNER[:31]}, "32 bytes"),
    ({"applet": "vault", "min_version": 1}, "names its owner"),
    ({"applet": "vault", "min_version": 1, "owner": OWNER, "max_version": 3}, "only applet"),
])
def test_malformed_policies_are_refused(raw: Any, match: str) -> None:
    with pytest.raises(BadArgs, match=match):
        secret.parse_policy(raw)


def test_a_measurement_policy_admits_one_exact_applet() -> None:
    policy = secret.parse_policy(BY_MEASUREMENT)
    assert secret.admits(policy, M1, "vault", 1, OWNER)
    assert secret.admits(policy, M1, "anything", 9, OTHER_OWNER)  # the code is what counts
    assert not secret.admits(policy, M2, "vault", 1, OWNER)


def test_an_applet_policy_admits_its_name_owner_and_later_versions() -> None:
    policy = secret.parse_policy(BY_APPLET)
    assert secret.admits(policy, M1, "vault", 2, OWNER)
    assert secret.admits(policy, M2, "vault", 7, OWNER)
    assert not secret.admits(policy, M1, "vault", 1, OWNER)
    assert not secret.admits(policy, M1, "vault-b", 2, OWNER)
    assert not secret.admits(policy, M1, "vault", 2, OTHER_OWNER)


def test_the_canonical_policy_does_not_depend_on_key_order() -> None:
    reordered = {"owner": OWNER, "min_version": 2, "applet": "vault"}
    assert secret.encode_policy(BY_APPLET) == secret.encode_policy(reordered)


# -- layer 0 ----------------------------------------------------------------------------------


def test_a_secret_opens_for_an_admitted_applet(zone: Zone) -> None:
    sealer = zone.identity.secrets
    blob = sealer.seal("db", BY_APPLET, VALUE)
    assert VALUE not in blob
    assert sealer.open("db", BY_APPLET, blob, applet(version=2)) == VALUE
    assert sealer.open("db", BY_APPLET, blob, applet(M2, version=5)) == VALUE
    assert sealer.seal("db", BY_APPLET, VALUE) != blob  # a fresh nonce each time
    by_m = sealer.seal("db", BY_MEASUREMENT, VALUE)
    assert sealer.open("db", BY_MEASUREMENT, by_m, applet(M1, "other", 1, OTHER_OWNER)) == VALUE


@pytest.mark.parametrize("who", [applet(version=1), applet(name="vault-b"),
                                 applet(owner=OTHER_OWNER)])
def test_an_applet_the_policy_does_not_admit_is_denied(zone: Zone, who: Applet) -> None:
    blob = zone.identity.secrets.seal("db", BY_APPLET, VALUE)
    with pytest.raises(SecretDenied, match="'db' is not for applet"):
        zone.identity.secrets.open("db", BY_APPLET, blob, who)


def test_a_changed_policy_or_name_is_caught_by_the_aad(zone: Zone) -> None:
    """A monitor (or a stored state) that widens a policy to its own applet, or moves a blob
    under another name, opens nothing: layer 0 admits the applet, the AEAD refuses."""
    sealer = zone.identity.secrets
    blob = sealer.seal("db", BY_MEASUREMENT, VALUE)
    intruder = applet(M2, "intruder", 1)
    with pytest.raises(BadBlob, match="name or policy was changed"):
        sealer.open("db", {"measurement": M2}, blob, intruder)
    widened = {"applet": "intruder", "min_version": 1, "owner": OWNER}
    with pytest.raises(BadBlob, match="name or policy was changed"):
        sealer.open("db", widened, blob, intruder)
    with pytest.raises(BadBlob, match="name or policy was changed"):
        sealer.open("db2", BY_MEASUREMENT, blob, applet(M1))
    lowered = {**BY_APPLET, "min_version": 1}
    by_applet = sealer.seal("db", BY_APPLET, VALUE)
    with pytest.raises(BadBlob):
        sealer.open("db", lowered, by_applet, applet(version=1))


def test_any_changed_byte_is_refused(zone: Zone) -> None:
    blob = zone.identity.secrets.seal("db", BY_MEASUREMENT, VALUE)
    for i in range(len(blob)):
        changed = bytearray(blob)
        changed[i] ^= 0x01
        with pytest.raises(BadBlob):
            zone.identity.secrets.open("db", BY_MEASUREMENT, bytes(changed), applet())
    for cut in (0, 4, 16, len(blob) - 1):
        with pytest.raises(BadBlob):
            zone.identity.secrets.open("db", BY_MEASUREMENT, blob[:cut], applet())


def test_another_device_or_a_debug_zone_does_not_open_it(zone: Zone, factory: Factory,
                                                         tmp_path: Path) -> None:
    blob = zone.identity.secrets.seal("db", BY_MEASUREMENT, VALUE)
    other = Zone(factory.home, "secrets-other", tmp_path / "other")
    with pytest.raises(BadBlob, match="another device"):
        other.identity.secrets.open("db", BY_MEASUREMENT, blob, applet())
    uds = Device.open("a", factory.home).fuses.read_bytes()
    debug = SecretSealer(dice.seal_root(uds, debug=True), zone.ueid)
    with pytest.raises(BadBlob):
        debug.open("db", BY_MEASUREMENT, blob, applet())
    normal = SecretSealer(dice.seal_root(uds, debug=False), zone.ueid)
    assert normal.open("db", BY_MEASUREMENT, blob, applet()) == VALUE


def test_the_secret_key_is_its_own() -> None:
    root = bytes(32)
    assert dice.secret_key(root) != dice.sealing_key(root, b"", "", 0)
    assert len(dice.secret_key(root)) == 32


# -- the keeper's ops --------------------------------------------------------------------------


def test_the_keeper_seals_and_opens_and_no_error_carries_the_value(zone: Zone) -> None:
    keeper = Keeper(zone.identity, None)
    sealed = keeper_call(keeper, KeeperOp.SECRET_SEAL,
                         {"name": "db", "policy": BY_APPLET, "value": VALUE})
    blob = sealed["result"]["blob"]
    who = {"measurement": M1, "name": "vault", "version": 2, "owner": OWNER}
    opened = keeper_call(keeper, KeeperOp.SECRET_OPEN,
                         {"name": "db", "policy": BY_APPLET, "blob": blob, "applet": who})
    assert opened["result"] == {"value": VALUE}
    failures = [
        ({"name": "db", "policy": BY_APPLET, "blob": blob, "applet": {**who, "version": 1}},
         "secret-denied"),
        ({"name": "db", "policy": BY_MEASUREMENT, "blob": blob, "applet": who}, "bad-blob"),
        ({"name": "db", "policy": BY_APPLET, "blob": blob[:-1] + bytes([blob[-1] ^ 1]),
          "applet": who}, "bad-blob"),
        ({"name": "db", "policy": BY_APPLET, "blob": blob, "applet": {**who, "owner": None}},
         "bad-args"),
        ({"name": "db", "policy": BY_APPLET, "blob": blob}, "bad-args"),
        ({"name": VALUE.decode(), "policy": BY_APPLET, "blob": blob, "applet": who},
         "bad-args"),
    ]
    for args, code in failures:
        reply = keeper_call(keeper, KeeperOp.SECRET_OPEN, args)
        assert reply["ok"] is False and reply["error"]["code"] == code, (args, reply)
        assert_no_value(reply["error"]["message"])
    for args in ({"name": "db", "policy": {}, "value": VALUE},
                 {"name": "db", "policy": BY_APPLET, "value": VALUE * 2000},
                 {"name": VALUE.decode(), "policy": BY_APPLET, "value": VALUE},
                 {"name": "db", "policy": BY_APPLET, "value": VALUE.decode()}):
        reply = keeper_call(keeper, KeeperOp.SECRET_SEAL, args)
        assert reply["error"]["code"] == "bad-args", reply
        assert_no_value(reply["error"]["message"])


def assert_no_value(message: str) -> None:
    for fragment in (VALUE.decode(), VALUE.hex(), "correct horse"):
        assert fragment not in message


# -- the monitor's store, through the real keeper ---------------------------------------------


@pytest.fixture(scope="module")
def store_zone(factory: Factory, tmp_path_factory: pytest.TempPathFactory) -> Zone:
    return Zone(factory.home, "secrets-store", tmp_path_factory.mktemp("store"))


@pytest.fixture
def store(store_zone: Zone, tmp_path: Path) -> tuple[ZoneStore, HostKeeper]:
    """A fresh monitor store on a fresh BBRAM file, its keeper the real layer 0."""
    disk = tmp_path / "bbram.img"
    with disk.open("wb") as f:
        f.truncate(BBRAM_SIZE)
    store_zone.identity.bbram = bbram.Bbram(dice.bbram_key(store_zone.identity.cdi), str(disk))
    link = HostKeeper(Keeper(store_zone.identity, None))
    zone_store = ZoneStore(cast(KeeperLink, link))
    settle(zone_store.ready)
    return zone_store, link


def own_and_load(zone_store: ZoneStore) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP384R1())
    settle(zone_store.enroll(owner_spki(key), None))
    settle(zone_store.load(build_applet(APPLETS / "secret-reader", key)))
    return key


def test_the_store_provisions_once_and_lists_no_value(
        store: tuple[ZoneStore, HostKeeper]) -> None:
    zone_store, link = store
    partial = {"applet": "secret-reader", "min_version": 1}
    with pytest.raises(NotOwner):
        zone_store.put_secret("db", VALUE, partial)
    key = own_and_load(zone_store)
    owner = key_id(owner_spki(key))
    with pytest.raises(PolicyUnmatched):
        zone_store.put_secret("db", VALUE, {"applet": "secret-reader", "min_version": 2})
    with pytest.raises(PolicyUnmatched):
        zone_store.put_secret("db", VALUE, {**partial, "owner": OTHER_OWNER})
    with pytest.raises(PolicyUnmatched):
        zone_store.put_secret("db", VALUE, {"measurement": M1})
    assert not any(op == KeeperOp.SECRET_SEAL for op, _ in link.calls), "refused before sealing"

    answer = settle(zone_store.put_secret("db", VALUE, partial))
    assert answer == {"name": "db", "policy": {**partial, "owner": owner}}
    measurement = zone_store.packages["secret-reader"].measurement
    settle(zone_store.put_secret("exact", VALUE, {"measurement": measurement}))
    with pytest.raises(SecretExists):
        zone_store.put_secret("db", b"the host's own value", partial)

    listing = zone_store.secret_listing()
    assert listing == [{"name": "db", "policy": {**partial, "owner": owner}},
                       {"name": "exact", "policy": {"measurement": measurement}}]
    assert VALUE not in cbor2.dumps(listing)
    stored = zone_store.state.map["secrets"]
    assert VALUE not in cbor2.dumps(zone_store.state.map)
    assert set(stored["db"]) == {"policy", "blob"}
    events = [cbor2.loads(cose.decode_sign1(e).payload) for e in zone_store.audit.entries()]
    assert [e["sez.event"]["kind"] for e in events] == ["enroll", "load", "secret", "secret"]
    assert events[2]["sez.event"] == {"kind": "secret", "name": "db", **partial,
                                      "owner": owner}
    assert events[3]["sez.event"] == {"kind": "secret", "name": "exact",
                                      "measurement": measurement}
    assert VALUE not in b"".join(zone_store.audit.entries())


def test_the_store_holds_at_most_count_max(store: tuple[ZoneStore, HostKeeper]) -> None:
    zone_store, _ = store
    own_and_load(zone_store)
    policy = {"applet": "secret-reader", "min_version": 1}
    for i in range(secret.COUNT_MAX):
        settle(zone_store.put_secret(f"s{i}", os.urandom(16), policy))
    with pytest.raises(BadArgs, match=f"most secrets \\({secret.COUNT_MAX}\\)"):
        zone_store.put_secret("one-more", VALUE, policy)


def test_the_monitor_imports_no_crypto_library() -> None:
    """The monitor parses host input and holds no key: it must not load cryptography."""
    code = ("import sys, firmware.monitor.server, firmware.monitor.ops, firmware.monitor.jobs\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('cryptography', 'pyasn1')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__)
                                                                        .parents[2])})
    assert out.stdout.strip() == "[]"

