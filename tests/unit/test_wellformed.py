"""The CBOR limits the zone puts on what it is sent (firmware.abi.wellformed), and the frame
decoder that applies them: nothing that cbor2 would spend more than its size on gets to
cbor2, and whatever is refused is refused fast."""

from __future__ import annotations

import time
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.abi import cose, wellformed, wire
from firmware.abi.errors import Code
LIMITS = wellformed.INBOUND
MIB = 1 << 20
#: Every tag cbor2 (5.4, the guest's) decodes itself.
DECODED_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 256, 258, 260, 261, 55799)


def head(major: int, value: int) -> bytes:
    """A CBOR head of ``major`` type with ``value`` (the 8-byte form beyond 23)."""
    if value < 24:
        return bytes([major << 5 | value])
    return bytes([major << 5 | 27]) + value.to_bytes(8, "big")

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 64) + 1, (1 << 64) - 1) | st.floats()
    | st.binary(max_size=64) | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=4),
    max_leaves=30)


@given(values)
def test_what_the_protocol_sends_passes_and_decodes_the_same(value: Any) -> None:
    data = cbor2.dumps(value)
    assert repr(wellformed.loads(data, LIMITS)) == repr(cbor2.loads(data))


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_any_bytes_are_decoded_or_refused_as_malformed(data: bytes) -> None:
    try:
        wellformed.loads(data, LIMITS)
    except wellformed.Malformed:
        pass


@pytest.mark.parametrize("tag", DECODED_TAGS + (6, 18, 100, (1 << 64) - 1))
def test_every_tag_is_refused_unless_allowed(tag: int) -> None:
    data = head(6, tag) + b"\x00"
    with pytest.raises(wellformed.Malformed, match=f"semantic tag {tag} is not allowed"):
        wellformed.check(data, LIMITS)
    wellformed.check(data, wellformed.Limits(items=2, depth=1, tags=frozenset({tag})))


def test_a_quadratic_decimal_is_refused_in_microseconds() -> None:
    """cbor2 turns tag 4's mantissa into a Decimal in quadratic time: 80 KB took 26 s in the
    zone, 16 MiB would take days. The limits refuse it before cbor2 sees it."""
    bignum = head(2, 8 * MIB) + b"\xff" * (8 * MIB)
    body = b"\xa3\x62id\x01\x62op\x64echo\x64args\xa1\x64data\xc4\x82\x00\xc2" + bignum
    started = time.perf_counter()
    with pytest.raises(wellformed.Malformed, match="semantic tag 4"):
        wellformed.loads(body, LIMITS)
    assert time.perf_counter() - started < 0.01


@pytest.mark.parametrize("depth, ok", [(LIMITS.depth, True), (LIMITS.depth + 1, False),
                                       (100_000, False)])
@pytest.mark.parametrize("opener, closer", [(b"\x81", b""), (b"\xa1\x00", b""),
                                            (b"\x9f", b"\xff"), (b"\xbf\x00", b"\xff")])
def test_depth_is_limited_exactly(depth: int, ok: bool, opener: bytes, closer: bytes) -> None:
    data = opener * depth + b"\x00" + closer * depth
    if ok:
        wellformed.check(data, LIMITS)
    else:
        with pytest.raises(wellformed.Malformed, match="nested deeper"):
            wellformed.check(data, LIMITS)


@pytest.mark.parametrize("count, ok", [(LIMITS.items - 1, True), (LIMITS.items, False),
                                       (16 * MIB - 8, False)])
def test_items_are_limited_exactly(count: int, ok: bool) -> None:
    """An array of ``count`` zeros is ``count`` + 1 items; 16 million empty maps (what once
    took 1 GiB and ended in MemoryError) are refused after the first few thousand."""
    data = head(4, count) + b"\xa0" * count
    started = time.perf_counter()
    if ok:
        assert len(wellformed.loads(data, LIMITS)) == count
    else:
        with pytest.raises(wellformed.Malformed, match="more than"):
            wellformed.check(data, LIMITS)
        assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize("data, says", [
    (b"", "ends early"), (b"\x82\x00", "ends early"), (b"\x5a\xff\xff\xff\xff", "runs past"),
    (b"\x1c", "reserved"), (b"\xff", "break"), (b"\x80\x00", "after the CBOR item"),
    (b"\x1b\x00\x00", "ends early"), (b"\x3f", "invalid head"),
])
def test_malformed_heads_say_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(wellformed.Malformed, match=says):
        wellformed.check(data, LIMITS)


def test_the_zone_decoder_makes_bad_cbor_of_what_is_past_the_limits() -> None:
    decoder = wire.FrameDecoder(limits=LIMITS)
    tagged = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Kind.REQUEST, 3) + b"\xc2\x41\x01"
    deep = b"\x81" * 40 + b"\x00"
    deep = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Kind.REQUEST, len(deep)) + deep
    items = decoder.feed(tagged + deep + wire.encode_request(5, "echo", {"data": b"x"}))
    first, second, third = items
    assert isinstance(first, wire.Fault) and isinstance(second, wire.Fault)
    assert first.code == second.code == Code.BAD_CBOR
    assert "semantic tag 2" in first.message and "deeper" in second.message
    assert isinstance(third, wire.Frame) and third.payload["id"] == 5
    host = wire.FrameDecoder()  # without limits (the host's): as before
    assert type(host.feed(tagged)[0]) is wire.Frame


def test_cose_messages_allow_their_tag_only() -> None:
    with pytest.raises(cose.CoseError, match="semantic tag 4"):
        cose.decode_sign1(head(6, 18) + b"\x84\x40\xa0\xc4\x82\x00\x00\x40")
    with pytest.raises(cose.CoseError, match="semantic tag 2"):
        cose.decode_sign1(cbor2.dumps(cbor2.CBORTag(18, [b"\xc2\x41\x01", {}, b"", b""])))


def test_error_messages_on_the_wire_are_cut() -> None:
    parts = wire.FrameEncoder().error(1, Code.UNKNOWN_OP, "x" * wire.MAX_PAYLOAD)
    payload = cbor2.loads(b"".join(bytes(p) for p in parts)[wire.HEADER.size:])
    assert len(payload["error"]["message"]) == wire.MESSAGE_MAX
    assert payload["error"]["message"].endswith("...")


def test_a_string_cbor2_cannot_decode_leaves_the_decoder_usable() -> None:
    """cbor2's C decoder (5.6+) leaks the exception of a string that is not UTF-8, and with
    it the caller's frames (cbor2 issue #257): a view of the decoder's buffer held there made
    the next resize raise BufferError. The decoder hands out copies."""
    bad = b"\xa1\x62op\x62\xe3\x68"  # {"op": <2 bytes that are not UTF-8>}
    frame = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Kind.REQUEST, len(bad)) + bad
    decoder = wire.FrameDecoder(limits=LIMITS)
    for _ in range(3):  # split, so the buffered path (a bytearray) parses it
        assert decoder.feed(frame[:5]) == []
        assert [getattr(i, "code", None) for i in decoder.feed(frame[5:] + b"SZ")] == [
            Code.BAD_CBOR]
        decoder.feed(wire.BREAK)
        decoder.reset()
