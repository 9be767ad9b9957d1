"""COSE_Sign1 (RFC 9052) with ES384, the signature format of evidence and receipts.

    COSE_Sign1 = #6.18([protected: bstr .cbor {1: -35, 33: x5chain?}, unprotected: {* any},
                        payload: bstr, signature: bstr (r || s, 48 + 48 bytes)])

Signed over ``["Signature1", protected, b"", payload]``. The certificate chain (alias, then
DeviceID) travels in the protected header as ``x5chain`` (label 33, RFC 9360), so the chain is
covered by the signature. Any COSE library can check these messages (the tests use pycose).
A message to decode may come from anyone (the host hands the zone owner-signed documents to
check): it is checked against small limits first (abi.wellformed: only tag 18, shallow, few
items). Runs in the guest and on the host: cbor2 and cryptography only.
"""

from __future__ import annotations

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from . import wellformed
from .errors import SezError

__all__ = ["Sign1", "sign1", "sign1_each", "decode_sign1", "COSE_SIGN1_TAG", "ALG_ES384", "HDR_ALG",
           "HDR_KID", "HDR_X5CHAIN", "CoseError"]

COSE_SIGN1_TAG = 18
HDR_ALG = 1
HDR_KID = 4
HDR_X5CHAIN = 33
ALG_ES384 = -35
_COORD = 48  # P-384 scalar size
#: A COSE_Sign1 as this module makes them: four items, the chain in the protected header.
_MESSAGE = wellformed.Limits(items=64, depth=4, tags=frozenset({COSE_SIGN1_TAG}))
_HEADER = wellformed.Limits(items=64, depth=4)


class CoseError(SezError):
    """A COSE_Sign1 message that is malformed or whose signature does not verify."""


class Sign1:
    """A decoded COSE_Sign1 message (signature not yet checked: call ``verify``)."""

    def __init__(self, protected: bytes, headers: dict[int, object], payload: bytes,
                 signature: bytes, unprotected: dict[object, object] | None = None) -> None:
        self.protected = protected
        self.headers = headers
        #: The unprotected header: not covered by the signature.
        self.unprotected = unprotected or {}
        self.payload = payload
        self.signature = signature

    @property
    def x5chain(self) -> list[bytes]:
        chain = self.headers.get(HDR_X5CHAIN)
        if isinstance(chain, bytes):
            return [chain]
        if isinstance(chain, list) and chain and all(isinstance(c, bytes) for c in chain):
            return list(chain)
        raise CoseError("no x5chain (label 33) in the protected header")

    def verify(self, key: ec.EllipticCurvePublicKey) -> None:
        """Raise CoseError unless ``key`` made the signature. Returns None on success."""
        if self.headers.get(HDR_ALG) != ALG_ES384:
            raise CoseError(f"algorithm {self.headers.get(HDR_ALG)!r:.40} is not ES384 (-35)")
        if not isinstance(key.curve, ec.SECP384R1):
            raise CoseError("ES384 needs a P-384 key")
        if len(self.signature) != 2 * _COORD:
            raise CoseError(f"an ES384 signature is 96 bytes, not {len(self.signature)}")
        r = int.from_bytes(self.signature[:_COORD], "big")
        s = int.from_bytes(self.signature[_COORD:], "big")
        try:
            key.verify(encode_dss_signature(r, s), _to_be_signed(self.protected, self.payload),
                       ec.ECDSA(hashes.SHA384()))
        except Exception as exc:  # cryptography's InvalidSignature, or a malformed point
            raise CoseError("COSE_Sign1 signature does not verify") from exc


def _to_be_signed(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sign1(payload: bytes, key: ec.EllipticCurvePrivateKey, *, x5chain: list[bytes] | None = None,
          kid: bytes | None = None) -> bytes:
    """A tagged COSE_Sign1 over ``payload``, by ``key``, carrying ``x5chain`` or ``kid``."""
    return sign1_each(payload, key, [{}], x5chain=x5chain, kid=kid)[0]


def sign1_each(payload: bytes, key: ec.EllipticCurvePrivateKey,
               unprotected: list[dict[object, object]], *, x5chain: list[bytes] | None = None,
               kid: bytes | None = None) -> list[bytes]:
    """One signature over ``payload`` (as ``sign1``), in one tagged COSE_Sign1 for each of
    the ``unprotected`` headers (which the signature does not cover)."""
    headers: dict[int, object] = {HDR_ALG: ALG_ES384}
    if x5chain is not None:
        headers[HDR_X5CHAIN] = x5chain
    if kid is not None:
        headers[HDR_KID] = kid
    protected = cbor2.dumps(headers)
    der = key.sign(_to_be_signed(protected, payload), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")
    return [cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, header, payload, signature]))
            for header in unprotected]


def decode_sign1(data: bytes) -> Sign1:
    """Parse a (tagged or untagged) COSE_Sign1; CoseError if it is not one."""
    try:
        item = wellformed.loads(data, _MESSAGE)
    except (wellformed.Malformed, TypeError) as exc:
        raise CoseError(f"not CBOR: {exc}") from exc
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise CoseError(f"CBOR tag {item.tag} is not COSE_Sign1 (18)")
        item = item.value
    if not (isinstance(item, list) and len(item) == 4):
        raise CoseError("COSE_Sign1 is an array of four items")
    protected, unprotected, payload, signature = item
    if not (isinstance(protected, bytes) and isinstance(unprotected, dict)
            and isinstance(payload, bytes) and isinstance(signature, bytes)):
        raise CoseError("COSE_Sign1 items have the wrong types")
    try:
        headers = wellformed.loads(protected, _HEADER) if protected else {}
    except wellformed.Malformed as exc:
        raise CoseError(f"protected header is not CBOR: {exc}") from exc
    if not isinstance(headers, dict):
        raise CoseError("protected header is not a map")
    return Sign1(protected, headers, payload, signature, unprotected)
