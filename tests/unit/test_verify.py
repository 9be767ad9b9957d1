"""Every verifier check, on evidence made by the real layer-0 code on the host (no QEMU)."""

from __future__ import annotations

import datetime
from pathlib import Path

import cbor2
import pytest

from emulator.factory import Factory
from emulator.paths import SezHome
from firmware.abi import dice
from firmware.abi import cose
from firmware.abi.errors import NoIdentity
from firmware.layer0.identity import Identity
from firmware.pid1.hardware import Hardware
from host_driver.verifier import Reference, VerificationError, verify_evidence

from .conftest import NONCE, Zone


def check(evidence: bytes, factory: Factory, zone: Zone, **kwargs: object) -> str:
    with pytest.raises(VerificationError) as failure:
        verify_evidence(evidence, **{"nonce": NONCE, "root": factory.root_cert(),  # type: ignore[arg-type]
                                     "reference": zone.reference, **kwargs})
    return failure.value.check


def test_good_evidence_verifies(factory: Factory, zone: Zone) -> None:
    result = verify_evidence(zone.evidence(), nonce=NONCE, root=factory.root_cert(),
                             reference=zone.reference, expected_ueid=zone.ueid)
    assert result.ueid == zone.ueid
    assert result.boot_counter == 7 and result.debug is False
    assert result.measurements == zone.reference.measurements


@pytest.mark.parametrize("nonce", [b"", b"1234567", b"x" * 65, "text", None])
def test_layer0_refuses_bad_nonces(zone: Zone, nonce: object) -> None:
    with pytest.raises(ValueError, match="8 to 64 bytes"):
        zone.identity.evidence(nonce, {})


def test_layer0_refuses_claims_it_owns(zone: Zone) -> None:
    with pytest.raises(ValueError):
        zone.identity.evidence(NONCE, {"sez.debug": True})


def test_wrong_nonce(factory: Factory, zone: Zone) -> None:
    assert check(zone.evidence(b"another-nonce-123"), factory, zone) == "nonce"


def test_every_flipped_byte_fails_with_a_named_check(factory: Factory, zone: Zone) -> None:
    evidence = zone.evidence()
    seen = set()
    for position in range(0, len(evidence), 7):
        flipped = bytearray(evidence)
        flipped[position] ^= 0x01
        seen.add(check(bytes(flipped), factory, zone))
    assert seen <= {"format", "certificate-validity", "chain", "signature"}
    assert {"format", "signature"} <= seen


def test_chain_from_another_factory(zone: Zone, tmp_path: Path) -> None:
    other = Factory(SezHome(tmp_path))
    other.init()
    assert check(zone.evidence(), other, zone) == "chain"


def test_evidence_of_one_device_presented_as_another(factory: Factory, zone: Zone,
                                                      tmp_path: Path) -> None:
    b = Zone(factory.home, "b", tmp_path)
    assert b.ueid != zone.ueid
    assert check(zone.evidence(), factory, zone, expected_ueid=b.ueid) == "device"


@pytest.mark.parametrize("name", dice.MEASURED)
def test_one_differing_reference_value(factory: Factory, zone: Zone, name: str) -> None:
    wrong = Reference({**zone.reference.measurements, name: bytes(48)})
    assert check(zone.evidence(), factory, zone, reference=wrong) == f"measurement.{name}"


@pytest.mark.parametrize("when", [datetime.timedelta(days=365 * 30), -datetime.timedelta(days=1)],
                         ids=["expired", "not-yet-valid"])
def test_certificate_validity(factory: Factory, zone: Zone, when: datetime.timedelta) -> None:
    now = datetime.datetime.now(datetime.timezone.utc) + when
    assert check(zone.evidence(), factory, zone, now=now) == "certificate-validity"


@pytest.mark.parametrize("provisioned", [-30, 30], ids=["expired", "not-yet-valid"])
def test_device_certificate_validity(factory: Factory, tmp_path: Path, provisioned: int) -> None:
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=provisioned)
    device = Zone(factory.home, f"dated{provisioned}", tmp_path, provisioned=when,
                  validity=datetime.timedelta(days=1))
    assert check(device.evidence(), factory, device) == "certificate-validity"


def test_debug_zone_needs_allow_debug(factory: Factory, tmp_path: Path) -> None:
    debug = Zone(factory.home, "dbg", tmp_path, debug=True)
    assert check(debug.evidence(), factory, debug) == "debug"
    result = verify_evidence(debug.evidence(), nonce=NONCE, root=factory.root_cert(),
                             reference=debug.reference, allow_debug=True)
    assert result.debug is True


def test_claims_that_disagree_with_the_tcbinfo(factory: Factory, zone: Zone) -> None:
    """Even a correctly signed EAT is refused when it claims other measurements than the
    alias certificate carries (a monitor cannot make layer 0 vouch for another firmware)."""
    message = cose.decode_sign1(zone.evidence())
    claims = cbor2.loads(message.payload)
    claims["sez.measurements"] = {**claims["sez.measurements"], "firmware": bytes(48)}
    forged = cose.sign1(cbor2.dumps(claims), zone.identity.alias, x5chain=zone.identity.chain)
    assert check(forged, factory, zone) == "tcbinfo"


def test_not_evidence_at_all(factory: Factory, zone: Zone) -> None:
    for junk in (b"", b"\xa0", cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"", b""])),
                 cbor2.dumps(cbor2.CBORTag(17, []))):
        assert check(junk, factory, zone) == "format"


def test_fuses_that_do_not_match_the_certificate(factory: Factory, tmp_path: Path) -> None:
    a = factory.provision("mismatch-a")
    b = factory.provision("mismatch-b")
    hw = Hardware(uds=bytearray(a.fuses.read_bytes()),
                  device_id_cert=b.device_id_cert.read_bytes(),
                  measurements={n: bytes(48) for n in dice.MEASURED[:3]})
    (tmp_path / "init").write_text("")
    with pytest.raises(NoIdentity, match="do not match"):
        Identity(hw, root=str(tmp_path))
    assert hw.uds == bytearray(32), "layer 0 wipes the fuses even when it fails"
