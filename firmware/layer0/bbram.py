"""Battery-backed RAM: the zone's persistent state, on a raw virtio-blk disk (/dev/vda).

The disk holds two slots; each slot is a header and the state (one CBOR map) sealed with
AES-256-GCM under a key derived from the CDI::

    slot = "SZBB" | version u8 | 3 zero bytes | seq u64 | length u32 | nonce (12) | ciphertext
    AAD  = the header up to the nonce          (seq, length and version are authenticated)

A commit writes the slot that does *not* hold the newest state, with seq + 1, flushes it to the
disk, drops it from the page cache and reads it back: only if the disk holds exactly the sealed
record is it the newest. A power cut at any moment leaves the previous slot intact, so loading picks the
authentic slot with the highest seq and never sees a half-written state as valid.

Loading answers a status: ``fresh`` (both slots blank: a new device), ``ok``, or
``unauthenticated`` (data present, no slot authenticates: another firmware's key, or damage).
An unauthenticated BBRAM is reported and left alone, never silently reset.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..abi.device import BBRAM_SLOT_SIZE as SLOT_SIZE
from ..abi.errors import BbramError
from ..abi.evidence import BbramStatus

DEVICE = "/dev/vda"
MAGIC = b"SZBB"
VERSION = 1
_HEADER = struct.Struct(">4sB3xQI")
_NONCE = 12
_TAG = 16
MAX_STATE = SLOT_SIZE - _HEADER.size - _NONCE - _TAG
FRESH, OK, UNAUTHENTICATED, ABSENT = (BbramStatus.FRESH, BbramStatus.OK,
                                      BbramStatus.UNAUTHENTICATED, BbramStatus.ABSENT)


class Bbram:
    def __init__(self, key: bytes, path: str = DEVICE) -> None:
        self._aead = AESGCM(key)
        self.path = path
        self.seq = 0
        self.slot = 1  # the slot holding the newest state (the first commit goes to slot 0)
        self.status = ABSENT

    def _open(self, flags: int) -> int:
        return os.open(self.path, flags | os.O_CLOEXEC)

    def _decode(self, raw: bytes) -> tuple[int, Any] | None:
        """(seq, state) if ``raw`` is an authentic slot, else None."""
        if len(raw) < _HEADER.size + _NONCE + _TAG:
            return None
        magic, version, seq, length = _HEADER.unpack_from(raw)
        if magic != MAGIC or version != VERSION or length > MAX_STATE + _TAG:
            return None
        start = _HEADER.size + _NONCE
        try:
            plain = self._aead.decrypt(raw[_HEADER.size:start], raw[start:start + length],
                                       raw[:_HEADER.size])
        except InvalidTag:  # another firmware's key, or damage
            return None
        try:
            return seq, cbor2.loads(plain)
        except (cbor2.CBORDecodeError, ValueError, TypeError):  # authentic, yet unreadable
            return None

    def load(self) -> dict[str, Any]:
        """The newest authentic state ({} when fresh); sets ``status``, ``seq``, ``slot``."""
        try:
            fd = self._open(os.O_RDONLY)
        except OSError:
            self.status = ABSENT
            return {}
        try:
            slots = [os.pread(fd, SLOT_SIZE, i * SLOT_SIZE) for i in (0, 1)]
        finally:
            os.close(fd)
        decoded = [self._decode(raw) for raw in slots]
        best = max(((d[0], i, d[1]) for i, d in enumerate(decoded) if d is not None),
                   default=None, key=lambda t: t[0])
        if best is None:
            blank = all(not any(raw[:_HEADER.size + _NONCE]) for raw in slots)
            self.status = FRESH if blank else UNAUTHENTICATED
            return {}
        self.seq, self.slot, state = best
        self.status = OK
        return dict(state)

    def commit(self, plain: bytes) -> int:
        """Make ``plain`` (the state, CBOR-encoded by the caller) the newest state, durably;
        return its seq. BbramError if it cannot."""
        if self.status in (UNAUTHENTICATED, ABSENT):
            raise BbramError(f"BBRAM is {self.status}: refusing to overwrite it")
        if len(plain) > MAX_STATE:
            raise BbramError(f"state of {len(plain)} bytes exceeds the {MAX_STATE}-byte slot")
        seq = self.seq + 1
        slot = 1 - self.slot
        header = _HEADER.pack(MAGIC, VERSION, seq, len(plain) + _TAG)
        nonce = os.urandom(_NONCE)
        record = header + nonce + self._aead.encrypt(nonce, plain, header)
        offset = slot * SLOT_SIZE
        try:
            fd = self._open(os.O_RDWR)
            try:
                os.pwrite(fd, record, offset)
                os.fdatasync(fd)
                os.posix_fadvise(fd, offset, len(record), os.POSIX_FADV_DONTNEED)
                back = os.pread(fd, len(record), offset)
            finally:
                os.close(fd)
        except OSError as exc:
            raise BbramError(f"BBRAM write failed: {exc}") from exc
        if back != record:  # the disk holds exactly the sealed record, or nothing changed
            raise BbramError("BBRAM read-back differs from what was written; the previous "
                             "state stands")
        self.seq, self.slot, self.status = seq, slot, OK
        return seq


def wipe(path: str = DEVICE) -> None:
    """Overwrite both slots with zeros, durably (the tamper response): what was sealed in them
    is gone, and the next boot finds a blank BBRAM. Best effort: a disk that fails stays as it
    is, and the keys that could open it are gone anyway."""
    zeros = bytes(1 << 20)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for offset in range(0, 2 * SLOT_SIZE, len(zeros)):
            os.pwrite(fd, zeros, offset)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 2 * SLOT_SIZE, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
