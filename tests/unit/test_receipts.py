"""Receipts signed together (firmware.abi.receipt): layer 0's tree and one signature, the host's
inclusion check, and what a changed unprotected header gets."""

from __future__ import annotations

import os

import cbor2
import pytest

from emulator.factory import Factory
from firmware.abi import cose
from firmware.abi import receipt as receipt_claims
from host_driver.verifier import VerificationError, verify_receipt

from .conftest import Zone


def job(n: int) -> tuple[dict[str, object], bytes, bytes, bytes]:
    """A job's claims as the monitor makes them, and its input, output and nonce."""
    data, output, nonce = os.urandom(10), os.urandom(20), f"n{n}".encode()
    claims = {receipt_claims.JOB: str(n), receipt_claims.JOB_COUNTER: n,
              receipt_claims.APPLET: {"name": "a", "version": 1, "measurement": bytes(48)},
              receipt_claims.INPUT: receipt_claims.digest(data),
              receipt_claims.OUTPUT: receipt_claims.digest(output), receipt_claims.NONCE: nonce}
    return claims, data, output, nonce


def with_leaf(receipt: bytes, index: int, path: list[bytes], leaf: bytes) -> bytes:
    """``receipt`` with another unprotected header (which its signature does not cover)."""
    tagged = cbor2.loads(receipt)
    tagged.value[1] = {receipt_claims.LEAF: receipt_claims.proof(index, path, leaf)}
    return bytes(cbor2.dumps(tagged))


@pytest.mark.parametrize("count", [1, 2, 7, 16])
def test_jobs_signed_together_each_verify_alone(zone: Zone, factory: Factory,
                                                count: int) -> None:
    jobs = [job(n) for n in range(count)]
    receipts = zone.identity.receipts([claims for claims, *_ in jobs])
    assert len({cose.decode_sign1(r).signature for r in receipts}) == 1  # one signature
    for n, (receipt, (_, data, output, nonce)) in enumerate(zip(receipts, jobs)):
        checked = verify_receipt(receipt, input=data, output=output, nonce=nonce,
                                 root=factory.root_cert())
        assert (checked.job_counter, checked.signed_together) == (n, count)
        with pytest.raises(VerificationError) as failure:  # another job's input
            verify_receipt(receipt, input=jobs[n - 1][1] + b"x", output=output, nonce=nonce,
                           root=factory.root_cert())
        assert failure.value.check == "input"


def test_a_changed_leaf_index_or_path_fails_inclusion(zone: Zone, factory: Factory) -> None:
    jobs = [job(n) for n in range(5)]
    receipts = zone.identity.receipts([claims for claims, *_ in jobs])
    index, path, leaf, claims = receipt_claims.parse_proof(
        cose.decode_sign1(receipts[2]).unprotected[receipt_claims.LEAF])
    _, data, output, nonce = jobs[2]
    forged_output = os.urandom(20)
    changed = {**claims, receipt_claims.OUTPUT: receipt_claims.digest(forged_output)}
    for receipt, out in ((with_leaf(receipts[2], index, path, cbor2.dumps(changed)), forged_output),
                         (with_leaf(receipts[2], 3, path, leaf), output),
                         (with_leaf(receipts[2], index, path[:-1], leaf), output),
                         (with_leaf(receipts[2], index, [bytes(48)] + path[1:], leaf), output)):
        with pytest.raises(VerificationError) as failure:
            verify_receipt(receipt, input=data, output=out, nonce=nonce, root=factory.root_cert())
        assert failure.value.check == "inclusion"
    for header in ({}, {receipt_claims.LEAF: b"\xff"}, {receipt_claims.LEAF: cbor2.dumps([1])}):
        tagged = cbor2.loads(receipts[2])
        tagged.value[1] = header
        with pytest.raises(VerificationError) as failure:
            verify_receipt(cbor2.dumps(tagged), input=data, output=output, nonce=nonce,
                           root=factory.root_cert())
        assert failure.value.check == "format"


def test_a_leaf_may_not_set_the_zones_claims(zone: Zone) -> None:
    claims, *_ = job(0)
    with pytest.raises(ValueError, match="layer 0's claims"):
        zone.identity.receipts([claims, {**claims, 256: b"another device"}])
    with pytest.raises(ValueError, match="1 to 256"):
        zone.identity.receipts([claims] * 257)
