"""Sealing for applets: blobs only the applet that sealed them (or a later version of it) can
open, on this device, under this owner. The untrusted host may keep them and hand them back.

    blob = "SZSL" | format u8 | applet version u32 | nonce (12) | AES-256-GCM ciphertext
    AAD  = the blob's header (up to the nonce) | UEID | owner key id | applet name

(the layout firmware.layer0.aead makes and opens)

The key is firmware.abi.dice.sealing_key(seal root, owner, name, version): version ``v`` of an
applet derives the keys of versions 1..v, so it opens what its older versions sealed; an older
version cannot derive a newer one's key (and rollback protection keeps it from being loaded
again anyway). A blob of another device, owner or applet, or a changed one, fails
authentication: ``BadBlob``, which says no more than that.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..abi import dice
from ..abi.applet import SEAL_MAX
from ..abi.errors import BadArgs, BadBlob
from .aead import OVERHEAD, open_blob, seal

__all__ = ["Sealer"]

MAGIC = b"SZSL"
FORMAT = 1
_HEADER = struct.Struct(">4sBI")


class Sealer:
    def __init__(self, root: bytes, ueid: bytes) -> None:
        self._root = root
        self._ueid = ueid

    def _aead(self, owner: bytes, name: str, version: int) -> AESGCM:
        return AESGCM(dice.sealing_key(self._root, owner, name, version))

    def _bound(self, owner: bytes, name: str) -> bytes:
        return self._ueid + owner + name.encode()

    def seal(self, owner: bytes, name: str, version: int, data: bytes) -> bytes:
        if len(data) > SEAL_MAX:
            raise BadArgs(f"an applet seals at most {SEAL_MAX} bytes at once, not {len(data)}")
        return seal(self._aead(owner, name, version), _HEADER.pack(MAGIC, FORMAT, version),
                    self._bound(owner, name), data)

    def unseal(self, owner: bytes, name: str, version: int, blob: bytes) -> bytes:
        if len(blob) < _HEADER.size + OVERHEAD or len(blob) > SEAL_MAX + 64:
            raise BadBlob("not a sealed blob")
        magic, fmt, sealed_by = _HEADER.unpack_from(blob)
        if magic != MAGIC or fmt != FORMAT:
            raise BadBlob("not a sealed blob")
        if not 1 <= sealed_by <= version:
            raise BadBlob(f"sealed by version {sealed_by} of the applet; this is version "
                          f"{version}, which opens only its own and older versions' blobs")
        try:
            return open_blob(self._aead(owner, name, sealed_by), blob, _HEADER.size,
                             self._bound(owner, name))
        except InvalidTag:
            raise BadBlob("the blob does not open: another device, owner or applet sealed it, "
                          "or it was changed") from None
