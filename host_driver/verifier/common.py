"""What every appraisal shares: the error it raises, the root it trusts, and the checks that
a message was signed by a zone of this manufacturer.

A zone signs evidence, receipts and audit entries alike with its alias key, whose certificate
chain alias <- DeviceID <- root travels with them. ``signed_by_zone`` and ``zone_chain`` run
the checks ``format``, ``certificate-validity``, ``chain`` and ``signature`` for all of them;
the modules beside this one appraise what each kind of message claims. ``AuditAnchor`` is here
too because two appraisals speak of it: evidence names the audit log's head, and the audit
appraisal starts and ends at anchors.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from firmware.abi import cose
from firmware.abi.errors import SezError

__all__ = ["VerificationError", "AuditAnchor", "load_root", "serial_number", "zone_chain",
           "signed_claims", "signed_by_zone"]


class VerificationError(SezError):
    """Evidence failed appraisal. ``check`` names the check that failed."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check


@dataclass(frozen=True)
class AuditAnchor:
    """Where a relying party's verified view of a zone's audit log ends: the last entry's
    sequence number and link (SHA-384). The next fetch must continue exactly there."""

    ueid: bytes
    seq: int
    link: bytes

    def as_dict(self) -> dict[str, Any]:
        return {"ueid": self.ueid.hex(), "seq": self.seq, "link": self.link.hex()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AuditAnchor":
        try:
            return cls(bytes.fromhex(data["ueid"]), int(data["seq"]), bytes.fromhex(data["link"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SezError(f"not an audit anchor: {exc}") from exc


# DICE certificates are not web PKI: CAs need basicConstraints, the alias certificate needs
# nothing beyond RFC 5280 (its TcbInfo extension is checked by the evidence appraisal).
_CA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.CRITICAL, None)
_EE_POLICY = ExtensionPolicy.permit_all()


def load_root(path: Path | str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise SezError(f"cannot read the root certificate {path}: {exc}") from exc


def _valid_at(cert: x509.Certificate, now: datetime.datetime, role: str) -> None:
    if now < cert.not_valid_before_utc:
        raise VerificationError("certificate-validity",
                                f"the {role} certificate is not valid before "
                                f"{cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise VerificationError("certificate-validity",
                                f"the {role} certificate expired "
                                f"{cert.not_valid_after_utc.isoformat()}")


def serial_number(cert: x509.Certificate) -> str:
    """The subject's serialNumber: a zone's certificates carry its UEID there (hex)."""
    values = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return str(values[0].value) if values else ""


def zone_chain(ders: list[bytes], root: x509.Certificate, now: datetime.datetime
               ) -> tuple[x509.Certificate, x509.Certificate]:
    """The alias and DeviceID certificates of ``ders``, after the checks format,
    certificate-validity and chain (alias <- DeviceID <- root)."""
    try:
        chain = [x509.load_der_x509_certificate(der) for der in ders]
    except ValueError as exc:
        raise VerificationError("format", str(exc)) from exc
    if len(chain) != 2:
        raise VerificationError("format", f"the chain holds {len(chain)} certificates, "
                                "expected alias and DeviceID")
    alias, device_id = chain
    for cert, role in ((root, "root"), (device_id, "DeviceID"), (alias, "alias")):
        _valid_at(cert, now, role)
    try:
        verifier = (PolicyBuilder().store(Store([root])).time(now).max_chain_depth(2)
                    .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                    .build_client_verifier())
        verifier.verify(alias, [device_id])
    except (verification.VerificationError, ValueError) as exc:  # or an unusable certificate
        raise VerificationError("chain", f"alias <- DeviceID <- root does not verify: {exc}") \
            from exc
    if not isinstance(alias.public_key(), ec.EllipticCurvePublicKey):
        raise VerificationError("signature", "the alias key is not an EC key")
    return alias, device_id


def signed_claims(message: cose.Sign1, alias: x509.Certificate) -> dict[Any, Any]:
    """The claims map of ``message``, after the check signature (by the alias key)."""
    key = alias.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        message.verify(key)
    except cose.CoseError as exc:
        raise VerificationError("signature", str(exc)) from exc
    try:
        payload = cbor2.loads(message.payload)
    except cbor2.CBORDecodeError as exc:
        raise VerificationError("format", f"the payload is not CBOR: {exc}") from exc
    if not isinstance(payload, dict):
        raise VerificationError("format", "the payload is not a claims map")
    return payload


def signed_by_zone(message_bytes: bytes, root: x509.Certificate, now: datetime.datetime
                   ) -> tuple[dict[Any, Any], x509.Certificate, x509.Certificate]:
    """The claims of a COSE_Sign1 that a zone's alias key signed, after the checks format,
    certificate-validity, chain and signature; with the alias and DeviceID certificates."""
    try:
        message = cose.decode_sign1(message_bytes)
        ders = message.x5chain
    except cose.CoseError as exc:
        raise VerificationError("format", str(exc)) from exc
    alias, device_id = zone_chain(ders, root, now)
    return signed_claims(message, alias), alias, device_id
