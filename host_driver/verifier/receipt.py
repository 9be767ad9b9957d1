"""Appraising a job receipt: this zone ran this applet on this input, with this output, for
this nonce (firmware.abi.receipt)."""

from __future__ import annotations

import datetime
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from firmware.abi import receipt as receipt_claims

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

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job, "job_counter": self.job_counter, "batch": self.batch,
                "applet": {"name": self.applet_name, "version": self.applet_version,
                           "measurement": self.applet_measurement.hex()},
                "ueid": self.ueid.hex(), "boot_counter": self.boot_counter,
                "issued_at": self.issued_at}


def verify_receipt(receipt: bytes, *, input: bytes | list[bytes], output: bytes | list[bytes],
                   nonce: bytes,
                   root: x509.Certificate, expected_ueid: bytes | None = None,
                   expected_measurement: bytes | None = None,
                   now: datetime.datetime | None = None) -> ReceiptResult:
    """Check a job receipt against the input, the output and the nonce the caller holds; for
    a batch job's receipt, the lists of inputs and outputs, in order.

    Checks: ``format``, ``certificate-validity``, ``chain``, ``signature`` (as for evidence),
    ``profile``, ``input``, ``output``, ``nonce``, ``device`` (``expected_ueid``) and
    ``applet`` (``expected_measurement``), each named in VerificationError.check.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    payload, _, device_id = signed_by_zone(receipt, root, now)
    if payload.get(receipt_claims.PROFILE_KEY) != receipt_claims.PROFILE:
        raise VerificationError("profile", "not a SEZ job receipt")
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
        issued_at=int(payload.get(receipt_claims.IAT, 0)))
