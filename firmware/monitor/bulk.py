"""The zone's end of the bulk window (abi.bulk): large fields of the host's requests copied in,
large fields of the answers written out."""

from __future__ import annotations

import mmap
import os

from ..abi import bulk
from ..abi.errors import BadArgs
from ..abi.wire import MAX_PAYLOAD

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ZoneWindow:
    """The window mapped into the monitor. ``take`` resolves a request's spans, ``give`` moves
    an answer's large fields out."""

    def __init__(self, memory: mmap.mmap | bytearray) -> None:
        if len(memory) != bulk.WINDOW_SIZE:
            raise ValueError(f"the bulk window has {len(memory)} bytes, not {bulk.WINDOW_SIZE}")
        self.memory = memory
        self.view = memoryview(memory)
        self.h2z = bulk.Lane(bulk.H2Z_BASE)
        self.z2h = bulk.Lane(bulk.Z2H_BASE)
        self.taken = self.given = 0  # bytes, for stats

    @classmethod
    def open(cls, path: str) -> "ZoneWindow":
        """Map ``path``: in the zone, the memory BAR of the window's device (its sysfs
        ``resource`` file: the monitor is root's uid, which owns sysfs, and needs no
        capability for it)."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            return cls(mmap.mmap(fd, bulk.WINDOW_SIZE))
        finally:
            os.close(fd)

    def take(self, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """``args`` with each field the host put in the window copied in (BadArgs if a span is
        not the host's lane, or names a field also given inline), and whether the host takes
        the answer's large fields through the window."""
        reply = args.pop(bulk.REPLY, False)
        if type(reply) is not bool:
            raise BadArgs(f"{bulk.REPLY} is true or false")
        refs = args.pop(bulk.KEY, None)
        if refs is None:
            return args, reply
        try:
            spans = {name: self.h2z.span(*ref) for name, ref in bulk.parse_refs(refs).items()}
        except ValueError as exc:
            raise BadArgs(str(exc)) from None
        if sum(span.stop - span.start for span in spans.values()) > MAX_PAYLOAD:
            raise BadArgs(f"the window's fields add up to more than {MAX_PAYLOAD} bytes")
        for name, span in spans.items():
            if name in args:
                raise BadArgs(f"field {name!r:.40} is given inline and in the window")
            args[name] = bytes(self.view[span])  # the one read: a copy, whatever the host writes later
            self.taken += len(args[name])
        return args, reply

    def give(self, result: Any) -> Any:
        """``result`` with its top-level byte strings of bulk.WINDOW_MIN bytes or more written
        to the zone-to-host lane while it has room (the rest stay inline)."""
        if type(result) is not dict:
            return result
        large = [(name, value) for name, value in result.items()
                 if type(value) is bytes and len(value) >= bulk.WINDOW_MIN][:bulk.MAX_FIELDS]
        if not large:  # most answers: nothing to read from the window
            return result
        done = bulk.read_done(self.view)
        refs: dict[str, list[int]] = {}
        for name, value in large:
            position = self.z2h.place(len(value), done)
            if position is None:
                break
            self.view[self.z2h.span(position, len(value))] = value
            self.given += len(value)
            refs[name] = [position, len(value)]
        if not refs:
            return result
        moved = {name: value for name, value in result.items() if name not in refs}
        moved[bulk.KEY] = refs
        return moved
