"""Appraising a zone's evidence (IETF RATS): what state the zone says it is in.

    result = verify_evidence(evidence, nonce=nonce, root=root_cert,
                             reference=Reference.from_manifest("images/build/manifest.json"))

It trusts only the manufacturer's root certificate and the reference values; the host that
relayed the evidence is not trusted. Checks, in order (each failure raises
``VerificationError`` whose ``check`` names it):

``format``                the evidence is a COSE_Sign1 with an x5chain of two certificates
                          and an EAT payload
``certificate-validity``  the root, DeviceID and alias certificates are valid at ``now``
``chain``                 alias <- DeviceID <- root, by cryptography's X.509 path validation
``signature``             the COSE_Sign1 signature verifies with the alias key (ES384)
``profile``               the EAT profile is SEZ's
``nonce``                 the evidence answers this verifier's nonce
``ueid``                  the UEID claim is the one both certificates name
``device``                the evidence comes from the device the relying party expects
                          (``expected_ueid``, when given)
``tcbinfo``               the alias certificate's TcbInfo carries the measurements claimed
``measurement.NAME``      each measurement equals the reference value (kernel, initramfs,
                          cmdline, firmware)
``debug``                 the zone is not a debug zone (unless ``allow_debug``)
``tamper``                the device's tamper record (claim ``sez.tamper_state``: tamper events
                          before it was provisioned anew) is well-formed, and shows at most
                          ``max_tamper_count`` events when that is given
"""

from __future__ import annotations

import datetime
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from firmware.abi import evidence as claims
from firmware.abi.dice import MEASURED, TCB_INFO_OID, decode_tcb_info
from firmware.abi.errors import SezError
from firmware.abi.keys import key_id, spki

from .common import AuditAnchor, VerificationError, serial_number, signed_by_zone

__all__ = ["Reference", "AttestationResult", "verify_evidence", "verify_session"]


@dataclass(frozen=True)
class Reference:
    """Reference values: the SHA-384 the image build recorded for each measured part."""

    measurements: dict[str, bytes]

    @classmethod
    def from_manifest(cls, path: Path | str) -> "Reference":
        manifest = json.loads(Path(path).read_text())
        try:
            return cls({name: bytes.fromhex(manifest[name]["sha384"]) for name in MEASURED})
        except (KeyError, TypeError, ValueError) as exc:
            raise SezError(f"{path} is not an image manifest with {', '.join(MEASURED)}") from exc


@dataclass(frozen=True)
class AttestationResult:
    """What appraised evidence says about the zone that produced it."""

    ueid: bytes
    measurements: dict[str, bytes]
    boot_counter: int
    debug: bool
    firmware: str
    issued_at: int
    alias_cert: x509.Certificate = field(repr=False)
    device_id_cert: x509.Certificate = field(repr=False)
    claims: dict[Any, Any] = field(repr=False)

    @property
    def alias_key(self) -> ec.EllipticCurvePublicKey:
        key = self.alias_cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key

    @property
    def owner(self) -> bytes | None:
        """SHA-256 of the enrolled owner's public key, or None."""
        owner = self.claims.get(claims.OWNER)
        return owner if isinstance(owner, bytes) else None

    @property
    def audit_head(self) -> AuditAnchor | None:
        """The zone's last audit-log entry when it made this evidence (verify_audit's head)."""
        head = self.claims.get(claims.AUDIT)
        if not (isinstance(head, dict) and type(head.get("seq")) is int
                and isinstance(head.get("link"), bytes)):
            return None
        return AuditAnchor(self.ueid, head["seq"], head["link"])

    @property
    def tamper(self) -> dict[str, Any]:
        """{count, last}: the device's tamper events before this provisioning, and the last
        one's cause (layer 0 stamps the factory's record)."""
        return dict(self.claims.get(claims.TAMPER_STATE) or {"count": 0, "last": None})

    @property
    def session_key(self) -> bytes | None:
        """The key id (abi.keys.key_id) of the zone's TLS key this boot, or None."""
        key = self.claims.get(claims.SESSION_KEY)
        return key if isinstance(key, bytes) else None

    @property
    def applets(self) -> list[dict[str, Any]]:
        """The loaded applets: [{name, version, measurement}]."""
        applets = self.claims.get(claims.APPLETS)
        return list(applets) if isinstance(applets, list) else []

    def as_dict(self) -> dict[str, Any]:
        return {"ueid": self.ueid.hex(), "boot_counter": self.boot_counter, "debug": self.debug,
                "firmware": self.firmware, "issued_at": self.issued_at,
                "measurements": {k: v.hex() for k, v in self.measurements.items()},
                "owner": self.owner.hex() if self.owner else None,
                "bbram": self.claims.get(claims.BBRAM), "tamper": self.tamper,
                "applets": [{**a, "measurement": bytes(a["measurement"]).hex()}
                            for a in self.applets]}


def verify_evidence(evidence: bytes, *, nonce: bytes, root: x509.Certificate,
                    reference: Reference | None = None, allow_debug: bool = False,
                    expected_ueid: bytes | None = None, max_tamper_count: int | None = None,
                    now: datetime.datetime | None = None) -> AttestationResult:
    """Appraise ``evidence``; return what it proves, or raise VerificationError."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    payload, alias, device_id = signed_by_zone(evidence, root, now)
    if payload.get(claims.PROFILE_KEY) != claims.PROFILE:
        raise VerificationError("profile", f"eat_profile is {payload.get(claims.PROFILE_KEY)!r}")
    claimed_nonce = payload.get(claims.NONCE)
    if not isinstance(claimed_nonce, bytes) or not hmac.compare_digest(claimed_nonce, nonce):
        raise VerificationError("nonce", "the evidence does not answer this nonce")
    ueid = payload.get(claims.UEID)
    if not isinstance(ueid, bytes) or not (
            serial_number(device_id) == serial_number(alias) == ueid.hex()):
        raise VerificationError("ueid", "the UEID claim is not the device the certificates name")
    if expected_ueid is not None and not hmac.compare_digest(ueid, expected_ueid):
        raise VerificationError("device", f"the evidence comes from device {ueid.hex()}, "
                                f"not {expected_ueid.hex()}")
    measurements = payload.get(claims.MEASUREMENTS)
    debug = payload.get(claims.DEBUG)
    if not (isinstance(measurements, dict) and set(measurements) == set(MEASURED)
            and all(isinstance(v, bytes) for v in measurements.values())
            and isinstance(debug, bool)):
        raise VerificationError("format", "measurements or debug claim missing or malformed")
    try:
        extension = alias.extensions.get_extension_for_oid(TCB_INFO_OID).value
        if not isinstance(extension, x509.UnrecognizedExtension):
            raise ValueError("TcbInfo is not an opaque extension")
        tcb = decode_tcb_info(extension.value)
    except (x509.ExtensionNotFound, ValueError) as exc:
        raise VerificationError("tcbinfo", f"no readable TcbInfo in the alias certificate: {exc}")\
            from exc
    if tcb["measurements"] != measurements or tcb["debug"] != debug:
        raise VerificationError("tcbinfo", "the alias certificate's TcbInfo differs from the "
                                "claimed measurements")
    if reference is not None:
        for name in MEASURED:
            if not hmac.compare_digest(measurements[name], reference.measurements[name]):
                raise VerificationError(
                    f"measurement.{name}",
                    f"{name} measures {measurements[name].hex()[:16]}…, the reference is "
                    f"{reference.measurements[name].hex()[:16]}…")
    dbgstat = payload.get(claims.DBGSTAT)
    if (debug or dbgstat == claims.DBGSTAT_ENABLED) and not allow_debug:
        raise VerificationError("debug", "the zone runs in debug mode")
    tamper = payload.get(claims.TAMPER_STATE)
    if not (isinstance(tamper, dict) and type(tamper.get("count")) is int
            and tamper["count"] >= 0 and isinstance(tamper.get("last"), (str, type(None)))):
        raise VerificationError("tamper", "the tamper record is missing or malformed")
    if max_tamper_count is not None and tamper["count"] > max_tamper_count:
        raise VerificationError("tamper", f"the device was tampered with {tamper['count']} "
                                f"time(s) before (last: {tamper['last']}); at most "
                                f"{max_tamper_count} accepted")
    return AttestationResult(
        ueid=ueid, measurements=dict(measurements), boot_counter=int(payload.get(claims.BOOTCOUNT, -1)),
        debug=debug, firmware=str(payload.get(claims.FIRMWARE)),
        issued_at=int(payload.get(claims.IAT, 0)), alias_cert=alias, device_id_cert=device_id,
        claims=payload)


def verify_session(evidence: bytes, certificate: x509.Certificate, *, nonce: bytes,
                   root: x509.Certificate, reference: Reference | None = None,
                   allow_debug: bool = False, expected_ueid: bytes | None = None,
                   now: datetime.datetime | None = None) -> AttestationResult:
    """Appraise ``evidence`` fetched inside a TLS session whose server presented
    ``certificate``: verify_evidence's checks, then ``session-key``, the evidence names
    that certificate's key as the zone's TLS key; ``session-certificate``, the evidence's
    alias key issued it. Together: the TLS endpoint is the attested zone."""
    result = verify_evidence(evidence, nonce=nonce, root=root, reference=reference,
                             allow_debug=allow_debug, expected_ueid=expected_ueid, now=now)
    named = result.session_key
    tls_key = certificate.public_key()
    if named is None or not isinstance(tls_key, ec.EllipticCurvePublicKey) or \
            not hmac.compare_digest(named, key_id(spki(tls_key))):
        raise VerificationError("session-key", "the evidence does not name this TLS "
                                "connection's key: the session ends elsewhere than the zone")
    try:
        certificate.verify_directly_issued_by(result.alias_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise VerificationError("session-certificate", "the TLS certificate was not issued "
                                f"by the attested zone's alias key ({exc})") from exc
    return result
