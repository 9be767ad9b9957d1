"""Seeded, reproducible hostile cases: bytes to write to a zone's channel or into a session.

A :class:`Case` is one hostile input: one frame, one message of several frames, or one run of
garbage. ``Generator(seed).cases(category, count)`` makes the same cases for the same seed,
category and count, in that order. Categories (CATEGORIES):

``mutated``   a valid request (every op but hello and poweroff) with one to four mutations:
              bit flips, bytes set, inserted, deleted, duplicated, cut off; its header's
              version, kind, MORE bit, length or magic changed; two frames spliced
``random``    random bytes (some with a frame magic inside), valid headers over random
              payloads, random CBOR heads
``boundary``  frame lengths 0, 1, CHUNK - 1, CHUNK, CHUNK + 1 and 2^32 - 1; messages of
              exactly CHUNK, CHUNK + 1, MAX_PAYLOAD and MAX_PAYLOAD + 1 bytes; orphan
              continuations, unfinished messages, ids 0, 2^64 - 1, 2^64, -1; CBOR lengths at
              each head size
``deep``      nesting 31, 32, 33, 100, 1,000 and 100,000 deep: arrays, maps, tags,
              indefinite-length items, in every part of a request
``huge``      declared lengths of up to 2^64 - 1 with nothing behind them; items just under,
              at and over the zone's limit (abi.wellformed.INBOUND); millions of items;
              strings of up to 16 MiB
``tags``      every tag cbor2 decodes (0-5, 25, 28-30, 35-37, 256, 258, 260, 261, 55799),
              with valid and hostile contents (16 MiB bignums, quadratic decimals, cyclic
              shared references, catastrophic regexes, huge MIME), and unknown tags, in every
              part of a request
``ops``       every op with each argument of a wrong type or an absurd size, missing, or
              with extra keys; envelopes with wrong id, op and args types

Large cases (MiB) are rationed: each batch of ``cases`` spends at most ``big_budget`` bytes
on them and on the large answers they ask for, so a batch's time stays bounded whatever the
seed, and the zone never queues more answers than it keeps for a host (64 MiB).
"""

from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import dataclass
from typing import Any, Callable

import cbor2

from firmware.abi import wellformed, wire
from firmware.abi.ops import Op

__all__ = ["CATEGORIES", "Case", "Generator", "head", "NOT_FUZZED"]

CATEGORIES = ("mutated", "random", "boundary", "deep", "huge", "tags", "ops")
#: Ops never sent on the plain channel: poweroff is honoured (the host may always cut the
#: power), hello starts a new host session (the campaign does that itself, after each batch;
#: inside a session, hello is the session's own and is fuzzed like any op).
NOT_FUZZED = frozenset({Op.POWEROFF, Op.HELLO})
#: First request id the generator gives (clear of the driver's own, which start below 2^40).
FIRST_ID = 1 << 50
MIB = 1 << 20


@dataclass
class Case:
    """One hostile input: ``data`` to write as it is, in ``category``; ``frames`` frame
    headers it holds (at least 1: a run of garbage counts as one)."""

    category: str
    data: bytes
    frames: int = 1


def head(major: int, value: int) -> bytes:
    """A CBOR head (RFC 8949, 3.1) of ``major`` type with ``value``, in its shortest form."""
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise ValueError(f"{value} does not fit a CBOR head")


def _frame(body: bytes, kind: int = wire.Kind.REQUEST) -> bytes:
    return wire.HEADER.pack(wire.MAGIC, wire.VERSION, kind, len(body)) + body


def _message(body: bytes, kind: int = wire.Kind.REQUEST) -> tuple[bytes, int]:
    """``body`` as a message in frames (of any size: no MAX_PAYLOAD check) and their count."""
    parts = []
    for start in range(0, max(len(body), 1), wire.CHUNK):
        chunk = body[start:start + wire.CHUNK]
        more = wire.MORE if start + wire.CHUNK < len(body) else 0
        parts.append(wire.HEADER.pack(wire.MAGIC, wire.VERSION, more | kind, len(chunk)) + chunk)
        kind = wire.Kind.CONTINUATION
    return b"".join(parts), len(parts)


def _request_body(request_id: Any, op: Any, args: Any) -> bytes:
    return cbor2.dumps({"id": request_id, "op": op, "args": args})


class Generator:
    """Hostile cases from one seed. ``big_budget``: bytes of large cases per batch."""

    def __init__(self, seed: int, *, big_budget: int = 40 * MIB) -> None:
        self.seed = seed
        self.big_budget = big_budget
        self.rng = random.Random(seed)
        self._next_id = FIRST_ID
        self._spent = 0
        #: Whether the cases go inside an attested session (where hello is fuzzed too).
        self.in_session = False
        #: What the campaign planted: the secret's name, the sealed blob (for cases that
        #: reach for them: a changed blob to unseal, the taken name to put again).
        self.context: dict[str, Any] = {}
        self.makers: dict[str, Callable[[], Case]] = {
            "mutated": self.mutated, "random": self.random, "boundary": self.boundary,
            "deep": self.deep, "huge": self.huge, "tags": self.tags, "ops": self.ops}

    def cases(self, category: str, count: int) -> list[Case]:
        """``count`` cases of ``category``, the big ones within the batch's budget."""
        self._spent = 0
        return [self.makers[category]() for _ in range(count)]

    def request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _afford(self, size: int) -> bool:
        """Whether this batch may still spend ``size`` bytes on one case (and spend them)."""
        if size < MIB:
            return True
        if self._spent + size > self.big_budget:
            return False
        self._spent += size
        return True

    def _bytes(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    # -- valid requests, the material of mutations and of the ops category --------------------

    def valid_args(self, op: str) -> dict[str, Any]:
        """Arguments a client could send for ``op`` (none of them changes the zone for good:
        names that no applet, job, session or free secret name has)."""
        r = self.rng
        table: dict[str, dict[str, Any]] = {
            Op.ECHO: {"data": self._bytes(r.randrange(64))},
            Op.SINK: {"data": self._bytes(r.randrange(256))},
            Op.SOURCE: {"size": r.randrange(256)},
            Op.HELLO: {"nonce": self._bytes(16)},
            Op.ATTEST: {"nonce": self._bytes(r.randint(8, 64))},
            Op.ENROLL: {"owner": self._bytes(91)},
            Op.LOAD: {"package": self._bytes(r.randrange(512))},
            Op.RUN: {"applet": "null", "input": self._bytes(r.randrange(64)),
                     "nonce": self._bytes(r.randrange(65))},
            Op.SUBMIT: {"applet": "no-such-applet", "input": b"", "nonce": b"",
                        "key": self._bytes(16)},
            Op.RESULT: {"job": str(r.randrange(10**9, 10**10)), "wait": 0},
            Op.ACK: {"job": str(r.randrange(10**9, 10**10))},
            Op.SCHEDULE: {"change": self._bytes(r.randrange(256))},
            Op.UNSCHEDULE: {"change": self._bytes(r.randrange(256))},
            Op.AUDIT: {"after": r.randrange(1 << 20), "limit": r.randint(1, 8)},
            Op.AUDIT_ACK: {"upto": 0},
            Op.SESSION_DATA: {"session": r.randrange(1000, 1 << 30), "data": self._bytes(64)},
            Op.SESSION_CLOSE: {"session": r.randrange(1000, 1 << 30)},
            Op.SECRET_PUT: {"name": "fuzz-marker", "value": self._bytes(32),
                            "policy": {"applet": "no-such-applet", "min_version": 1}},
        }
        return dict(table.get(op, {}))

    def fuzzed_ops(self) -> list[str]:
        return sorted(op for op in Op if op not in NOT_FUZZED or (
            self.in_session and op == Op.HELLO))

    def valid_request(self) -> bytes:
        op = self.rng.choice(self.fuzzed_ops())
        return _request_body(self.request_id(), op, self.valid_args(op))

    # -- categories -----------------------------------------------------------------------------

    def mutated(self) -> Case:
        r = self.rng
        body = self.valid_request()
        if r.random() < 0.15:  # sometimes a message of several frames
            body = _request_body(self.request_id(), Op.ECHO,
                                 {"data": self._bytes(r.randint(wire.CHUNK - 64, 3 * wire.CHUNK))})
        data, frames = _message(body)
        buf = bytearray(data)
        for _ in range(r.randint(1, 4)):
            self._mutate(buf)
        if r.random() < 0.1:  # splice in another frame
            other = _frame(self.valid_request())
            at = r.randrange(len(buf) + 1)
            buf[at:at] = other[:r.randint(1, len(other))]
            frames += 1
        return Case("mutated", bytes(buf), frames)

    def _mutate(self, buf: bytearray) -> None:
        r = self.rng
        kind = r.randrange(10) if r.random() < 0.5 else r.randrange(6)  # half in the payload
        if len(buf) <= wire.HEADER.size:
            buf += self._bytes(wire.HEADER.size + 1 - len(buf))
        at = r.randrange(len(buf)) if kind >= 6 or r.random() < 0.2 else r.randrange(
            wire.HEADER.size, len(buf))
        if kind == 0:  # flip a bit
            buf[at] ^= 1 << r.randrange(8)
        elif kind == 1:  # set a byte to something interesting
            buf[at] = r.choice((0x00, 0x01, 0x17, 0x18, 0x1F, 0x7F, 0x80, 0x9F, 0xBF, 0xC4,
                                0xD8, 0xF7, 0xFF, r.randrange(256)))
        elif kind == 2:  # insert bytes
            buf[at:at] = self._bytes(r.randint(1, 16))
        elif kind == 3:  # delete a range
            del buf[at:at + r.randint(1, 16)]
        elif kind == 4:  # duplicate a range
            buf[at:at] = buf[at:at + r.randint(1, 32)]
        elif kind == 5:  # cut off
            del buf[at:]
        elif kind == 6:  # the header's version
            buf[2] = r.choice((0, 1, 3, 0x7F, 0xFF))
        elif kind == 7 and len(buf) > 3:  # the header's kind and MORE bit
            buf[3] = r.choice((0, 2, 3, 4, 5, 0x7F, 0x81, 0x82, 0x84, 0xFF, buf[3] ^ wire.MORE))
        elif kind == 8 and len(buf) >= 8:  # the header's length
            length = struct.unpack_from(">I", buf, 4)[0]
            struct.pack_into(">I", buf, 4, r.choice((
                0, 1, max(0, length - 1), length + 1, wire.CHUNK, wire.CHUNK + 1,
                0xFFFFFFFF, r.randrange(1 << 32))) & 0xFFFFFFFF)
        else:  # the magic
            buf[r.randrange(2)] = r.randrange(256)

    def random(self) -> Case:
        r = self.rng
        kind = r.randrange(5)
        if kind == 0:  # plain random bytes
            return Case("random", self._bytes(r.randint(1, 4096)))
        if kind == 1:  # random bytes with magic (and valid versions) in them
            buf = bytearray(self._bytes(r.randint(8, 4096)))
            for _ in range(r.randint(1, 8)):
                at = r.randrange(len(buf))
                buf[at:at + 3] = wire.MAGIC + bytes([wire.VERSION])
            return Case("random", bytes(buf))
        if kind == 2:  # a valid header over random bytes
            return Case("random", _frame(self._bytes(r.randint(0, 2048)),
                                         r.choice(list(wire.Kind))))
        if kind == 3:  # random CBOR heads, as one payload
            body = b"".join(head(r.randrange(8), r.choice((0, 1, 23, 24, 255, 256, 1 << 16)))
                            for _ in range(r.randint(1, 64)))
            return Case("random", _frame(body))
        frames = [_frame(self._bytes(r.randint(0, 256)), r.randrange(256))
                  for _ in range(r.randint(2, 8))]  # random kinds, random payloads
        return Case("random", b"".join(frames), len(frames))

    def boundary(self) -> Case:
        r = self.rng
        rid = self.request_id()
        pick = r.randrange(14)
        if pick == 0:  # a frame announcing each edge length, with what it announces (or not)
            length = r.choice((0, 1, wire.CHUNK - 1, wire.CHUNK, wire.CHUNK + 1, 0xFFFFFFFF))
            body = self._bytes(min(length, wire.CHUNK)) if r.random() < 0.5 else b""
            return Case("boundary", wire.HEADER.pack(wire.MAGIC, wire.VERSION,
                                                     wire.Kind.REQUEST, length) + body)
        if pick == 1:  # a request whose body is exactly CHUNK - 1, CHUNK or CHUNK + 1 bytes
            target = wire.CHUNK + r.choice((-1, 0, 1))
            return Case("boundary", *_message(_sized_echo(rid, target)))
        if pick == 2:  # messages at the largest size and one byte past it
            target = wire.MAX_PAYLOAD + r.choice((-1, 0, 1))
            if not self._afford(2 * target):  # the request, and the echo
                return self.boundary()
            return Case("boundary", *_message(_sized_echo(rid, target)))
        if pick == 3:  # an orphan continuation
            return Case("boundary", _frame(self._bytes(r.randrange(64)), wire.Kind.CONTINUATION))
        if pick == 4:  # a message left unfinished, then another
            first = _frame(self._bytes(r.randrange(1, 64)), wire.MORE | wire.Kind.REQUEST)
            return Case("boundary", first + _frame(self.valid_request()), 2)
        if pick == 5:  # ids at the edges
            request_id = r.choice((0, 1, (1 << 64) - 1, 1 << 64, -1, 2**53, 2**63))
            return Case("boundary", _frame(_request_body(request_id, Op.ECHO, {"data": b""})))
        if pick == 6:  # an empty frame with MORE, then a continuation that ends it
            return Case("boundary", _frame(b"", wire.MORE | wire.Kind.REQUEST)
                        + _frame(_request_body(rid, Op.INFO, {}), wire.Kind.CONTINUATION), 2)
        if pick == 7:  # CBOR lengths at each head size
            size = r.choice((23, 24, 255, 256, 65535, 65536))
            return Case("boundary", *_message(_request_body(rid, Op.ECHO, {"data": bytes(size)})))
        if pick == 8:  # padding, then a request
            return Case("boundary", bytes(r.choice((1, 7, 8, wire.CHUNK, wire.CHUNK + 8)))
                        + _frame(_request_body(rid, Op.ECHO, {"data": b""})))
        if pick == 9:  # a lone "S", "SZ", a header cut short
            return Case("boundary", wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Kind.REQUEST,
                                                     4)[:r.randint(1, 7)])
        if pick == 10:  # the nonce and key limits
            nonce = bytes(r.choice((7, 8, 64, 65)))
            return Case("boundary", _frame(_request_body(rid, Op.ATTEST, {"nonce": nonce})))
        if pick == 11:  # a message of many empty frames
            count = r.randint(2, 200)
            frames = [wire.HEADER.pack(wire.MAGIC, wire.VERSION,
                                       wire.MORE | (wire.Kind.REQUEST if i == 0 else
                                                    wire.Kind.CONTINUATION), 0)
                      for i in range(count)]
            return Case("boundary", b"".join(frames) + _frame(
                _request_body(rid, Op.ECHO, {"data": b""}), wire.Kind.CONTINUATION), count + 1)
        if pick == 12:  # an empty payload, one item of CBOR, simple values, special floats
            return Case("boundary", _frame(r.choice((
                b"", b"\x00", b"\xa0", b"\x80", b"\xf6", b"\xf7", b"\xff", b"\x1c",
                b"\xf8\x10", b"\xf8\xff", b"\xf9\x7c\x00", b"\xfb" + struct.pack(">d", math.nan)))))
        value = r.choice((wire.MAX_PAYLOAD - 64, wire.MAX_PAYLOAD - 63, -1, 1 << 64))
        if value == wire.MAX_PAYLOAD - 64 and not self._afford(value):  # a 16 MiB answer
            return self.boundary()
        return Case("boundary", _frame(_request_body(rid, Op.SOURCE, {"size": value})))

    def deep(self) -> Case:
        r = self.rng
        depth = r.choice((30, 31, 32, 33, 100, 1000, 100_000))
        opener, closer, leaf = r.choice((
            (b"\x81", b"", b"\x00"),  # [[[...]]]
            (b"\xa1\x00", b"", b"\x00"),  # {0: {0: ...}}
            (b"\x9f", b"\xff", b""),  # indefinite arrays
            (b"\xbf\x00", b"\xff", b"\x00"),  # indefinite maps
            (b"\xd8\x64", b"", b"\x00"),  # tag 100 (unknown) around tag around ...
            (b"\xc6", b"", b"\x00"),  # tag 6
        ))
        nested = opener * depth + leaf + closer * depth
        where = r.randrange(4)
        rid = self.request_id()
        if where == 0:
            body = nested
        elif where == 1:
            body = _map({"id": rid, "op": "echo"}, b"\x64args" + nested)
        elif where == 2:
            body = _map({"id": rid, "op": "echo"}, b"\x64args" + b"\xa1\x64data" + nested)
        else:
            body = _map({"op": "hello", "args": {}}, b"\x62id" + nested)
        if not self._afford(len(body)):
            return self.deep()
        return Case("deep", *_message(body))

    def huge(self) -> Case:
        r = self.rng
        rid = self.request_id()
        pick = r.randrange(7)
        if pick == 0:  # a length announced, nothing behind it
            major = r.choice((2, 3, 4, 5))
            body = head(major, r.choice((1 << 16, 1 << 32, (1 << 63), (1 << 64) - 1)))
            return Case("huge", _frame(_map({"id": rid, "op": "echo"}, b"\x64args" + body)))
        if pick == 1:  # items around the limit, in an array or a map
            most = wellformed.INBOUND.items - 9  # the request's other items: 9
            count = r.choice((most - 1, most, most + 1, 70_000))
            body = _map({"id": rid, "op": "echo"}, b"\x64args\xa1\x61x" + head(4, count)
                        + bytes(count))
            return Case("huge", *_message(body))
        if pick == 2:  # millions of items: empty maps, zeros, empty strings
            count = r.choice((1 << 20, 4 << 20, wire.MAX_PAYLOAD - 16))
            if not self._afford(count):
                return self.huge()
            item = r.choice((b"\xa0", b"\x00", b"\x40", b"\x80"))
            return Case("huge", *_message(head(4, count) + item * count))
        if pick == 3:  # a map with many keys
            count = r.choice((1000, wellformed.INBOUND.items, 70_000))
            body = head(5, count) + b"".join(head(0, i) + b"\xf6" for i in range(count))
            return Case("huge", *_message(body))
        if pick == 4:  # a long op, applet or job name (quoted in the error message)
            size = r.choice((4096, 65_536, MIB, 8 * MIB))
            if not self._afford(size):
                return self.huge()
            text = r.choice(("\x00", "x", "\u2603")) * (size // 3)
            op, args = r.choice(((text, {}), (Op.RUN, {"applet": text}),
                                 (Op.RESULT, {"job": text}), (Op.ACK, {"job": text})))
            return Case("huge", *_message(_request_body(rid, op, args)))
        if pick == 5:  # large byte strings in each op that takes bytes
            size = r.choice((65_537, MIB, 4 * MIB))
            if not self._afford(2 * size):  # the request, and an echo's answer
                return self.huge()
            op, key = r.choice(((Op.ECHO, "data"), (Op.SINK, "data"), (Op.LOAD, "package"),
                                (Op.ATTEST, "nonce"), (Op.SCHEDULE, "change"),
                                (Op.ENROLL, "owner"), (Op.RUN, "input")))
            large = {**self.valid_args(op), key: bytes(size)}
            return Case("huge", *_message(_request_body(rid, op, large)))
        # an indefinite-length string of many chunks
        chunks = r.choice((1000, 65_537))
        body = b"\x5f" + b"\x41\x00" * chunks + b"\xff"
        return Case("huge", *_message(_map({"id": rid, "op": "echo"}, b"\x64args\xa1\x64data"
                                           + body)))

    def tags(self) -> Case:
        r = self.rng
        tag, content = r.choice(TAGGED)(r)
        value = head(6, tag) + content
        rid = self.request_id()
        where = r.randrange(5)
        if where == 0:
            body = value
        elif where == 1:
            body = _map({"op": "echo", "args": {}}, b"\x62id" + value)
        elif where == 2:
            body = _map({"id": rid, "args": {}}, b"\x62op" + value)
        elif where == 3:
            body = _map({"id": rid, "op": "echo"}, b"\x64args" + value)
        else:
            op, key = r.choice(((Op.ECHO, "data"), (Op.ATTEST, "nonce"), (Op.RUN, "applet"),
                                (Op.RESULT, "job"), (Op.SESSION_CLOSE, "session"),
                                (Op.AUDIT, "after"), (Op.SECRET_PUT, "policy")))
            body = _map({"id": rid, "op": op}, b"\x64args\xa1" + cbor2.dumps(key) + value)
        if not self._afford(len(body)):
            return self.tags()
        return Case("tags", *_message(body))

    def ops(self) -> Case:
        r = self.rng
        rid = self.request_id()
        if self.context and r.random() < 0.05:
            return Case("ops", _frame(_request_body(rid, *self._secretive())))
        if r.random() < 0.1:  # the envelope itself
            request_id: Any = r.choice((rid, "1", 1.0, True, None, [rid], b"\x01", -rid))
            name: Any = r.choice((Op.ECHO, b"echo", 7, None, ["echo"], "", "ECHO", "echo\x00"))
            envelope: Any = r.choice(({}, [], "args", 0, None, b"", [{}], {"data": b""}))
            return Case("ops", _frame(_request_body(request_id, name, envelope)))
        op = r.choice(self.fuzzed_ops())
        args: dict[Any, Any] = self.valid_args(op)
        keys = list(args) or ["data", "nonce", "session"]
        change = r.randrange(4)
        if change == 0 or not args:  # one argument of a wrong type or an absurd value
            args[r.choice(keys)] = self._wrong()
        elif change == 1:  # every argument wrong
            args = {key: self._wrong() for key in keys}
        elif change == 2:  # one missing
            args.pop(r.choice(keys), None)
        else:  # extra keys of every type
            args.update({r.choice(("extra", 1, b"k", -1, 1.5)): self._wrong()
                         for _ in range(r.randint(1, 4))})
        body = _request_body(rid, op, args)
        if not self._afford(len(body)):
            return self.ops()
        return Case("ops", *_message(body))

    def _secretive(self) -> tuple[str, dict[str, Any]]:
        """A request that reaches for the planted secrets (never one that may hand them out:
        the sealed blob is only ever unsealed changed)."""
        r = self.rng
        secret, blob = self.context["secret"], bytearray(self.context["blob"])
        pick = r.randrange(5)
        if pick == 0:  # the sealed blob, changed, to unseal
            for _ in range(r.randint(1, 3)):
                blob[r.randrange(len(blob))] ^= 1 << r.randrange(8)
            cut = r.choice((len(blob), len(blob) - 1, 16))
            request = {"op": "unseal", "blob": bytes(blob[:cut]).hex()}
            return Op.RUN, {"applet": "vault", "input": json.dumps(request).encode()}
        if pick == 1:  # the secret by an applet its policy does not admit
            return Op.RUN, {"applet": "misbehave", "input": b"secret:" + secret.encode()}
        if pick == 2:  # the secret by the applet it is for (it answers the value's digest)
            return Op.RUN, {"applet": "secret-reader",
                            "input": json.dumps({"name": secret}).encode()}
        if pick == 3:  # the taken name, put again (needs-session, or secret-exists)
            return Op.SECRET_PUT, {"name": secret, "value": self._bytes(32),
                                   "policy": {"applet": "secret-reader", "min_version": 1}}
        return Op.SECRET_LIST, {}

    def _wrong(self) -> Any:
        """A value of a wrong type, or of the right type and an absurd size."""
        r = self.rng
        size = r.choice((0, 1, 7, 65, 257, 4097, 65_537, MIB))
        return r.choice((
            None, True, False, 0, -1, (1 << 64) - 1, -(1 << 64), 1.5, math.nan, math.inf,
            -math.inf, "", "x" * size, "\x00" * min(size, 4096), b"", bytes(size), [], [1, [2]],
            {}, {"k": "v"}, {1: 2}, cbor2.CBORSimpleValue(99), cbor2.undefined,
            [b"x"] * min(size, 4096), r.randrange(1 << 64), -r.randrange(1 << 64)))


def _bignum(r: random.Random) -> bytes:
    size = r.choice((1000, 80_000, MIB, 8 * MIB))
    return head(2, size) + b"\xff" * size


_text = cbor2.dumps
#: For every tag cbor2 decodes, and some it does not, makers of (tag, content): valid contents, and hostile ones (16 MiB bignums, which cbor2 turns into
#: Decimal or Fraction in quadratic time; cyclic shared references; catastrophic regexes).
TAGGED: list[Callable[[random.Random], tuple[int, bytes]]] = [
    lambda r: (0, _text("2024-01-01T00:00:00Z")), lambda r: (0, _text("9999-99-99T99:99:99Z")),
    lambda r: (0, _text("0" * r.choice((100, 100_000)))),
    lambda r: (1, b"\xfb" + struct.pack(">d", 1e300)), lambda r: (1, b"\xf9\x7e\x00"),
    lambda r: (1, head(0, (1 << 64) - 1)), lambda r: (1, _text(1700000000)),
    lambda r: (2, _bignum(r)), lambda r: (3, _bignum(r)), lambda r: (2, _text("not bytes")),
    lambda r: (4, b"\x82" + head(0, 1 << 63) + b"\x01"),
    lambda r: (4, b"\x82\x00\xc2" + _bignum(r)), lambda r: (4, b"\x82\x01"),
    lambda r: (5, b"\x82" + head(0, 1 << 40) + b"\x01"),
    lambda r: (5, b"\x82\x20\xc2" + _bignum(r)), lambda r: (5, b"\x81\x00"),
    lambda r: (25, b"\x00"), lambda r: (256, b"\x82\x63abc\xd8\x19\x00"),
    lambda r: (256, b"\x81\xd8\x19\x05"), lambda r: (28, b"\x81\xd8\x1d\x00"),
    lambda r: (29, b"\x05"), lambda r: (28, b"\xd8\x1c\xd8\x1d\x00"),
    lambda r: (30, b"\x82\x01\x00"), lambda r: (30, b"\x82\xc2" + _bignum(r) + b"\xc2"
                                               + _bignum(r)), lambda r: (30, b"\x80"),
    lambda r: (35, _text("(" * 5000 + ")" * 5000)),
    lambda r: (35, _text("(a|a?)+" * r.choice((1, 1000)))), lambda r: (35, _text("[")),
    lambda r: (35, _text("a|" * r.choice((10, 100_000)))),
    lambda r: (36, _text("X: y\n" * r.choice((1, 100_000)))), lambda r: (36, b"\x41\x00"),
    lambda r: (37, head(2, 16) + bytes(16)), lambda r: (37, b"\x43abc"),
    lambda r: (258, b"\x82\x00\x00"), lambda r: (258, b"\x81\x80"), lambda r: (258, b"\xa0"),
    lambda r: (260, b"\x44\x7f\x00\x00\x01"), lambda r: (260, b"\x43abc"),
    lambda r: (260, b"\x46" + bytes(6)), lambda r: (261, b"\xa1\x44\x0a\x00\x00\x00\x18\x08"),
    lambda r: (261, b"\xa1\x44\x0a\x00\x00\x00\x18\xff"), lambda r: (55799, b"\xa0"),
    lambda r: (55799, b"\xd9\xd9\xf7\xa0"), lambda r: (6, b"\x00"),
    lambda r: (18, b"\x84\x40\xa0\x40\x40"), lambda r: (24, b"\x41\x00"),
    lambda r: (32, _text("http://x")), lambda r: (100, b"\x00"), lambda r: (1 << 16, b"\x00"),
    lambda r: (1 << 32, b"\x00"), lambda r: ((1 << 64) - 1, b"\x00"),
]
#: Every tag cbor2 (5.4) decodes itself (TAGGED covers each).
DECODED_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 256, 258, 260, 261, 55799)


def _map(entries: dict[str, Any], extra: bytes) -> bytes:
    """A CBOR map of ``entries`` and one more entry given as raw CBOR ``extra`` (key then
    value): how a hostile item is put into a request."""
    return head(5, len(entries) + 1) + b"".join(cbor2.dumps(k) + cbor2.dumps(v)
                                                for k, v in entries.items()) + extra


def _sized_echo(request_id: int, size: int) -> bytes:
    """An echo request whose CBOR body is ``size`` bytes long (or one byte off, where the
    byte string's head grows by a size step)."""
    data = max(0, size - len(_request_body(request_id, Op.ECHO, {"data": b""})))
    body = _request_body(request_id, Op.ECHO, {"data": bytes(data)})
    for _ in range(4):
        if len(body) == size or data <= 0:
            break
        data = max(0, data - (len(body) - size))
        body = _request_body(request_id, Op.ECHO, {"data": bytes(data)})
    return body
