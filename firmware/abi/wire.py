"""The channel's wire format (DESIGN §6), shared by the zone and the host driver.

A frame is an 8-byte header and one CBOR item::

    +------+---------+------+----------------+--------------------+
    | "SZ" | version | kind | length (u32 BE)| payload (CBOR map) |
    +------+---------+------+----------------+--------------------+
      2 B     1 B      1 B        4 B            length bytes

Requests are ``{id, op, args}``; responses ``{id, ok: true, result}`` or
``{id, ok: false, error: {code, message}}``; events ``{event, ...}``.

:class:`FrameDecoder` turns any byte stream into frames and :class:`Fault` items, never an
exception: bytes that are not a header are skipped until the next one (one ``bad-frame`` fault
per run of garbage), a header announcing more than the maximum payload is skipped
(``frame-too-large``), and a payload that is not exactly one CBOR item becomes ``bad-cbor``.
This module runs inside the guest: standard library and cbor2 only.
"""

from __future__ import annotations

import enum
import io
import struct

import cbor2

from .errors import Code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Union

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER",
    "MAX_PAYLOAD",
    "Kind",
    "Frame",
    "Fault",
    "FrameDecoder",
    "FrameEncoder",
    "encode_frame",
    "encode_request",
    "encode_response",
    "encode_error",
]

MAGIC = b"SZ"
VERSION = 1
HEADER = struct.Struct(">2sBBI")
#: Largest payload either side accepts (and the zone advertises in ``hello``).
MAX_PAYLOAD = 16 * 1024 * 1024


class Kind(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    EVENT = 3


_KIND = {int(k): k for k in Kind}


class Frame:
    """One decoded frame: its kind and its CBOR payload."""

    __slots__ = ("kind", "payload")

    def __init__(self, kind: Kind, payload: Any) -> None:
        self.kind = kind
        self.payload = payload

    def __repr__(self) -> str:
        return f"Frame({self.kind.name}, {self.payload!r})"


class Fault:
    """Input that was not a frame: what was wrong and how many bytes were dropped."""

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
    return _with_header(kind, cbor2.dumps(payload), max_payload)


def _with_header(kind: int, body: bytes, max_payload: int) -> bytes:
    if len(body) > max_payload:
        raise ValueError(f"payload of {len(body)} bytes exceeds the maximum of {max_payload}")
    return HEADER.pack(MAGIC, VERSION, kind, len(body)) + body


def encode_request(request_id: int, op: str, args: Any) -> bytes:
    return encode_frame(Kind.REQUEST, {"id": request_id, "op": op, "args": args})


def encode_response(request_id: Any, result: Any) -> bytes:
    return encode_frame(Kind.RESPONSE, {"id": request_id, "ok": True, "result": result})


def encode_error(request_id: Any, code: str, message: str) -> bytes:
    return encode_frame(
        Kind.RESPONSE,
        {"id": request_id, "ok": False, "error": {"code": code, "message": message}},
    )


class FrameEncoder:
    """Encodes frames with one reused CBOR encoder (3x faster than ``cbor2.dumps`` per frame).

    Not thread-safe: each channel end (the monitor, each client) owns one.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._stream = io.BytesIO()
        self._encoder = cbor2.CBOREncoder(self._stream)

    def parts(self, kind: int, payload: Any) -> tuple[bytes, bytes]:
        """The frame as (header, body): large bodies need not be copied behind the header."""
        stream = self._stream
        stream.seek(0)
        stream.truncate()
        self._encoder.encode(payload)
        body = stream.getvalue()
        if len(body) > self.max_payload:
            raise ValueError(f"payload of {len(body)} bytes exceeds the maximum of "
                             f"{self.max_payload}")
        return HEADER.pack(MAGIC, VERSION, kind, len(body)), body

    def frame(self, kind: int, payload: Any) -> bytes:
        header, body = self.parts(kind, payload)
        return header + body

    def request(self, request_id: int, op: str, args: Any) -> bytes:
        return self.frame(Kind.REQUEST, {"id": request_id, "op": op, "args": args})

    def response(self, request_id: Any, result: Any) -> tuple[bytes, bytes]:
        return self.parts(Kind.RESPONSE, {"id": request_id, "ok": True, "result": result})

    def error(self, request_id: Any, code: str, message: str) -> tuple[bytes, bytes]:
        return self.parts(Kind.RESPONSE, {"id": request_id, "ok": False,
                                          "error": {"code": code, "message": message}})


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the frames and faults now complete."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self._need = 0  # bytes the buffered frame needs before parsing is worth trying

    @property
    def pending(self) -> int:
        """Bytes held back because they may start a frame not yet complete."""
        return len(self._buf)

    def reset(self) -> int:
        """Drop the pending bytes (a sender that fell silent mid-frame); return how many."""
        dropped = len(self._buf)
        self._buf.clear()
        self._need = 0
        return dropped

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
        """Frames and faults from the start of ``buf``, and how many bytes they used."""
        items: list[Item] = []
        pos = 0
        garbage = 0
        end = len(buf)
        self._need = 0
        while pos < end:
            start = buf.find(MAGIC, pos)
            if start < 0:
                # Keep a trailing "S": it may be the first half of the next magic.
                keep = 1 if buf[end - 1] == MAGIC[0] else 0
                garbage += end - keep - pos
                pos = end - keep
                break
            garbage += start - pos
            pos = start
            if end - pos < HEADER.size:
                break
            _, version, kind, length = HEADER.unpack_from(buf, pos)
            if version != VERSION or kind not in _KIND:
                garbage += 1
                pos += 1
                continue
            if garbage:
                items.append(_garbage(garbage))
                garbage = 0
            if length > self.max_payload:
                items.append(
                    Fault(
                        Code.FRAME_TOO_LARGE,
                        f"frame announces {length} bytes, the maximum is {self.max_payload}",
                        HEADER.size,
                    )
                )
                pos += HEADER.size
                continue
            stop = pos + HEADER.size + length
            if stop > end:
                self._need = stop - pos
                break
            with memoryview(buf) as view:
                body = bytes(view[pos + HEADER.size : stop])
            items.append(_decode_payload(_KIND[kind], body))
            pos = stop
        if garbage:
            items.append(_garbage(garbage))
        return items, pos


def _garbage(count: int) -> Fault:
    return Fault(Code.BAD_FRAME, f"skipped {count} bytes that were not a frame", count)


def _decode_payload(kind: Kind, body: bytes) -> Item:
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
