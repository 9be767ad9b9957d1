"""Appraising a zone's audit log (firmware.abi.audit): every entry signed by the zone, each
naming the one before, none missing, up to the head that fresh evidence names."""

from __future__ import annotations

import datetime
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from firmware.abi import audit as audit_claims
from firmware.abi import cose, keys

from .common import AuditAnchor, VerificationError, serial_number, signed_claims, zone_chain
from .evidence import verify_evidence

__all__ = ["AuditEntry", "AuditResult", "verify_audit", "verify_audit_log"]


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
    alias, device_id = zone_chain(chain, root, now)
    ueid = bytes.fromhex(serial_number(device_id) or "00")
    for expected in (expected_ueid, anchor.ueid if anchor else None):
        if expected is not None and not hmac.compare_digest(ueid, expected):
            raise VerificationError("device", f"the log comes from device {ueid.hex()}, not "
                                    f"{expected.hex()}")
    alias_key = alias.public_key()
    assert isinstance(alias_key, ec.EllipticCurvePublicKey)  # zone_chain checked it
    kid = keys.key_id(keys.spki(alias_key))
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
        payload = signed_claims(message, alias)
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
