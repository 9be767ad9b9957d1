"""Battery-backed RAM: the zone's persistent state, on a raw virtio-blk disk (/dev/vda).

The state is kept as a checkpoint and a log of changes since it, so that a change costs what
it changes, not the size of the whole state. The disk holds two checkpoint slots, then the
log (geometry: abi.device). Every record is sealed with AES-256-GCM under a key derived from
the CDI, and starts with a header the AEAD authenticates::

    record = magic (4) | version u8 | 3 zero bytes | seq u64 | length u32 | nonce (12) | ciphertext
    AAD    = the header up to the nonce          (magic, seq, length and version are authenticated)

A checkpoint (magic ``SZBB``) holds the whole state, one CBOR map, at seq S. A log record
(magic ``SZBL``) holds one change (the monitor's delta, one CBOR map: firmware.monitor.state);
records start at BLOCK-aligned offsets of the log, so a record never shares a block with the
one before it, and their seqs run S+1, S+2, ... from the log's start. Loading takes the
authentic checkpoint with the highest seq and the log's records for as long as each is
authentic and carries the next seq: the first that is not ends the log. Seqs only grow, so a
record left over from before the newest checkpoint (seq <= S) is never taken.

Every write goes to the disk, is flushed, dropped from the page cache and read back: only if
the disk holds exactly the sealed record is it the newest.

* A change (``append``) writes a log record after the last one.
* A checkpoint (``commit``), when the log is full or the device new, writes the slot that
  does *not* hold the newest checkpoint, with the newest seq + 1, and starts the log afresh;
  until it is read back whole, the previous checkpoint and the log still hold the state.

A power cut at any moment thus leaves the state of the last write that completed. Loading
answers a status: ``fresh`` (both slots blank: a new device), ``ok``, or ``unauthenticated``
(data present, no slot authenticates: another firmware's key, or damage). An unauthenticated
BBRAM is reported and left alone, never silently reset.
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..abi.device import BBRAM_LOG_SIZE as LOG_SIZE
from ..abi.device import BBRAM_SIZE
from ..abi.device import BBRAM_SLOT_SIZE as SLOT_SIZE
from ..abi.errors import BbramError
from ..abi.evidence import BbramStatus

DEVICE = "/dev/vda"
CHECKPOINT, CHANGE = b"SZBB", b"SZBL"
VERSION = 1
_HEADER = struct.Struct(">4sB3xQI")
_NONCE = 12
_TAG = 16
#: What sealing adds to a record's plaintext.
OVERHEAD = _HEADER.size + _NONCE + _TAG
MAX_STATE = SLOT_SIZE - OVERHEAD
#: Log records start at multiples of this (the page: the unit the page cache drops and reads).
BLOCK = 4096
#: The largest change the log takes: a larger one is committed as a checkpoint. It keeps every
#: message that carries changes between the monitor and layer 0 small (firmware.layer0.keeper).
CHANGE_MAX = 1 << 20
LOG_START = 2 * SLOT_SIZE
FRESH, OK, UNAUTHENTICATED, ABSENT = (BbramStatus.FRESH, BbramStatus.OK,
                                      BbramStatus.UNAUTHENTICATED, BbramStatus.ABSENT)


class Bbram:
    def __init__(self, key: bytes, path: str = DEVICE) -> None:
        self._aead = AESGCM(key)
        self.path = path
        self.seq = 0
        self.slot = 1  # the slot holding the newest checkpoint (the first goes to slot 0)
        self.status = ABSENT
        self.tail = 0  # where in the log the next record goes; 0: the log is empty
        self.has_log = False  # whether the disk has room for a log (older disks do not)
        self.change_sizes: list[int] = []  # of each change the last load read (CBOR bytes)

    def _open(self, flags: int) -> int:
        return os.open(self.path, flags | os.O_CLOEXEC)

    def _decode(self, raw: bytes, magic: bytes) -> tuple[int, Any, int] | None:
        """(seq, CBOR content, its size in bytes) if ``raw`` starts with an authentic ``magic``
        record, else None."""
        if len(raw) < OVERHEAD:
            return None
        found, version, seq, length = _HEADER.unpack_from(raw)
        if found != magic or version != VERSION or not _TAG <= length <= len(raw) - OVERHEAD + _TAG:
            return None
        start = _HEADER.size + _NONCE
        try:
            plain = self._aead.decrypt(raw[_HEADER.size:start], raw[start:start + length],
                                       raw[:_HEADER.size])
        except InvalidTag:  # another firmware's key, damage, or a torn write
            return None
        try:
            content = cbor2.loads(plain)
        except (cbor2.CBORDecodeError, ValueError, TypeError):  # authentic, yet unreadable
            return None
        return (seq, content, len(plain)) if isinstance(content, dict) else None

    def _seal(self, magic: bytes, seq: int, plain: bytes) -> bytes:
        header = _HEADER.pack(magic, VERSION, seq, len(plain) + _TAG)
        nonce = os.urandom(_NONCE)
        return header + nonce + self._aead.encrypt(nonce, plain, header)

    def load(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The newest authentic checkpoint ({} when fresh) and the changes logged since, in
        order; sets ``status``, ``seq``, ``slot``, ``change_sizes`` and where the log goes
        on."""
        self.change_sizes = []
        try:
            fd = self._open(os.O_RDONLY)
        except OSError:
            self.status = ABSENT
            return {}, []
        try:
            slots = [os.pread(fd, SLOT_SIZE, i * SLOT_SIZE) for i in (0, 1)]
            self.has_log = _size(fd) >= BBRAM_SIZE
            decoded = [self._decode(raw, CHECKPOINT) for raw in slots]
            best = max(((d[0], i, d[1]) for i, d in enumerate(decoded) if d is not None),
                       default=None, key=lambda t: t[0])
            if best is None:
                blank = all(not any(raw[:OVERHEAD]) for raw in slots)
                self.status = FRESH if blank else UNAUTHENTICATED
                self.tail = 0
                return {}, []
            self.seq, self.slot, state = best
            self.status = OK
            changes = self._read_log(fd) if self.has_log else []
        finally:
            os.close(fd)
        return dict(state), changes

    def _read_log(self, fd: int) -> list[dict[str, Any]]:
        """The log's records that follow the checkpoint (seq + 1, + 2, ...); moves ``seq`` and
        ``tail`` past the last of them."""
        changes: list[dict[str, Any]] = []
        self.tail = 0
        while self.tail + OVERHEAD <= LOG_SIZE:
            offset = LOG_START + self.tail
            raw = os.pread(fd, BLOCK, offset)
            if len(raw) < _HEADER.size:
                break
            magic, _, seq, length = _HEADER.unpack_from(raw)
            size = _HEADER.size + _NONCE + length
            if magic != CHANGE or seq != self.seq + 1 or size > LOG_SIZE - self.tail:
                break
            if size > len(raw):
                raw = os.pread(fd, size, offset)
            decoded = self._decode(raw, CHANGE)
            if decoded is None:
                break
            self.seq = seq
            changes.append(decoded[1])
            self.change_sizes.append(decoded[2])
            self.tail += _blocks(size)
        return changes

    @property
    def room(self) -> int:
        """The largest change (CBOR bytes) the log takes now, at most CHANGE_MAX; 0 when the
        next write must be a checkpoint (a new device, or a disk too small for a log)."""
        if self.status != OK or not self.has_log:
            return 0
        return max(0, min(CHANGE_MAX, LOG_SIZE - self.tail - OVERHEAD))

    def commit(self, plain: bytes) -> int:
        """Make ``plain`` (the whole state, CBOR-encoded by the caller) the newest checkpoint,
        durably, and start the log afresh; return its seq. BbramError if it cannot."""
        self._writable()
        if len(plain) > MAX_STATE:
            raise BbramError(f"state of {len(plain)} bytes exceeds the {MAX_STATE}-byte slot")
        seq, slot = self.seq + 1, 1 - self.slot
        self._write(slot * SLOT_SIZE, self._seal(CHECKPOINT, seq, plain))
        self.seq, self.slot, self.status, self.tail = seq, slot, OK, 0
        return seq

    def append(self, change: bytes) -> int:
        """Log ``change`` (a CBOR map the caller encoded) after the newest state, durably;
        return its seq. BbramError if it cannot, or if the log has no room for it (then the
        caller commits a checkpoint instead)."""
        self._writable()
        if len(change) > self.room:
            raise BbramError(f"a change of {len(change)} bytes does not fit the log "
                             f"({self.room} bytes left): commit a checkpoint")
        seq = self.seq + 1
        record = self._seal(CHANGE, seq, change)
        self._write(LOG_START + self.tail, record)
        self.seq, self.tail = seq, self.tail + _blocks(len(record))
        return seq

    def _writable(self) -> None:
        if self.status in (UNAUTHENTICATED, ABSENT):
            raise BbramError(f"BBRAM is {self.status}: refusing to overwrite it")

    def _write(self, offset: int, record: bytes) -> None:
        """Write ``record`` at ``offset``, flush it, and check that the disk holds it."""
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


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _size(fd: int) -> int:
    """The disk's size (for a block device, fstat says 0)."""
    return os.lseek(fd, 0, os.SEEK_END)


def wipe(path: str = DEVICE) -> None:
    """Zero the slots and the log, durably (the tamper response): what was sealed in them is
    gone, and the next boot finds a blank BBRAM. The disk zeroes itself (BLKZEROOUT: virtio-blk's
    write-zeroes, no data to move), else zeros are written. Best effort: a disk that fails
    stays as it is, and the keys that could open it are gone anyway."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        size = min(_size(fd), BBRAM_SIZE)
        try:
            fcntl.ioctl(fd, _BLKZEROOUT, struct.pack("=QQ", 0, size))
        except OSError:  # not a block device (a file, in tests), or no write-zeroes
            zeros = bytes(1 << 20)
            for offset in range(0, size, len(zeros)):
                os.pwrite(fd, zeros[:size - offset], offset)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


#: linux/fs.h: _IO(0x12, 127), zero a byte range of a block device: {start, length} (u64).
_BLKZEROOUT = 0x127F
