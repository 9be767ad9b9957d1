"""How SEZ names a public key: the SHA-256 of its SubjectPublicKeyInfo (DER).

That digest is a COSE ``kid`` (the owner's signatures, the audit log's entries), the evidence's
``sez.owner`` claim, and the owner fingerprint ``sez`` prints. Runs in the guest and on the
host. ``key_id`` needs only hashlib: the monitor, which holds no key, uses it without importing
the crypto libraries (an import that costs its boot under TCG).
"""

from __future__ import annotations

import hashlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["spki", "key_id"]


def spki(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    """The SubjectPublicKeyInfo (DER) of ``key`` (of its public half, for a private key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(spki_der: bytes) -> bytes:
    """The key's id: SHA-256 of its SubjectPublicKeyInfo (DER)."""
    return hashlib.sha256(spki_der).digest()
