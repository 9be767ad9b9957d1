"""The frame codec: any byte stream decodes to frames and typed faults, never an exception."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.abi import wire
from firmware.abi.errors import Code

payloads = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Garbage that cannot contain a frame header by accident (and is not all padding).
garbage = st.binary(max_size=200).filter(lambda b: b"SZ" not in b and not b.endswith(b"S"))


def feed_in_chunks(data: bytes, cuts: list[int],
                   decoder: wire.FrameDecoder | None = None) -> list[object]:
    decoder = decoder or wire.FrameDecoder()
    items: list[object] = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        items += decoder.feed(data[last:cut])
        last = cut
    items += decoder.feed(data[last:])
    return items


def test_round_trip() -> None:
    frame = wire.encode_request(7, "echo", {"data": b"x"})
    assert frame[:2] == b"SZ" and frame[2] == wire.VERSION and frame[3] == wire.Kind.REQUEST
    assert int.from_bytes(frame[4:8], "big") == len(frame) - 8
    (item,) = wire.FrameDecoder().feed(frame)
    assert isinstance(item, wire.Frame)
    assert item.kind is wire.Kind.REQUEST
    assert item.payload == {"id": 7, "op": "echo", "args": {"data": b"x"}}


@settings(max_examples=400)
@given(st.binary(max_size=4096), st.lists(st.integers(0, 5000), max_size=8))
def test_any_bytes_give_frames_or_faults(data: bytes, cuts: list[int]) -> None:
    decoder = wire.FrameDecoder(max_payload=1024)
    items = feed_in_chunks(data, cuts, decoder)
    assert all(isinstance(i, (wire.Frame, wire.Fault)) for i in items)
    for item in items:
        if isinstance(item, wire.Fault):
            assert item.code in Code.PROTOCOL
            assert item.dropped > 0
    assert decoder.pending <= len(data)


@settings(max_examples=300)
@given(st.lists(st.tuples(garbage, payloads), min_size=1, max_size=6),
       st.lists(st.integers(0, 5000), max_size=8))
def test_frames_survive_garbage_and_any_chunking(parts: list[tuple[bytes, object]],
                                                cuts: list[int]) -> None:
    stream = b"".join(junk + wire.encode_frame(wire.Kind.EVENT, p) for junk, p in parts)
    items = feed_in_chunks(stream, cuts)
    frames = [i.payload for i in items if isinstance(i, wire.Frame)]
    assert frames == [p for _, p in parts]
    faults = [i for i in items if isinstance(i, wire.Fault)]
    assert all(f.code == Code.BAD_FRAME for f in faults)
    # Zero bytes between frames are padding (a session's BREAK): skipped without a fault.
    assert sum(f.dropped for f in faults) == sum(len(junk) - junk.count(0) for junk, _ in parts)


def test_oversized_header_is_skipped_and_the_next_frame_read() -> None:
    decoder = wire.FrameDecoder(max_payload=100)
    huge = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Kind.REQUEST, 2**32 - 1)
    good = wire.encode_request(1, "echo", {})
    items = decoder.feed(huge + good)
    assert isinstance(items[0], wire.Fault) and items[0].code == Code.FRAME_TOO_LARGE
    assert isinstance(items[1], wire.Frame) and items[1].payload["id"] == 1


@pytest.mark.parametrize("body, why", [
    (b"\x1c", "reserved additional information"),
    (b"\x9f" * 10, "unterminated indefinite arrays"),
    (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "byte string longer than the payload"),
    (b"\x81" * 100000, "nesting deeper than the recursion limit"),
    (cbor2.dumps({"a": 1}) + b"\x00", "trailing bytes after the item"),
    (b"", "empty payload"),
])
def test_bad_cbor_is_a_fault(body: bytes, why: str) -> None:
    frame = b"".join(wire.frames_of(wire.Kind.REQUEST, body))
    items = wire.FrameDecoder(max_payload=len(body) + 1).feed(frame)
    assert len(items) == 1, why
    assert isinstance(items[0], wire.Fault) and items[0].code == Code.BAD_CBOR, why


def test_a_large_message_travels_in_chunks() -> None:
    data = bytes(range(256)) * 1000  # 256,000 bytes: three full chunks and a short one
    frames = wire.FrameEncoder().parts(wire.Kind.RESPONSE, {"id": 1, "data": data})
    headers = [wire.HEADER.unpack(bytes(h)) for h in frames[::2]]
    assert [k for _, _, k, _ in headers] == [
        wire.MORE | wire.Kind.RESPONSE, wire.MORE | wire.Kind.CONTINUATION,
        wire.MORE | wire.Kind.CONTINUATION, wire.Kind.CONTINUATION]
    assert all(n <= wire.CHUNK for _, _, _, n in headers)
    stream = b"".join(frames)
    for step in (1, 4093, wire.CHUNK, len(stream)):
        decoder = wire.FrameDecoder()
        items = [i for at in range(0, len(stream), step) for i in decoder.feed(stream[at:at + step])]
        assert len(items) == 1 and isinstance(items[0], wire.Frame)
        assert items[0].kind is wire.Kind.RESPONSE and items[0].payload["data"] == data


def test_a_message_larger_than_the_maximum_is_dropped_and_the_next_read() -> None:
    decoder = wire.FrameDecoder(max_payload=100_000)
    big = wire.encode_frame(wire.Kind.REQUEST, {"data": bytes(200_000)})
    items = decoder.feed(big + wire.encode_request(2, "echo", {}))
    assert [type(i) for i in items] == [wire.Fault, wire.Frame]
    assert isinstance(items[0], wire.Fault) and items[0].code == Code.FRAME_TOO_LARGE
    assert isinstance(items[1], wire.Frame) and items[1].payload["id"] == 2


def test_a_continuation_of_no_message_is_a_fault() -> None:
    body = b"\x00" * 10
    orphan = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Kind.CONTINUATION, len(body)) + body
    items = wire.FrameDecoder().feed(orphan + wire.encode_request(3, "echo", {}))
    assert isinstance(items[0], wire.Fault) and items[0].code == Code.BAD_FRAME
    assert isinstance(items[1], wire.Frame) and items[1].payload["id"] == 3


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.integers(0, 10**9), st.lists(st.integers(0, 10**6), max_size=6))
def test_a_break_ends_whatever_an_earlier_host_left_half_sent(junk: bytes, cut: int,
                                                              cuts: list[int]) -> None:
    """The session start holds by construction: after any prefix (garbage, or any part of a
    message of up to 1 MiB), BREAK + hello is read as the hello, whatever the chunking."""
    message = wire.encode_frame(wire.Kind.REQUEST, {"id": 1, "data": bytes(range(256)) * 4096})
    left = junk + message[:cut % len(message)]
    hello = wire.encode_request(77, "hello", {"nonce": b"n" * 16})
    items = feed_in_chunks(left + wire.BREAK + hello, cuts)
    assert isinstance(items[-1], wire.Frame) and items[-1].payload["id"] == 77
    assert all(isinstance(i, wire.Fault) for i in items[:-1]
               if not (isinstance(i, wire.Frame) and i.payload.get("id") == 1))


def test_truncated_frame_stays_pending_until_reset() -> None:
    decoder = wire.FrameDecoder()
    frame = wire.encode_request(3, "info", {})
    assert decoder.feed(frame[:-1]) == []
    assert decoder.pending == len(frame) - 1
    assert decoder.reset() == len(frame) - 1
    (item,) = decoder.feed(frame)
    assert isinstance(item, wire.Frame)


def test_bad_version_or_kind_is_garbage() -> None:
    bad = wire.HEADER.pack(wire.MAGIC, 9, wire.Kind.REQUEST, 1) + b"\x00"
    good = wire.encode_request(1, "echo", {})
    items = wire.FrameDecoder().feed(bad + good)
    assert isinstance(items[0], wire.Fault) and items[0].code == Code.BAD_FRAME
    assert isinstance(items[-1], wire.Frame)


def test_encode_refuses_oversized_payload() -> None:
    with pytest.raises(ValueError, match="exceeds the maximum"):
        wire.encode_frame(wire.Kind.REQUEST, b"x" * 200, max_payload=100)
