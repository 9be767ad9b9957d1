"""Appraising a job receipt: this zone ran this applet on this input, with this output, for
this nonce (firmware.abi.receipt)."""

from __future__ import annotations

import datetime
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from firmware.abi import cose
from firmware.abi import receipt as receipt_claims
from firmware.abi.evidence import KEEPER_CLAIMS

from .common import VerificationError, serial_number, signed_by_zone

__all__ = ["ReceiptResult", "verify_receipt"]


@dataclass(frozen=True)
class ReceiptResult:
    """What a verified receipt proves: this zone ran this applet on this input, with this
    output, for this nonce."""

    job: str
    job_counter: int
    batch: int | None
    applet_name: str
    applet_version: int
    applet_measurement: bytes
    ueid: bytes
    boot_counter: int
    issued_at: int
    #: Receipts under the same signature (the signed tree's size: 1 for a job alone).
    signed_together: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job, "job_counter": self.job_counter, "batch": self.batch,
                "applet": {"name": self.applet_name, "version": self.applet_version,
                           "measurement": self.applet_measurement.hex()},
                "ueid": self.ueid.hex(), "boot_counter": self.boot_counter,
                "issued_at": self.issued_at, "signed_together": self.signed_together}


def verify_receipt(receipt: bytes, *, input: bytes | list[bytes], output: bytes | list[bytes],
                   nonce: bytes,
                   root: x509.Certificate, expected_ueid: bytes | None = None,
                   expected_measurement: bytes | None = None,
                   now: datetime.datetime | None = None) -> ReceiptResult:
    """Check a job receipt against the input, the output and the nonce the caller holds; for
    a batch job's receipt, the lists of inputs and outputs, in order.

    Checks: ``format``, ``certificate-validity``, ``chain``, ``signature`` (as for evidence),
    ``profile``, ``inclusion`` (the job's claims, in the unprotected header, are a leaf of the
    tree whose root the zone signed), ``input``, ``output``, ``nonce``, ``device``
    (``expected_ueid``) and ``applet`` (``expected_measurement``), each named in
    VerificationError.check.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    signed, _, device_id = signed_by_zone(receipt, root, now)
    if signed.get(receipt_claims.PROFILE_KEY) != receipt_claims.PROFILE:
        raise VerificationError("profile", "not a SEZ job receipt")
    size, job = _included(receipt, signed.get(receipt_claims.TREE))
    payload = {**job, **signed}  # the job's claims, and the zone's (job has none of those)
    applet = payload.get(receipt_claims.APPLET)
    ueid = payload.get(receipt_claims.UEID)
    if not (isinstance(applet, dict) and isinstance(applet.get("measurement"), bytes)
            and isinstance(ueid, bytes) and ueid.hex() == serial_number(device_id)):
        raise VerificationError("format", "applet or ueid claim missing or malformed")
    batch = payload.get(receipt_claims.BATCH)
    for check, data, key in (("input", input, receipt_claims.INPUT),
                             ("output", output, receipt_claims.OUTPUT)):
        if (batch is None) != isinstance(data, bytes) or (
                batch is not None and batch != len(data)):
            raise VerificationError(check, f"the receipt is for {batch or 'one'} "
                                    f"{check}{'s' if batch else ''}, not "
                                    f"{'one' if isinstance(data, bytes) else len(data)}")
        claimed = payload.get(key)
        if not isinstance(claimed, bytes) or not hmac.compare_digest(
                claimed, receipt_claims.digest(data)):
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
        job_counter=int(payload.get(receipt_claims.JOB_COUNTER, -1)), batch=batch,
        applet_name=str(applet.get("name")), applet_version=int(applet.get("version", 0)),
        applet_measurement=applet["measurement"], ueid=ueid,
        boot_counter=int(payload.get(receipt_claims.BOOTCOUNT, -1)),
        issued_at=int(payload.get(receipt_claims.IAT, 0)), signed_together=size)


def _included(receipt: bytes, tree: Any) -> tuple[int, dict[Any, Any]]:
    """(tree size, the job's claims) once the receipt's leaf is proven in the signed tree:
    ``format`` if the proof or the tree is malformed, ``inclusion`` if it does not fold to
    the signed root (a claim, the index or the path changed)."""
    if not (isinstance(tree, dict) and type(tree.get("size")) is int
            and isinstance(tree.get("root"), bytes)):
        raise VerificationError("format", "the receipt's signed tree is missing or malformed")
    try:
        index, path, leaf, job = receipt_claims.parse_proof(
            cose.decode_sign1(receipt).unprotected.get(receipt_claims.LEAF))
    except (ValueError, cose.CoseError) as exc:
        raise VerificationError("format", f"the receipt's leaf: {exc}") from None
    if not receipt_claims.included(leaf, index, tree["size"], path, tree["root"]):
        raise VerificationError("inclusion", "the receipt's claims are not in the tree the "
                                "zone signed")
    if set(job) & KEEPER_CLAIMS:
        raise VerificationError("format", "a leaf sets the zone's own claims")
    return tree["size"], job
