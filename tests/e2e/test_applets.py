"""Trusted code against a real zone: ownership, signed loads, confined jobs, receipts."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pycose.headers import X5chain
from pycose.keys import EC2Key
from pycose.messages import Sign1Message

from emulator.device import Device
from emulator.factory import Factory
from emulator.image import load_image
from emulator.paths import SezHome
from firmware.abi import cose
from firmware.abi import receipt as receipt_claims
from firmware.abi.errors import Code
from host_driver import SyncZone, ZoneError
from host_driver.lifecycle import BootedZone
from host_driver.owner import (build_applet, enroll_authorization, generate_owner_key,
                               owner_spki)
from host_driver.verifier import VerificationError, verify_evidence, verify_receipt

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parent.parent.parent
EXAMPLES = ROOT / "docs" / "examples"
TEST_APPLETS = ROOT / "tests" / "applets"


def versioned(source: Path, tmp: Path, version: int, extra: str = "") -> Path:
    """A copy of the applet at ``source`` with another version (and code)."""
    target = tmp / f"{source.name}-v{version}-{hashlib.sha256(extra.encode()).hexdigest()[:6]}"
    shutil.copytree(source, target)
    manifest = (target / "manifest.toml").read_text()
    (target / "manifest.toml").write_text(
        "\n".join(f"version = {version}" if line.startswith("version") else line
                  for line in manifest.splitlines()) + "\n")
    if extra:
        with (target / "main.py").open("a") as f:
            f.write(f"\n# {extra}\n")
    return target


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> ec.EllipticCurvePrivateKey:
    return generate_owner_key(tmp_path_factory.mktemp("owner") / "owner.pem")


@pytest.fixture(scope="module")
def zone(sez_zone_factory: Callable[..., BootedZone],
         owner: ec.EllipticCurvePrivateKey) -> Iterator[SyncZone]:
    booted = sez_zone_factory("applet-zone")
    with SyncZone(booted.url, timeout=60) as client:
        assert client.owner()["owner"] is None
        client.enroll(owner_spki(owner))
        for directory in (EXAMPLES / "key-custody", EXAMPLES / "aggregate",
                          TEST_APPLETS / "null", TEST_APPLETS / "misbehave"):
            client.load(build_applet(directory, owner))
        yield client


def healthy(zone: SyncZone) -> None:
    assert zone.echo(b"alive") == b"alive"
    assert zone.run("null", b"ping")["output"] == b"ping"


def test_aggregate_and_its_receipt(zone: SyncZone, sez_home: SezHome) -> None:
    records = "\n".join(json.dumps({"group": g, "value": v})
                        for g, v in [("eu", 10), ("eu", 20), ("eu", 30), ("us", 99)]).encode()
    nonce = os.urandom(16)
    result = zone.run("aggregate", records, nonce=nonce)
    stats = json.loads(result["output"])
    assert stats["overall"] == {"count": 4, "sum": 159, "mean": 39.75, "min": 10, "max": 99}
    assert "us" not in stats["groups"], "a group of one record must not be revealed"
    root = Factory(sez_home).root_cert()
    checked = verify_receipt(result["receipt"], input=records, output=result["output"],
                             nonce=nonce, root=root,
                             expected_measurement=result["applet"]["measurement"])
    assert checked.applet_name == "aggregate" and checked.job == result["job"]
    for kwargs, check in (({"input": records + b"\n"}, "input"),
                          ({"output": result["output"] + b" "}, "output"),
                          ({"nonce": nonce[:-1]}, "nonce"),
                          ({"expected_measurement": bytes(48)}, "applet")):
        args: dict[str, Any] = {"input": records, "output": result["output"], "nonce": nonce,
                                "root": root, **kwargs}
        with pytest.raises(VerificationError) as failure:
            verify_receipt(result["receipt"], **args)
        assert failure.value.check == check


def test_receipts_verify_with_pycose_and_fail_when_changed(zone: SyncZone,
                                                           sez_home: SezHome) -> None:
    result = zone.run("null", b"payload", nonce=b"n")
    message = Sign1Message.decode(result["receipt"])
    numbers = x509.load_der_x509_certificate(message.phdr[X5chain][0]).public_key() \
        .public_numbers()  # type: ignore[union-attr]
    message.key = EC2Key(crv="P_384", x=numbers.x.to_bytes(48, "big"),
                         y=numbers.y.to_bytes(48, "big"))
    assert message.verify_signature()
    root = Factory(sez_home).root_cert()
    receipt = result["receipt"]
    for position in range(0, len(receipt), 13):
        changed = bytearray(receipt)
        changed[position] ^= 0x04
        with pytest.raises(VerificationError):
            verify_receipt(bytes(changed), input=b"payload", output=b"payload", nonce=b"n",
                           root=root)
    # The job's claims travel in the unprotected header: changed there, they no longer fold
    # to the root the zone signed; and a tree re-signed by another key fails the signature.
    _, _, _, claims = receipt_claims.parse_proof(
        cose.decode_sign1(receipt).unprotected[receipt_claims.LEAF])
    leaf = cbor2.dumps({**claims, "sez.output": hashlib.sha384(b"forged").digest()})
    tagged = cbor2.loads(receipt)
    tagged.value[1] = {receipt_claims.LEAF: receipt_claims.proof(0, [], leaf)}
    with pytest.raises(VerificationError) as failure:
        verify_receipt(cbor2.dumps(tagged), input=b"payload", output=b"forged", nonce=b"n",
                       root=root)
    assert failure.value.check == "inclusion"
    signed = cbor2.loads(cose.decode_sign1(receipt).payload)
    signed[receipt_claims.TREE] = {"size": 1, "root": receipt_claims.leaf_hash(leaf)}
    stranger = ec.generate_private_key(ec.SECP384R1())
    forged = cose.sign1_each(cbor2.dumps(signed), stranger, [tagged.value[1]],
                             x5chain=message.phdr[X5chain])[0]
    with pytest.raises(VerificationError) as failure:
        verify_receipt(forged, input=b"payload", output=b"forged", nonce=b"n", root=root)
    assert failure.value.check == "signature"


def job_claims(receipt: bytes) -> dict[str, Any]:
    """A receipt's job claims, unverified (its unprotected header)."""
    return receipt_claims.parse_proof(
        cose.decode_sign1(receipt).unprotected[receipt_claims.LEAF])[3]


def test_job_counters_are_monotonic(zone: SyncZone) -> None:
    counters = [job_claims(zone.run("null", b"")["receipt"])["sez.job_counter"]
                for _ in range(5)]
    assert counters == sorted(counters) and len(set(counters)) == 5


def test_stats_time_each_step_of_a_job(zone: SyncZone) -> None:
    """The monitor times the steps of the jobs that succeeded (medians, ms): each one is
    there and none is negative."""
    for _ in range(3):
        zone.run("null", b"")
    phases = zone.stats()["job_phases_ms"]
    steps = ("start", "confine", "receive", "load", "run", "report", "receipt")
    assert set(phases) == {*steps, "total", "jobs"} and phases["jobs"] >= 3, phases
    assert all(phases[step] >= 0 for step in steps) and phases["total"] > 0
    assert phases["receipt"] > phases["run"]  # a P-384 signature against a null applet


def test_key_custody(zone: SyncZone, sez_home: SezHome) -> None:
    message = os.urandom(32)
    first = json.loads(zone.run("key-custody", json.dumps(
        {"op": "sign", "message": message.hex()}).encode())["output"])
    again = json.loads(zone.run("key-custody", b'{"op": "public-key"}')["output"])
    assert first["public_key"] == again["public_key"], "the applet's key is stable"
    certificate = x509.load_der_x509_certificate(bytes.fromhex(first["certificate"]))
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(bytes.fromhex(first["signature"]), message, ec.ECDSA(hashes.SHA384()))
    evidence = zone.attest(b"custody-nonce")
    alias = x509.load_der_x509_certificate(cose.decode_sign1(evidence).x5chain[0])
    certificate.verify_directly_issued_by(alias)
    assert "key-custody" in {a["name"] for a in verify_evidence(
        evidence, nonce=b"custody-nonce", root=Factory(sez_home).root_cert()).applets}


def test_openssl_verifies_an_applet_certificate_up_to_the_root(zone: SyncZone,
                                                               sez_home: SezHome,
                                                               tmp_path: Path) -> None:
    answer = json.loads(zone.run("key-custody", b'{"op": "public-key"}')["output"])
    alias, device_id = cose.decode_sign1(zone.attest(b"applet-chain")).x5chain
    pem = [x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
           for der in (bytes.fromhex(answer["certificate"]), alias, device_id)]
    (tmp_path / "applet.pem").write_bytes(pem[0])
    (tmp_path / "chain.pem").write_bytes(pem[1] + pem[2])
    root = str(Factory(sez_home).root_cert_path)

    def openssl_verify(untrusted: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", "verify", "-CAfile", root, "-untrusted",
                               str(untrusted), str(tmp_path / "applet.pem")],
                              capture_output=True, text=True)

    checked = openssl_verify(tmp_path / "chain.pem")
    assert checked.returncode == 0 and checked.stdout.strip().endswith("OK"), checked.stderr
    (tmp_path / "alias-only.pem").write_bytes(pem[1])  # without DeviceID: no path to the root
    assert openssl_verify(tmp_path / "alias-only.pem").returncode != 0


@pytest.mark.parametrize("behaviour, says", [
    ("spin", "CPU time"),
    ("sleep", "wall_seconds"),
    ("allocate", "MemoryError"),
    ("grow", "memory"),
    ("fork", "raised"),
    ("output", "output limit"),
    ("huge-output", "emory"),
    ("dev-mem", "Permission"),
    ("bbram", "Permission"),
    ("fuses", "No such file"),
    ("keeper", "Permission"),
    ("kill-parent", "PermissionError"),
    ("kill-init", "PermissionError"),
    ("abort", "signal 6"),
    ("raise", "ZeroDivisionError"),
    ("not-bytes", "not bytes"),
])
def test_misbehaving_applets_get_typed_errors(zone: SyncZone, behaviour: str, says: str) -> None:
    with pytest.raises(ZoneError) as failure:
        zone.run("misbehave", behaviour.encode(), timeout=60)
    assert failure.value.code == Code.APPLET_FAILED
    assert says in failure.value.message, failure.value.message
    healthy(zone)


def test_no_applet_process_is_left(zone: SyncZone) -> None:
    info = zone.info()
    assert info["jobs"]["active"] == 0
    assert info["jobs"]["failed"] >= 1 and info["jobs"]["finished"] >= 1


def signed_raw(package: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    return cose.sign1(package, key, kid=hashlib.sha256(owner_spki(key)).digest())


def test_bad_packages(zone: SyncZone, owner: ec.EllipticCurvePrivateKey) -> None:
    good = build_applet(TEST_APPLETS / "null", owner)
    stranger = ec.generate_private_key(ec.SECP384R1())
    package = cose.decode_sign1(good).payload
    cases = {
        "unsigned": (package, Code.NOT_OWNER),
        "truncated": (good[:-20], Code.NOT_OWNER),
        "stranger": (build_applet(TEST_APPLETS / "null", stranger), Code.NOT_OWNER),
        "re-signed": (signed_raw(package, stranger), Code.NOT_OWNER),
    }
    decoded = cbor2.loads(package)
    lying_inventory = dict(decoded, inventory={**decoded["inventory"], "main.py": "00" * 48})
    lying_manifest = dict(decoded, manifest={**decoded["manifest"], "version": 99})
    no_entry = dict(decoded, files={"manifest.toml": decoded["files"]["manifest.toml"]},
                    inventory={"manifest.toml": decoded["inventory"]["manifest.toml"]})
    for name, lie in (("inventory", lying_inventory), ("manifest", lying_manifest),
                      ("entry", no_entry)):
        cases[f"lying-{name}"] = (signed_raw(cbor2.dumps(lie, canonical=True), owner),
                                  Code.BAD_PACKAGE)
    for name, (signed, code) in cases.items():
        with pytest.raises(ZoneError) as failure:
            zone.load(signed)
        assert failure.value.code == code, name
    healthy(zone)


def test_rollback_is_refused(zone: SyncZone, owner: ec.EllipticCurvePrivateKey,
                             tmp_path: Path) -> None:
    v3 = zone.load(build_applet(versioned(TEST_APPLETS / "null", tmp_path, 3), owner))
    assert v3["version"] == 3
    with pytest.raises(ZoneError) as failure:
        zone.load(build_applet(versioned(TEST_APPLETS / "null", tmp_path, 2), owner))
    assert failure.value.code == Code.ROLLBACK
    assert {a["name"]: a["version"] for a in zone.applets()}["null"] == 3


def test_owner_handover(sez_zone_factory: Callable[..., BootedZone], tmp_path: Path) -> None:
    booted = sez_zone_factory("handover-zone")
    first, second = (ec.generate_private_key(ec.SECP384R1()) for _ in range(2))
    with SyncZone(booted.url, timeout=60) as zone:
        zone.enroll(owner_spki(first))
        with pytest.raises(ZoneError) as failure:
            zone.enroll(owner_spki(second))
        assert failure.value.code == Code.NOT_OWNER
        state = zone.owner()
        wrong = enroll_authorization(second, owner_spki(second), bytes(state["ueid"]),
                                     state["epoch"])
        with pytest.raises(ZoneError):
            zone.enroll(owner_spki(second), wrong)
        stale = enroll_authorization(first, owner_spki(second), bytes(state["ueid"]),
                                     state["epoch"] - 1)
        with pytest.raises(ZoneError):
            zone.enroll(owner_spki(second), stale)
        good = enroll_authorization(first, owner_spki(second), bytes(state["ueid"]),
                                    state["epoch"])
        assert zone.enroll(owner_spki(second), good)["epoch"] == state["epoch"] + 1
        with pytest.raises(ZoneError):
            zone.enroll(owner_spki(first), good)  # replaying the handover
        with pytest.raises(ZoneError) as failure:
            zone.load(build_applet(TEST_APPLETS / "null", first))
        assert failure.value.code == Code.NOT_OWNER
        assert zone.load(build_applet(TEST_APPLETS / "null", second))["name"] == "null"


def test_state_survives_a_reboot(sez_zone_factory: Callable[..., BootedZone],
                                 sez_home: SezHome, tmp_path: Path) -> None:
    booted = sez_zone_factory("persistent-zone")
    key = ec.generate_private_key(ec.SECP384R1())
    with SyncZone(booted.url, timeout=60) as zone:
        zone.enroll(owner_spki(key))
        zone.load(build_applet(versioned(TEST_APPLETS / "null", tmp_path, 5), key))
        before = zone.owner()
    booted.machine.stop()
    booted.machine.launch(load_image(), Device.open("persistent-zone", sez_home))
    with SyncZone(booted.url, timeout=60, hello_timeout=90) as zone:
        assert zone.owner()["owner"] == before["owner"]
        assert zone.info()["bbram"] == "ok"
        assert zone.run("null", b"after reboot")["output"] == b"after reboot"
        with pytest.raises(ZoneError) as failure:
            zone.load(build_applet(versioned(TEST_APPLETS / "null", tmp_path, 4), key))
        assert failure.value.code == Code.ROLLBACK


def test_power_cuts_during_bbram_writes(sez_zone_factory: Callable[..., BootedZone],
                                        sez_home: SezHome, tmp_path: Path) -> None:
    """Pull the plug at random moments of a stream of commits: every acknowledged commit
    survives, and BBRAM always authenticates."""
    booted = sez_zone_factory("power-cut-zone")
    key = ec.generate_private_key(ec.SECP384R1())
    device = Device.open("power-cut-zone", sez_home)
    packages = [build_applet(versioned(TEST_APPLETS / "null", tmp_path, v), key)
                for v in range(1, 41)]
    with SyncZone(booted.url, timeout=60) as zone:
        zone.enroll(owner_spki(key))
    acknowledged = 0
    rng = random.Random(4758)
    for cut in range(6):
        driver = subprocess.Popen(
            [sys.executable, "-c", LOADER, booted.url, str(acknowledged)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert driver.stdin is not None and driver.stdout is not None
        driver.stdin.write(cbor2.dumps(packages))
        driver.stdin.close()
        assert driver.stdout.readline() == b"connected\n"
        time.sleep(rng.uniform(0.0, 1.5))
        booted.machine.stop(kill=True)
        acked = [int(line) for line in driver.stdout.read().split()]
        driver.stdout.close()
        driver.wait(30)
        acknowledged = max([acknowledged] + acked)
        booted.machine.launch(load_image(), device)
        with SyncZone(booted.url, timeout=60, hello_timeout=90) as zone:
            loaded = {a["name"]: a["version"] for a in zone.applets()}  # waits for BBRAM
            info = zone.info()
            assert info["bbram"] == "ok", f"cut {cut}: BBRAM {info['bbram']}"
            assert loaded.get("null", 0) >= acknowledged, f"cut {cut}: lost a commit"
            acknowledged = loaded.get("null", 0)
    assert acknowledged >= 3, "the cuts should fall among commits"


LOADER = """
import sys, cbor2
from host_driver import SyncZone
packages = cbor2.loads(sys.stdin.buffer.read())
start = int(sys.argv[2])
with SyncZone(sys.argv[1], timeout=30) as zone:
    print("connected", flush=True)
    for version in range(start + 1, len(packages) + 1):
        zone.load(packages[version - 1])
        print(version, flush=True)
"""
