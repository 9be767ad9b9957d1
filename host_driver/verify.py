"""The verifier (IETF RATS): appraises a zone's evidence for a relying party.

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
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from firmware.abi import audit as audit_claims
from firmware.abi import cose
from firmware.abi import evidence as claims
from firmware.abi import receipt as receipt_claims
from firmware.abi.errors import SezError
from firmware.abi.dice import MEASURED, TCB_INFO_OID, decode_tcb_info

__all__ = ["AttestationResult", "ReceiptResult", "Reference", "VerificationError",
           "AuditAnchor", "AuditEntry", "AuditResult", "verify_evidence", "verify_receipt",
           "verify_audit", "verify_audit_log", "load_root"]


class VerificationError(SezError):
    """Evidence failed appraisal. ``check`` names the check that failed."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check


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
        owner = self.claims.get("sez.owner")
        return owner if isinstance(owner, bytes) else None

    @property
    def audit_head(self) -> AuditAnchor | None:
        """The zone's last audit-log entry when it made this evidence (verify_audit's head)."""
        head = self.claims.get("sez.audit")
        if not (isinstance(head, dict) and type(head.get("seq")) is int
                and isinstance(head.get("link"), bytes)):
            return None
        return AuditAnchor(self.ueid, head["seq"], head["link"])

    @property
    def applets(self) -> list[dict[str, Any]]:
        """The loaded applets: [{name, version, measurement}]."""
        applets = self.claims.get("sez.applets")
        return list(applets) if isinstance(applets, list) else []

    def as_dict(self) -> dict[str, Any]:
        return {"ueid": self.ueid.hex(), "boot_counter": self.boot_counter, "debug": self.debug,
                "firmware": self.firmware, "issued_at": self.issued_at,
                "measurements": {k: v.hex() for k, v in self.measurements.items()},
                "owner": self.owner.hex() if self.owner else None,
                "bbram": self.claims.get("sez.bbram"),
                "applets": [{**a, "measurement": bytes(a["measurement"]).hex()}
                            for a in self.applets]}


@dataclass(frozen=True)
class ReceiptResult:
    """What a verified receipt proves: this zone ran this applet on this input, with this
    output, for this nonce."""

    job: str
    job_counter: int
    applet_name: str
    applet_version: int
    applet_measurement: bytes
    ueid: bytes
    boot_counter: int
    issued_at: int

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job, "job_counter": self.job_counter,
                "applet": {"name": self.applet_name, "version": self.applet_version,
                           "measurement": self.applet_measurement.hex()},
                "ueid": self.ueid.hex(), "boot_counter": self.boot_counter,
                "issued_at": self.issued_at}


# DICE certificates are not web PKI: CAs need basicConstraints, the alias certificate needs
# nothing beyond RFC 5280 (its TcbInfo extension is checked below, by this module).
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


def _serial_number(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return str(values[0].value) if values else ""


def _zone_chain(ders: list[bytes], root: x509.Certificate, now: datetime.datetime
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
    except Exception as exc:  # cryptography's VerificationError, or an unusable certificate
        raise VerificationError("chain", f"alias <- DeviceID <- root does not verify: {exc}") \
            from exc
    if not isinstance(alias.public_key(), ec.EllipticCurvePublicKey):
        raise VerificationError("signature", "the alias key is not an EC key")
    return alias, device_id


def _claims(message: cose.Sign1, alias: x509.Certificate) -> dict[Any, Any]:
    """The claims map of ``message``, after the check signature (by the alias key)."""
    key = alias.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        message.verify(key)
    except cose.CoseError as exc:
        raise VerificationError("signature", str(exc)) from exc
    try:
        payload = cbor2.loads(message.payload)
    except Exception as exc:
        raise VerificationError("format", f"the payload is not CBOR: {exc}") from exc
    if not isinstance(payload, dict):
        raise VerificationError("format", "the payload is not a claims map")
    return payload


def _signed_by_zone(message_bytes: bytes, root: x509.Certificate, now: datetime.datetime
                    ) -> tuple[dict[Any, Any], x509.Certificate, x509.Certificate]:
    """The claims of a COSE_Sign1 that a zone's alias key signed, after the checks format,
    certificate-validity, chain and signature; with the alias and DeviceID certificates."""
    try:
        message = cose.decode_sign1(message_bytes)
        ders = message.x5chain
    except cose.CoseError as exc:
        raise VerificationError("format", str(exc)) from exc
    alias, device_id = _zone_chain(ders, root, now)
    return _claims(message, alias), alias, device_id


def verify_evidence(evidence: bytes, *, nonce: bytes, root: x509.Certificate,
                    reference: Reference | None = None, allow_debug: bool = False,
                    expected_ueid: bytes | None = None,
                    now: datetime.datetime | None = None) -> AttestationResult:
    """Appraise ``evidence``; return what it proves, or raise VerificationError."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    payload, alias, device_id = _signed_by_zone(evidence, root, now)
    if payload.get(claims.PROFILE_KEY) != claims.PROFILE:
        raise VerificationError("profile", f"eat_profile is {payload.get(claims.PROFILE_KEY)!r}")
    claimed_nonce = payload.get(claims.NONCE)
    if not isinstance(claimed_nonce, bytes) or not hmac.compare_digest(claimed_nonce, nonce):
        raise VerificationError("nonce", "the evidence does not answer this nonce")
    ueid = payload.get(claims.UEID)
    if not isinstance(ueid, bytes) or not (
            _serial_number(device_id) == _serial_number(alias) == ueid.hex()):
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
    return AttestationResult(
        ueid=ueid, measurements=dict(measurements), boot_counter=int(payload.get(claims.BOOTCOUNT, -1)),
        debug=debug, firmware=str(payload.get(claims.FIRMWARE)),
        issued_at=int(payload.get(claims.IAT, 0)), alias_cert=alias, device_id_cert=device_id,
        claims=payload)


def verify_receipt(receipt: bytes, *, input: bytes, output: bytes, nonce: bytes,
                   root: x509.Certificate, expected_ueid: bytes | None = None,
                   expected_measurement: bytes | None = None,
                   now: datetime.datetime | None = None) -> ReceiptResult:
    """Check a job receipt against the input, the output and the nonce the caller holds.

    Checks: ``format``, ``certificate-validity``, ``chain``, ``signature`` (as for evidence),
    ``profile``, ``input``, ``output``, ``nonce``, ``device`` (``expected_ueid``) and
    ``applet`` (``expected_measurement``), each named in VerificationError.check.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    payload, _, device_id = _signed_by_zone(receipt, root, now)
    if payload.get(receipt_claims.PROFILE_KEY) != receipt_claims.PROFILE:
        raise VerificationError("profile", "not a SEZ job receipt")
    applet = payload.get(receipt_claims.APPLET)
    ueid = payload.get(receipt_claims.UEID)
    if not (isinstance(applet, dict) and isinstance(applet.get("measurement"), bytes)
            and isinstance(ueid, bytes) and ueid.hex() == _serial_number(device_id)):
        raise VerificationError("format", "applet or ueid claim missing or malformed")
    for check, data, key in (("input", input, receipt_claims.INPUT),
                             ("output", output, receipt_claims.OUTPUT)):
        claimed = payload.get(key)
        if not isinstance(claimed, bytes) or not hmac.compare_digest(
                claimed, hashlib.sha384(data).digest()):
            raise VerificationError(check, f"the receipt is for another {check}")
    claimed_nonce = payload.get(receipt_claims.NONCE)
    if not isinstance(claimed_nonce, bytes) or not hmac.compare_digest(claimed_nonce, nonce):
        raise VerificationError("nonce", "the receipt does not answer this nonce")
    if expected_ueid is not None and not hmac.compare_digest(ueid, expected_ueid):
        raise VerificationError("device", f"the job ran on device {ueid.hex()}, "
                                f"not {expected_ueid.hex()}")
    if expected_measurement is not None and not hmac.compare_digest(applet["measurement"],
                                                                     expected_measurement):
        raise VerificationError("applet", "the job ran another applet")
    return ReceiptResult(
        job=str(payload.get(receipt_claims.JOB)),
        job_counter=int(payload.get(receipt_claims.JOB_COUNTER, -1)),
        applet_name=str(applet.get("name")), applet_version=int(applet.get("version", 0)),
        applet_measurement=applet["measurement"], ueid=ueid,
        boot_counter=int(payload.get(receipt_claims.BOOTCOUNT, -1)),
        issued_at=int(payload.get(receipt_claims.IAT, 0)))


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: int
    boot_counter: int
    event: dict[str, Any]
    link: bytes

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "boot_counter": self.boot_counter,
                "event": {k: v.hex() if isinstance(v, bytes) else v
                          for k, v in self.event.items()}}


@dataclass(frozen=True)
class AuditResult:
    ueid: bytes
    entries: list[AuditEntry]
    anchor: AuditAnchor | None  # after the last entry (the given anchor if there is none)
    #: Without an anchor: the entry the verified view starts at when the device had entries
    #: before it (acknowledged earlier, so they cannot be checked): the first entry kept, or,
    #: with none kept, the head the evidence names. None with an anchor, or from entry 1.
    start: int | None = None


def verify_audit(chain: list[bytes], entries: list[bytes], *, root: x509.Certificate,
                 anchor: AuditAnchor | None = None, head: AuditAnchor | None = None,
                 expected_ueid: bytes | None = None,
                 now: datetime.datetime | None = None) -> AuditResult:
    """Appraise audit-log entries (firmware.abi.audit) fetched from a zone.

    Checks: ``format``, ``certificate-validity``, ``chain`` (alias <- DeviceID <- root),
    ``device`` (the chain's device is ``expected_ueid`` or the anchor's), then for each entry
    ``format``, ``key`` (signed by that alias key), ``signature``, ``profile``, ``ueid``,
    ``sequence`` (each entry's number is one more than the one before, and the first continues
    ``anchor``) and ``link`` (each entry names the one before by its SHA-384; the first names
    the anchor's, or GENESIS if it is the device's first entry), and ``head``: the log reaches
    the last entry that fresh evidence names (AttestationResult.audit_head), so entries cut off
    the end are detected too. So a removed, inserted, altered or reordered entry fails; so does
    a log that does not start where the anchor ends.

    Without an anchor the view starts where the kept entries start (AuditResult.start says
    where, when entries came before it); with no entry kept at all (every one acknowledged
    before), it starts at ``head``, whose device must be the chain's (``device``), and the
    result's anchor is the head. With an anchor every check above applies as it is.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    alias, device_id = _zone_chain(chain, root, now)
    ueid = bytes.fromhex(_serial_number(device_id) or "00")
    for expected in (expected_ueid, anchor.ueid if anchor else None):
        if expected is not None and not hmac.compare_digest(ueid, expected):
            raise VerificationError("device", f"the log comes from device {ueid.hex()}, not "
                                    f"{expected.hex()}")
    kid = hashlib.sha256(alias.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
    seq, link = (anchor.seq, anchor.link) if anchor else (None, None)
    verified = []
    for raw in entries:
        try:
            message = cose.decode_sign1(raw)
        except cose.CoseError as exc:
            raise VerificationError("format", f"entry after {seq}: {exc}") from exc
        if message.headers.get(cose.HDR_KID) != kid:
            raise VerificationError("key", f"entry after {seq} is not signed by this zone's "
                                    "alias key")
        payload = _claims(message, alias)
        if payload.get(audit_claims.PROFILE_KEY) != audit_claims.PROFILE:
            raise VerificationError("profile", f"entry after {seq} is not an audit entry")
        if payload.get(audit_claims.UEID) != ueid:
            raise VerificationError("ueid", f"entry after {seq} names another device")
        number, prev, event = (payload.get(audit_claims.SEQ), payload.get(audit_claims.PREV),
                               payload.get(audit_claims.EVENT))
        if type(number) is not int or not isinstance(prev, bytes) or not isinstance(event, dict):
            raise VerificationError("format", f"entry after {seq}: seq, prev or event malformed")
        if seq is not None and number != seq + 1:
            raise VerificationError("sequence", f"entry {number} follows entry {seq}: "
                                    + ("entries are missing" if number > seq + 1 else
                                       "entries are repeated or out of order"))
        expected_link = link if link is not None else (audit_claims.GENESIS if number == 1
                                                       else None)
        if expected_link is not None and not hmac.compare_digest(prev, expected_link):
            raise VerificationError("link", f"entry {number} does not follow the entry before "
                                    "it: the chain is broken")
        seq, link = number, audit_claims.link(raw)
        verified.append(AuditEntry(number, int(payload.get(audit_claims.IAT, 0)),
                                   int(payload.get(audit_claims.BOOTCOUNT, -1)), event, link))
    if anchor is None and not verified and head is not None and head.seq > 0:
        # Nothing kept up to the head the evidence names: every entry was acknowledged before.
        if not hmac.compare_digest(head.ueid, ueid):
            raise VerificationError("device", f"the evidence names device {head.ueid.hex()}, "
                                    f"the log comes from {ueid.hex()}")
        return AuditResult(ueid, [], AuditAnchor(ueid, head.seq, head.link), start=head.seq)
    start = verified[0].seq if anchor is None and verified and verified[0].seq > 1 else None
    end = AuditAnchor(ueid, seq, link) if seq is not None and link is not None else anchor
    reached = {anchor.seq: anchor.link} if anchor else {}
    reached.update((e.seq, e.link) for e in verified)
    if head is not None and head.seq > 0 and head.seq >= min(reached, default=0):
        if head.seq not in reached:
            raise VerificationError("head", f"the log ends at entry {seq}, before entry "
                                    f"{head.seq} that the zone's evidence names: entries are "
                                    "missing from the end")
        if not hmac.compare_digest(reached[head.seq], head.link):
            raise VerificationError("head", f"entry {head.seq} is not the one the zone's "
                                    "evidence names")
    return AuditResult(ueid, verified, end, start)


def verify_audit_log(log: dict[str, Any], *, root: x509.Certificate,
                     anchor: AuditAnchor | None = None,
                     now: datetime.datetime | None = None) -> AuditResult:
    """Appraise a log fetched with its evidence (``Zone.audit(nonce=...)``: chain, entries,
    evidence, nonce): the evidence's checks, then verify_audit up to the last entry the
    evidence names, for the device it names. A debug zone's log is appraised too (the
    evidence says it is one)."""
    attested = verify_evidence(log["evidence"], nonce=log["nonce"], root=root,
                               allow_debug=True, now=now)
    return verify_audit(log["chain"], log["entries"], root=root, anchor=anchor,
                        head=attested.audit_head, expected_ueid=attested.ueid, now=now)
