"""Limits on CBOR from an untrusted sender, checked before cbor2 decodes it.

cbor2 decodes 18 semantic tags itself, with no way to turn them off, and some cost more than
their size: a decimal fraction (tag 4) or bigfloat (tag 5) converts its mantissa to a Decimal
in quadratic time (a 80 KB mantissa: 26 s in the zone; 16 MiB: days), a regular expression
(tag 35) is compiled, a MIME message (tag 36) parsed. And a few bytes can make many objects:
16 MiB of ``0xa0`` is 16 million empty maps, ~1 GiB of Python objects. The protocol needs none
of that, so what a host, a session's client or an applet sends is first walked head by head
(RFC 8949, Appendix C: a well-formedness check, no values built), and refused unless it is
well formed, nests at most ``depth`` deep, holds at most ``items`` data items and carries
only the ``tags`` allowed. The walk reads each head once and skips string contents, so it
costs microseconds per item (strings are skipped whole) and stops at the first item past a
limit.

This module runs inside the guest and on the host: standard library and cbor2 only.
"""

from __future__ import annotations

import io
from typing import Any, NamedTuple

import cbor2

__all__ = ["Limits", "Malformed", "INBOUND", "check", "loads"]


class Limits(NamedTuple):
    #: Data items in all (a tag, a map key and a string chunk count as one each).
    items: int
    #: Containers (arrays, maps, tags, indefinite strings) nested inside each other.
    depth: int
    #: Semantic tags allowed (anywhere); any other is refused.
    tags: frozenset[int] = frozenset()


class Malformed(ValueError):
    """The bytes are not one well-formed CBOR item within the limits."""


#: What the zone takes from a host, a session's client or an applet: the requests of the
#: protocol (abi.ops) nest four deep and hold a few dozen items, and use no tags. (The walk
#: costs ~3 us per item in the zone under TCG: 4,096 items, ~12 ms at most per message.)
INBOUND = Limits(items=4096, depth=32)

_INDEFINITE = -1


def check(data: bytes | bytearray | memoryview, limits: Limits) -> None:
    """Return if ``data`` is exactly one well-formed CBOR item within ``limits``; raise
    Malformed saying what is wrong otherwise."""
    end = len(data)
    pos = 0
    budget = limits.items
    depth = limits.depth
    # What each open container still expects: a count of items, or _INDEFINITE (until a
    # break). The outermost "container" is the one item ``data`` must be.
    stack = [1]
    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        if pos >= end:
            raise Malformed(f"the item ends early, after {end} bytes")
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if initial == 0xFF:
            if stack[-1] != _INDEFINITE:
                raise Malformed(f"a break (0xff) outside an indefinite-length item at {pos - 1}")
            stack.pop()
            continue
        if stack[-1] != _INDEFINITE:
            stack[-1] -= 1
        budget -= 1
        if budget < 0:
            raise Malformed(f"more than {limits.items} data items")
        if info < 24:
            value = info
        elif info < 28:
            size = 1 << (info - 24)
            if pos + size > end:
                raise Malformed(f"the item ends early, after {end} bytes")
            value = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        elif info == 31 and major in (2, 3, 4, 5):
            value = _INDEFINITE
        else:
            raise Malformed(f"reserved or invalid head 0x{initial:02x} at {pos - 1}")
        if major in (2, 3) and value != _INDEFINITE:
            pos += value
            if pos > end:
                raise Malformed(f"a string of {value} bytes runs past the end ({end})")
            continue
        if major in (0, 1, 7):
            continue  # a number or a simple value: nothing nested
        if major == 6:
            if value not in limits.tags:
                allowed = sorted(limits.tags) or "none"
                raise Malformed(f"semantic tag {value} is not allowed here (allowed: {allowed})")
            value = 1  # a tag wraps one item
        elif major == 5 and value != _INDEFINITE:
            value *= 2  # a key and a value per entry
        stack.append(value)  # an array, a map, a tag, or an indefinite string's chunks
        if len(stack) > depth + 1:
            raise Malformed(f"nested deeper than {limits.depth}")
    if pos != end:
        raise Malformed(f"{end - pos} bytes after the CBOR item")


def loads(data: bytes, limits: Limits) -> Any:
    """``data`` decoded by cbor2 once :func:`check` has passed it; Malformed otherwise (the
    checker's reason, or cbor2's, e.g. text that is not UTF-8)."""
    check(data, limits)
    try:
        return cbor2.CBORDecoder(io.BytesIO(data)).decode()
    except Exception as exc:  # cbor2 raises several types on bad input: all mean "not CBOR"
        raise Malformed(f"{type(exc).__name__}: {exc}"[:300]) from exc
