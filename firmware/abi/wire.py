"""The channel's wire format, shared by the zone and the host driver (docs/architecture.md).

A message (one CBOR item) travels as one or more frames, each an 8-byte header and at most
CHUNK bytes of the message::

    +------+---------+------------+----------------+-------------------------+
    | "SZ" | version | more| kind | length (u32 BE)| chunk (<= CHUNK bytes)  |
    +------+---------+------------+----------------+-------------------------+
      2 B     1 B        1 B            4 B              length bytes

The first frame of a message carries its kind (request, response, event), the others
``CONTINUATION``; every frame but the last has the ``MORE`` bit (0x80) set. Frames of two
messages never interleave. Messages are ``{id, op, args}`` requests, ``{id, ok: true,
result}`` or ``{id, ok: false, error: {code, message}}`` responses, and ``{event, ...}``
events; one may be up to ``max_payload`` bytes (MAX_PAYLOAD: 16 MiB) long.

Because no frame is longer than CHUNK, a new host session can always find the frame boundary
again, whatever an earlier host left half-sent: it starts with :data:`BREAK`, CHUNK + 8 zero
bytes. They complete any frame the zone was still reading (zeros hold no frame header, and
zero bytes between frames are padding, skipped silently), and the next message start discards
a message left unfinished (``truncated-frame``). So a new host's ``hello`` is read as soon as it arrives, by
construction.

:class:`FrameDecoder` turns any byte stream into messages and :class:`Fault` items, never an
exception: bytes that are not a header are skipped until the next one (one ``bad-frame`` fault
per run of garbage that is not all zeros), a header announcing more than CHUNK bytes is skipped
(``frame-too-large``), a message growing past the maximum is dropped (``frame-too-large``),
one cut short by the start of another is dropped (``truncated-frame``), a continuation of no
message is dropped (``bad-frame``), and a message that is not exactly one CBOR item becomes
``bad-cbor``. A decoder given :class:`~firmware.abi.wellformed.Limits` (the zone's, for what a
host, a session or an applet sends) also makes ``bad-cbor`` of an item past them: semantic
tags, deep nesting, too many items (abi.wellformed says why). An error message on the wire is
at most MESSAGE_MAX characters. This module runs inside the guest: standard library and cbor2
only.
"""

from __future__ import annotations

import enum
import io
import struct

import cbor2

from .errors import Code
from .wellformed import Limits, Malformed, check

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Union

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER",
    "CHUNK",
    "MORE",
    "BREAK",
    "MAX_PAYLOAD",
    "MESSAGE_MAX",
    "Kind",
    "Frame",
    "Fault",
    "FrameDecoder",
    "FrameEncoder",
    "encode_frame",
    "encode_request",
    "frames_of",
]

MAGIC = b"SZ"
VERSION = 2
HEADER = struct.Struct(">2sBBI")
#: Largest chunk one frame carries.
CHUNK = 64 * 1024
#: Kind-byte bit: another frame of this message follows.
MORE = 0x80
#: What a new host session sends first: it ends any frame an earlier host left half-sent.
BREAK = bytes(CHUNK + HEADER.size)
#: Largest message either side accepts (and the zone advertises in ``hello``).
MAX_PAYLOAD = 16 * 1024 * 1024
#: Longest error message either side puts on the wire (characters; the rest is cut).
MESSAGE_MAX = 1000


class Kind(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    EVENT = 3
    CONTINUATION = 4  # the second and later frames of a message


_KIND = {int(k): k for k in Kind}


class Frame:
    """One decoded message: its kind and its CBOR payload."""

    __slots__ = ("kind", "payload")

    def __init__(self, kind: Kind, payload: Any) -> None:
        self.kind = kind
        self.payload = payload

    def __repr__(self) -> str:
        return f"Frame({self.kind.name}, {self.payload!r})"


class Fault:
    """Input that was not a message: what was wrong and how many bytes were dropped."""

    __slots__ = ("code", "message", "dropped")

    def __init__(self, code: str, message: str, dropped: int) -> None:
        self.code = code
        self.message = message
        self.dropped = dropped

    def __repr__(self) -> str:
        return f"Fault({self.code!r}, {self.message!r}, dropped={self.dropped})"


if TYPE_CHECKING:
    Item = Union[Frame, Fault]


def encode_frame(kind: Kind, payload: Any, max_payload: int = MAX_PAYLOAD) -> bytes:
    """``payload`` as one message of ``kind``: its frames, joined."""
    return b"".join(frames_of(kind, cbor2.dumps(payload), max_payload))


def encode_request(request_id: int, op: str, args: Any) -> bytes:
    return encode_frame(Kind.REQUEST, {"id": request_id, "op": op, "args": args})


def frames_of(kind: int, body: bytes, max_payload: int = MAX_PAYLOAD) -> list[bytes | memoryview]:
    """Header, chunk, header, chunk … of one message (chunks are views of ``body``)."""
    size = len(body)
    if size > max_payload:
        raise ValueError(f"payload of {size} bytes exceeds the maximum of {max_payload}")
    if size <= CHUNK:
        return [HEADER.pack(MAGIC, VERSION, kind, size), body]
    parts: list[bytes | memoryview] = []
    view = memoryview(body)
    for start in range(0, size, CHUNK):
        chunk = view[start:start + CHUNK]
        more = MORE if start + CHUNK < size else 0
        parts += [HEADER.pack(MAGIC, VERSION, more | kind, len(chunk)), chunk]
        kind = Kind.CONTINUATION
    return parts


class FrameEncoder:
    """Encodes messages with one reused CBOR encoder (3x faster than ``cbor2.dumps`` each).

    Not thread-safe: each channel end (the monitor, each client) owns one.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._stream = io.BytesIO()
        self._encoder = cbor2.CBOREncoder(self._stream)

    def parts(self, kind: int, payload: Any) -> list[bytes | memoryview]:
        """The message's frames as header, chunk, header, chunk …: large bodies are not
        copied (write them with one writev)."""
        stream = self._stream
        stream.seek(0)
        stream.truncate()
        self._encoder.encode(payload)
        return frames_of(kind, stream.getvalue(), self.max_payload)

    def frame(self, kind: int, payload: Any) -> bytes:
        return b"".join(self.parts(kind, payload))

    def request(self, request_id: int, op: str, args: Any) -> bytes:
        return self.frame(Kind.REQUEST, {"id": request_id, "op": op, "args": args})

    def response(self, request_id: Any, result: Any) -> list[bytes | memoryview]:
        return self.parts(Kind.RESPONSE, {"id": request_id, "ok": True, "result": result})

    def error(self, request_id: Any, code: str, message: str) -> list[bytes | memoryview]:
        """An error frame; a message past MESSAGE_MAX characters is cut (it may quote what
        the sender sent, which can be up to MAX_PAYLOAD long)."""
        if len(message) > MESSAGE_MAX:
            message = message[:MESSAGE_MAX - 3] + "..."
        return self.parts(Kind.RESPONSE, {"id": request_id, "ok": False,
                                          "error": {"code": code, "message": message}})


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the messages and faults now complete.
    With ``limits``, a message must also be within them (abi.wellformed), else ``bad-cbor``."""

    def __init__(self, max_payload: int = MAX_PAYLOAD, limits: Limits | None = None) -> None:
        self.max_payload = max_payload
        self.limits = limits
        self._buf = bytearray()
        self._need = 0  # bytes the buffered frame needs before parsing is worth trying
        self._kind: Kind | None = None  # the kind of the message being reassembled
        self._message = bytearray()  # its chunks so far
        self._discarding = False  # dropping the rest of a message that grew too large

    @property
    def pending(self) -> int:
        """Bytes held back: a frame not yet complete, and a message not yet complete."""
        return len(self._buf) + len(self._message)

    def reset(self) -> int:
        """Drop what is pending (a sender that went away mid-message); return how many bytes."""
        dropped = self.pending
        self._buf.clear()
        self._need = 0
        self._end_message()
        return dropped

    def _end_message(self) -> None:
        self._kind = None
        self._message = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[Item]:
        buf = self._buf
        if not buf:  # the common case: parse the chunk itself, buffer only its tail
            items, used = self._parse(data)
            if used < len(data):
                buf += data[used:]
            return items
        buf += data
        if len(buf) < self._need:
            return []
        items, used = self._parse(buf)
        del buf[:used]
        return items

    def _parse(self, buf: bytes | bytearray) -> tuple[list[Item], int]:
        """Messages and faults from the start of ``buf``, and how many bytes they used."""
        items: list[Item] = []
        pos = 0
        garbage = 0
        end = len(buf)
        most = min(CHUNK, self.max_payload)
        self._need = 0
        while pos < end:
            start = buf.find(MAGIC, pos)
            if start < 0:
                # Keep a trailing "S": it may be the first half of the next magic.
                keep = 1 if buf[end - 1] == MAGIC[0] else 0
                garbage += _nonzero(buf, pos, end - keep)
                pos = end - keep
                break
            garbage += _nonzero(buf, pos, start)
            pos = start
            if end - pos < HEADER.size:
                break
            _, version, kind_byte, length = HEADER.unpack_from(buf, pos)
            kind = _KIND.get(kind_byte & ~MORE)
            if version != VERSION or kind is None:
                garbage += 1
                pos += 1
                continue
            if garbage:
                items.append(_garbage(garbage))
                garbage = 0
            if length > most:
                items.append(Fault(Code.FRAME_TOO_LARGE,
                                   f"frame announces {length} bytes, the most is {most}",
                                   HEADER.size))
                pos += HEADER.size
                continue
            stop = pos + HEADER.size + length
            if stop > end:
                self._need = stop - pos
                break
            # A copy, not a view of ``buf``: cbor2's C decoder (5.6 and later) leaks the
            # exception, and so the frames, of a string that is not UTF-8 (cbor2 issue #257);
            # a view held by a leaked frame would keep ``buf`` from ever being resized again.
            self._chunk(items, kind, kind_byte & MORE, buf[pos + HEADER.size:stop])
            pos = stop
        if garbage:
            items.append(_garbage(garbage))
        return items, pos

    def _chunk(self, items: list[Item], kind: Kind, more: int, chunk: bytes | bytearray
               ) -> None:
        """Add one frame's chunk to its message; append the message once it is complete,
        and a fault for what is dropped."""
        if kind is Kind.CONTINUATION:
            if self._kind is None:
                items.append(Fault(Code.BAD_FRAME, "a continuation frame of no message",
                                   HEADER.size + len(chunk)))
                return
        else:
            if self._kind is not None:
                items.append(Fault(Code.TRUNCATED_FRAME, f"dropped {len(self._message)} bytes "
                                   "of a message the sender did not finish", len(self._message)))
                self._end_message()
            if not more:  # the common case: a message in one frame
                items.append(_decode_payload(kind, chunk, self.limits))
                return
            self._kind = kind
        if not self._discarding:
            if len(self._message) + len(chunk) > self.max_payload:
                items.append(Fault(Code.FRAME_TOO_LARGE, "message exceeds the maximum of "
                                   f"{self.max_payload} bytes", len(self._message) + len(chunk)))
                self._message = bytearray()
                self._discarding = True
            else:
                self._message += chunk
        if not more:
            if not self._discarding:
                items.append(_decode_payload(self._kind, bytes(self._message), self.limits))
            self._end_message()


def _nonzero(buf: bytes | bytearray, start: int, stop: int) -> int:
    """Bytes in ``buf[start:stop]`` that are not zero: zero bytes between frames are padding
    (a session's BREAK), skipped without a fault."""
    return stop - start - buf.count(0, start, stop)


def _garbage(count: int) -> Fault:
    return Fault(Code.BAD_FRAME, f"skipped {count} bytes that were not a frame", count)


def _decode_payload(kind: Kind, body: bytes | bytearray, limits: Limits | None) -> Item:
    if limits is not None:
        try:
            check(body, limits)
        except Malformed as exc:
            return Fault(Code.BAD_CBOR, f"payload refused: {exc}", HEADER.size + len(body))
    stream = io.BytesIO(body)
    try:
        payload = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several types on hostile input; all mean "not CBOR"
        return Fault(Code.BAD_CBOR, f"payload is not CBOR: {type(exc).__name__}: {exc}"[:300],
                     HEADER.size + len(body))
    if stream.tell() != len(body):
        return Fault(Code.BAD_CBOR, f"{len(body) - stream.tell()} bytes after the CBOR item",
                     HEADER.size + len(body))
    return Frame(kind, payload)
