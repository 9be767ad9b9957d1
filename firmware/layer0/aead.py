"""The blob layout layer 0's sealers share (firmware.layer0.sealing, firmware.layer0.secrets)::

    blob = header | nonce (12) | AES-256-GCM ciphertext
    AAD  = header | what else the blob is bound to

Runs in the guest: cryptography only.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["NONCE", "OVERHEAD", "seal", "open_blob"]

NONCE = 12
#: Bytes a blob holds beyond its header and data: the nonce and the GCM tag.
OVERHEAD = NONCE + 16


def seal(aead: AESGCM, header: bytes, bound: bytes, data: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return header + nonce + aead.encrypt(nonce, data, header + bound)


def open_blob(aead: AESGCM, blob: bytes, header_size: int, bound: bytes) -> bytes:
    """The data of ``blob``, whose header is ``header_size`` bytes; InvalidTag if it does not
    authenticate under ``aead`` with ``bound``."""
    header, nonce = blob[:header_size], blob[header_size:header_size + NONCE]
    return aead.decrypt(nonce, blob[header_size + NONCE:], header + bound)
