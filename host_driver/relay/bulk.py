"""The host's end of the bulk window (firmware.abi.bulk): large request fields written to the
host-to-zone lane, large answer fields read from the zone-to-host lane."""

from __future__ import annotations

import mmap
from typing import Any

from firmware.abi import bulk
from firmware.abi.errors import ProtocolError

__all__ = ["HostWindow"]


class HostWindow:
    """One host session's use of a zone's window, mapped by the channel.

    ``put`` moves a request's large arguments into the window and returns the position a
    later answer frees the lane up to (``freed``); ``take`` copies an answer's fields out and
    tells the zone it has them."""

    def __init__(self, memory: mmap.mmap | bytearray) -> None:
        self.memory = memory
        self.h2z = bulk.Lane(bulk.H2Z_BASE)
        self.z2h = bulk.Lane(bulk.Z2H_BASE)
        self._freed = 0  # h2z: the zone has read everything before this position
        #: z2h: what this host has copied out; None until hello's answer says where the
        #: zone's positions are (``started``).
        self._taken: int | None = None
        bulk.write_done(memory, 0)  # until then the zone sees less room than there is, never more

    def put(self, args: Any) -> tuple[Any, int]:
        """``args`` with its byte strings of bulk.WINDOW_MIN bytes or more in the window while
        it has room (and ``bulk_reply``), and the lane's head once they are written. Args that
        are not a map (the zone refuses them) go as they are."""
        if not isinstance(args, dict):
            return args, self.h2z.head
        refs: dict[str, list[int]] = {}
        for name, value in args.items():
            if not isinstance(value, (bytes, bytearray)) or len(value) < bulk.WINDOW_MIN or \
                    len(refs) == bulk.MAX_FIELDS:
                continue
            position = self.h2z.place(len(value), self._freed)
            if position is None:
                break
            self.memory[self.h2z.span(position, len(value))] = value
            refs[name] = [position, len(value)]
        moved = {name: value for name, value in args.items() if name not in refs}
        if refs:
            moved[bulk.KEY] = refs
        moved[bulk.REPLY] = True
        return moved, self.h2z.head

    def started(self, head: Any) -> None:
        """The first ``hello`` was answered, the zone-to-host lane at position ``head``:
        everything before it was for earlier hosts."""
        if self._taken is None and type(head) is int and head >= 0:
            self._taken = head
            bulk.write_done(self.memory, head)

    def freed(self, mark: int) -> None:
        """An answer came to a request sent when the lane's head was at ``mark``: the zone has
        read everything before it."""
        self._freed = max(self._freed, mark)

    def take(self, result: Any) -> Any:
        """``result`` with the fields the zone put in the window copied in (ProtocolError if
        it names a span outside its lane)."""
        if not isinstance(result, dict) or bulk.KEY not in result:
            return result
        try:
            refs = bulk.parse_refs(result[bulk.KEY])
            copied = {name: self.memory[self.z2h.span(*ref)] for name, ref in refs.items()}
        except ValueError as exc:
            raise ProtocolError(f"the zone's answer names a bad bulk window span: {exc}") from None
        if self._taken is not None:  # (before: answers for an earlier host, or hello's own)
            if min(position for position, _ in refs.values()) < self._taken:
                self._taken = 0  # a restarted monitor: its positions start again
            self._taken = max([self._taken, *(position + length for position, length in refs.values())])
            bulk.write_done(self.memory, self._taken)
        taken = {name: value for name, value in result.items() if name != bulk.KEY}
        taken.update(copied)
        return taken
