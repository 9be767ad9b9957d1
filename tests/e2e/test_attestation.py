"""Identity and attestation against real zones: evidence, chain, independent checkers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pycose.headers import X5chain
from pycose.keys import EC2Key
from pycose.messages import Sign1Message

import firmware
from emulator.device import Device
from emulator.factory import Factory
from emulator.image import build_image, load_image
from emulator.paths import SezHome
from firmware.abi import cose
from host_driver import BadArgs, SyncZone
from host_driver.lifecycle import BootedZone
from host_driver.verifier import (AttestationResult, Reference, VerificationError,
                                  verify_evidence)

pytestmark = pytest.mark.e2e
SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def attest(zone: BootedZone, nonce: bytes) -> bytes:
    with SyncZone(zone.url, timeout=60) as client:
        return client.attest(nonce)


def appraise(evidence: bytes, nonce: bytes, home: SezHome, **kwargs: Any) -> AttestationResult:
    return verify_evidence(evidence, nonce=nonce, root=Factory(home).root_cert(),
                           reference=Reference.from_manifest(load_image().directory
                                                             / "manifest.json"), **kwargs)


def alias_key(evidence: bytes) -> bytes:
    alias = x509.load_der_x509_certificate(cose.decode_sign1(evidence).x5chain[0])
    return alias.public_key().public_bytes(*SPKI)


def sez(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_driver.cli", *args], capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})})


def test_evidence_verifies(sez_zone: BootedZone, sez_home: SezHome) -> None:
    nonce = os.urandom(32)
    result = appraise(attest(sez_zone, nonce), nonce, sez_home)
    device = json.loads((sez_home.device_dir(sez_zone.name) / "device.json").read_text())
    assert result.ueid.hex() == device["ueid"]
    assert result.debug is False and result.firmware == firmware.FIRMWARE_VERSION
    assert result.boot_counter >= 1
    manifest = load_image().manifest
    assert {k: v.hex() for k, v in result.measurements.items()} == {
        k: manifest[k]["sha384"] for k in ("kernel", "initramfs", "cmdline", "firmware")}


def test_openssl_and_pycose_accept_the_evidence(sez_zone: BootedZone, sez_home: SezHome,
                                                tmp_path: Path) -> None:
    evidence = attest(sez_zone, b"independent-checkers")
    message = Sign1Message.decode(evidence)
    alias_der, device_der = message.phdr[X5chain]
    for der, name in ((alias_der, "alias.pem"), (device_der, "deviceid.pem")):
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        (tmp_path / name).write_bytes(pem)
    proc = subprocess.run(["openssl", "verify", "-CAfile", str(Factory(sez_home).root_cert_path),
                           "-untrusted", str(tmp_path / "deviceid.pem"),
                           str(tmp_path / "alias.pem")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr
    numbers = x509.load_der_x509_certificate(alias_der).public_key().public_numbers()  # type: ignore[union-attr]
    message.key = EC2Key(crv="P_384", x=numbers.x.to_bytes(48, "big"),
                         y=numbers.y.to_bytes(48, "big"))
    assert message.verify_signature()
    message.key = EC2Key.generate_key(crv="P_384")
    assert not message.verify_signature()


@pytest.mark.parametrize("nonce", [b"", b"short", os.urandom(65), "not bytes", None])
def test_bad_nonces_are_typed_errors(sez_zone: BootedZone, nonce: Any) -> None:
    with SyncZone(sez_zone.url) as zone:
        with pytest.raises(BadArgs, match="nonce"):
            zone.request("attest", {"nonce": nonce} if nonce is not None else {})
        assert zone.echo(b"still serving") == b"still serving"


def test_flipped_bytes_fail_a_named_check(sez_zone: BootedZone, sez_home: SezHome) -> None:
    nonce = os.urandom(16)
    evidence = attest(sez_zone, nonce)
    checks = set()
    for position in range(0, len(evidence), 11):
        flipped = bytearray(evidence)
        flipped[position] ^= 0x80
        with pytest.raises(VerificationError) as failure:
            appraise(bytes(flipped), nonce, sez_home)
        checks.add(failure.value.check)
    assert checks <= {"format", "certificate-validity", "chain", "signature"}
    assert "signature" in checks


def test_cli_attest_and_verify(sez_zone: BootedZone, sez_home: SezHome, tmp_path: Path) -> None:
    nonce = os.urandom(24).hex()
    out = tmp_path / "evidence.cbor"
    made = sez("attest", sez_zone.name, "--nonce", nonce, "-o", str(out))
    assert made.returncode == 0, made.stderr
    ok = sez("verify", str(out), "--nonce", nonce, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    wrong = sez("verify", str(out), "--nonce", "00" * 24)
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == "sez: error: verification failed: nonce: the evidence does " \
        "not answer this nonce"
    manifest = json.loads((load_image().directory / "manifest.json").read_text())
    manifest["cmdline"]["sha384"] = "00" * 48
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    bad = sez("verify", str(out), "--nonce", nonce, "--reference", str(tmp_path / "manifest.json"))
    assert bad.returncode == 1 and "measurement.cmdline" in bad.stderr
    short = sez("attest", sez_zone.name, "--nonce", "0011", "-o", str(out))
    assert short.returncode == 2 and "8 to 64 bytes" in short.stderr


@pytest.fixture(scope="module")
def device_b(sez_zone_factory: Callable[..., BootedZone]) -> BootedZone:
    return sez_zone_factory("device-b")


def test_two_devices_share_nothing(sez_zone: BootedZone, device_b: BootedZone,
                                   sez_home: SezHome) -> None:
    nonce = os.urandom(16)
    a, b = attest(sez_zone, nonce), attest(device_b, nonce)
    ra, rb = appraise(a, nonce, sez_home), appraise(b, nonce, sez_home)
    assert ra.ueid != rb.ueid
    assert ra.device_id_cert.public_key().public_bytes(*SPKI) != \
        rb.device_id_cert.public_key().public_bytes(*SPKI)
    assert alias_key(a) != alias_key(b)
    with pytest.raises(VerificationError) as failure:
        appraise(a, nonce, sez_home, expected_ueid=rb.ueid)
    assert failure.value.check == "device"


def test_a_reboot_gives_the_same_keys_and_debug_another(device_b: BootedZone,
                                                        sez_home: SezHome) -> None:
    nonce = os.urandom(16)
    before = attest(device_b, nonce)
    device_b.machine.stop()
    device_b.machine.launch(load_image(), Device.open("device-b", sez_home))
    with SyncZone(device_b.url, hello_timeout=90) as zone:
        after = zone.attest(nonce, timeout=60)
    first, second = appraise(before, nonce, sez_home), appraise(after, nonce, sez_home)
    assert second.boot_counter == first.boot_counter + 1
    assert alias_key(after) == alias_key(before)
    assert second.device_id_cert == first.device_id_cert

    device_b.machine.stop()
    device_b.machine.launch(load_image(), Device.open("device-b", sez_home), debug=True)
    with SyncZone(device_b.url, hello_timeout=90) as zone:
        debug = zone.attest(nonce, timeout=60)
    with pytest.raises(VerificationError) as failure:
        appraise(debug, nonce, sez_home)
    assert failure.value.check == "debug"
    assert appraise(debug, nonce, sez_home, allow_debug=True).debug is True
    assert alias_key(debug) != alias_key(before)
    device_b.machine.stop()


def test_changed_firmware_changes_the_alias_key(device_b: BootedZone, sez_home: SezHome,
                                                tmp_path: Path) -> None:
    built = load_image()
    source = tmp_path / "firmware"
    shutil.copytree(Path(firmware.__file__).parent, source,
                    ignore=shutil.ignore_patterns("__pycache__"))
    with (source / "monitor.py").open("a") as f:
        f.write("\n# a changed firmware file\n")
    changed = build_image(tmp_path / "image", cache=built.directory / "cache" / "debs",
                          firmware_source=source)
    assert changed.manifest["firmware"]["sha384"] != built.manifest["firmware"]["sha384"]
    assert changed.manifest["kernel"] == built.manifest["kernel"]
    nonce = os.urandom(16)
    device_b.machine.stop()
    device_b.machine.launch(built, Device.open("device-b", sez_home))
    with SyncZone(device_b.url, hello_timeout=90) as zone:
        original = zone.attest(nonce, timeout=60)
    device_b.machine.stop()
    device_b.machine.launch(changed, Device.open("device-b", sez_home))
    with SyncZone(device_b.url, hello_timeout=90) as zone:
        evidence = zone.attest(nonce, timeout=60)
    device_b.machine.stop()
    assert alias_key(evidence) != alias_key(original)
    with pytest.raises(VerificationError) as failure:
        appraise(evidence, nonce, sez_home)
    assert failure.value.check.startswith("measurement.")
    result = verify_evidence(evidence, nonce=nonce, root=Factory(sez_home).root_cert(),
                             reference=Reference.from_manifest(changed.directory / "manifest.json"))
    assert result.measurements["firmware"].hex() == changed.manifest["firmware"]["sha384"]

