"""The bulk window: shared memory beside the control port for a request's and a response's
large fields (docs/architecture.md, "Wire format").

The emulator wires an ``ivshmem-plain`` PCI device (abi.device.BULK_PCI_ID) whose memory
(BAR 2, WINDOW_SIZE bytes) is a file the host maps too, as the 4758 reached host memory by
DMA. The control port keeps every message; a field of WINDOW_MIN bytes or more may travel in
the window instead, the message naming where:

* a request's ``args`` may hold ``bulk: {name: [position, length]}``: argument ``name`` is
  that span of the host-to-zone lane. The zone copies each span out while it reads the
  request, before anything uses or hashes it, and never reads the lane again for it: what
  the host writes there later changes nothing (no time-of-check/time-of-use).
* a request with ``bulk_reply: true`` lets the zone do the same with the top-level byte
  strings of its result: ``result.bulk`` names their spans of the zone-to-host lane.

Each lane is a ring written by one side. A position counts the bytes its writer has placed
(a transfer never wraps: the writer skips to the lane's start instead); its offset in the
lane is ``position % LANE_SIZE``. The host-to-zone lane's positions start at 0 with each
host's channel; the zone-to-host lane's run on for the monitor's life, and ``hello``
answers with where they are (``window``: what came before is no new host's; a restarted
monitor starts them again, and the host follows when an answer's position goes back). The host knows a
request's spans are free once any answer to it, or to a later request, has come (the zone
reads requests in order and copies at once). The zone knows what the host has taken from the
zone-to-host lane by the counter the host writes at DONE_OFFSET (a new host writes 0 until
hello's answer: the zone then sees less room than there is, never more). Neither side
trusts the other's numbers: a span outside its lane is refused, and a host whose counter
lies only spoils its own answers.

Only the plain channel uses the window: an attested session's bytes stay inside its TLS.
Runs in the guest and on the host: standard library only.
"""

from __future__ import annotations

import mmap
import struct

from .wire import MAX_PAYLOAD

__all__ = ["WINDOW_SIZE", "HEADER_SIZE", "LANE_SIZE", "H2Z_BASE", "Z2H_BASE", "DONE_OFFSET",
           "WINDOW_MIN", "KEY", "REPLY", "HEAD", "MAX_FIELDS", "Lane", "parse_refs", "read_done",
           "write_done"]

#: The window's size (ivshmem needs a power of two); the host's file has exactly this size.
WINDOW_SIZE = 64 << 20
#: The header page: the host's DONE counter (u64, little-endian) at DONE_OFFSET.
HEADER_SIZE = 4096
DONE_OFFSET = 0
#: Each lane: half of the rest, whole pages.
LANE_SIZE = (WINDOW_SIZE - HEADER_SIZE) // 2 // 4096 * 4096
H2Z_BASE = HEADER_SIZE
Z2H_BASE = HEADER_SIZE + LANE_SIZE
#: Fields shorter than this travel inline: below it the control port is as fast.
WINDOW_MIN = 64 << 10
#: The argument naming a request's spans, and the one asking for the answer's.
KEY = "bulk"
REPLY = "bulk_reply"
#: The field of ``hello``'s answer saying where the zone-to-host lane's positions are.
HEAD = "window"
#: The most fields one message moves through the window.
MAX_FIELDS = 8

_U64 = struct.Struct("<Q")


class Lane:
    """One direction's ring, as its writer and its reader see it."""

    def __init__(self, base: int, size: int = LANE_SIZE) -> None:
        self.base = base
        self.size = size
        #: The writer's next position; what the reader has finished with is ``done``.
        self.head = 0

    def place(self, length: int, done: int) -> int | None:
        """Where the writer puts ``length`` bytes, given that the reader is finished with
        everything before position ``done``; None if the lane has no room now."""
        done = min(max(done, self.head - self.size), self.head)  # a reader's lie bounded
        start = self.head
        if start % self.size + length > self.size:
            start += self.size - start % self.size
        if length > self.size or start + length - done > self.size:
            return None
        self.head = start + length
        return start

    def span(self, position: int, length: int) -> slice:
        """The window's bytes of a transfer; ValueError if it is not within the lane."""
        offset = position % self.size
        if not 0 <= length <= min(self.size - offset, MAX_PAYLOAD):
            raise ValueError(f"span of {length} bytes at lane offset {offset} is outside the "
                             f"{self.size}-byte lane")
        return slice(self.base + offset, self.base + offset + length)


def parse_refs(value: object) -> dict[str, tuple[int, int]]:
    """A message's ``bulk`` map, checked: at most MAX_FIELDS names, each [position, length]
    of unsigned integers. ValueError (its message for the sender) otherwise."""
    if type(value) is not dict or not value or len(value) > MAX_FIELDS:
        raise ValueError(f"{KEY} is a map of 1 to {MAX_FIELDS} field names to [position, length]")
    refs = {}
    for name, ref in value.items():
        if type(name) is not str or type(ref) is not list or len(ref) != 2 or \
                any(type(n) is not int or not 0 <= n < 1 << 63 for n in ref):
            raise ValueError(f"{KEY} maps a field name to [position, length], unsigned integers")
        refs[name] = (ref[0], ref[1])
    return refs


def read_done(window: memoryview | bytearray | mmap.mmap) -> int:
    """The host's count of zone-to-host bytes it has taken."""
    return int(_U64.unpack_from(window, DONE_OFFSET)[0])


def write_done(window: memoryview | bytearray | mmap.mmap, position: int) -> None:
    _U64.pack_into(window, DONE_OFFSET, position)
