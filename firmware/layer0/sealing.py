"""Sealing for applets: blobs only the applet that sealed them (or a later version of it) can
open, on this device, under this owner. The untrusted host may keep them and hand them back.

    blob = "SZSL" | format u8 | applet version u32 | nonce (12) | AES-256-GCM ciphertext
    AAD  = the blob's header (up to the nonce) | UEID | owner key id | applet name

The key is firmware.abi.dice.sealing_key(seal root, owner, name, version): version ``v`` of an
applet derives the keys of versions 1..v, so it opens what its older versions sealed; an older
version cannot derive a newer one's key (and rollback protection keeps it from being loaded
again anyway). A blob of another device, owner or applet, or a changed one, fails
authentication: ``BadBlob``, which says no more than that.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..abi import dice
from ..abi.applet import SEAL_MAX
from ..abi.errors import BadArgs, BadBlob

__all__ = ["Sealer"]

MAGIC = b"SZSL"
FORMAT = 1
_HEADER = struct.Struct(">4sBI")
_NONCE = 12
_TAG = 16


class Sealer:
    def __init__(self, root: bytes, ueid: bytes) -> None:
        self._root = root
        self._ueid = ueid

    def _aead(self, owner: bytes, name: str, version: int) -> AESGCM:
        return AESGCM(dice.sealing_key(self._root, owner, name, version))

    def _aad(self, header: bytes, owner: bytes, name: str) -> bytes:
        return header + self._ueid + owner + name.encode()

    def seal(self, owner: bytes, name: str, version: int, data: bytes) -> bytes:
        if len(data) > SEAL_MAX:
            raise BadArgs(f"an applet seals at most {SEAL_MAX} bytes at once, not {len(data)}")
        header = _HEADER.pack(MAGIC, FORMAT, version)
        nonce = os.urandom(_NONCE)
        return header + nonce + self._aead(owner, name, version).encrypt(
            nonce, data, self._aad(header, owner, name))

    def unseal(self, owner: bytes, name: str, version: int, blob: bytes) -> bytes:
        if len(blob) < _HEADER.size + _NONCE + _TAG or len(blob) > SEAL_MAX + 64:
            raise BadBlob("not a sealed blob")
        magic, fmt, sealed_by = _HEADER.unpack_from(blob)
        if magic != MAGIC or fmt != FORMAT:
            raise BadBlob("not a sealed blob")
        if not 1 <= sealed_by <= version:
            raise BadBlob(f"sealed by version {sealed_by} of the applet; this is version "
                          f"{version}, which opens only its own and older versions' blobs")
        header, nonce = blob[:_HEADER.size], blob[_HEADER.size:_HEADER.size + _NONCE]
        try:
            return self._aead(owner, name, sealed_by).decrypt(
                nonce, blob[_HEADER.size + _NONCE:], self._aad(header, owner, name))
        except InvalidTag:
            raise BadBlob("the blob does not open: another device, owner or applet sealed it, "
                          "or it was changed") from None
