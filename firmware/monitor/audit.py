"""The audit log: what the zone did while anyone, or no one, watched (firmware.abi.audit).

Entries are appended one at a time: the key keeper signs entry ``n`` naming entry ``n - 1``,
then the entry and the state change it records are committed to BBRAM together, or neither is.
A power cut before the commit leaves no entry and no change, and the next entry takes the same
sequence number: the chain has no holes. Entries stay until the host acknowledges them
(``ack``); the log holds at most claims.KEPT. Scheduled runs leave RESERVE of that room to the
owner's own changes (enrolments, loads, schedules), which are refused, typed, only when the log
is entirely full.

Its keys in the state map (firmware.monitor.state)::

    audit       [entry bytes] not yet acknowledged, oldest first
    audit_next  the sequence number of the next entry (1 for a new device)
    audit_last  SHA-384 of the last entry ever appended (abi.audit.GENESIS before any)
"""

from __future__ import annotations

from typing import Any

from ..abi import audit as claims
from ..abi.errors import AuditFull, Internal
from ..runtime.ipc import KeeperOp
from .deferred import Deferred
from .links import KeeperLink
from .state import Mutation, State

RESERVE = 32


class AuditLog:
    def __init__(self, state: State, keeper: KeeperLink) -> None:
        self.state = state
        self.keeper = keeper
        self._queue: list[tuple[dict[str, Any], Mutation | None, int, Deferred]] = []
        self._busy = False

    def entries(self) -> list[bytes]:
        return list(self.state.map.get("audit", []))

    def next_seq(self) -> int:
        return int(self.state.map.get("audit_next", 1))

    def first_seq(self) -> int:
        """The sequence number of the oldest entry kept (next_seq when none is)."""
        return self.next_seq() - len(self.entries())

    def room(self, reserve: int = RESERVE) -> bool:
        return len(self.entries()) + len(self._queue) < claims.KEPT - reserve

    def append(self, event: dict[str, Any],
               mutate: Mutation | None = None,
               reserve: int = 0) -> Deferred:
        """Record ``event`` and apply ``mutate`` to the state in one commit; resolve to what
        ``mutate`` returned. ZoneError ``audit-full`` if fewer than ``reserve`` places are
        left; a ZoneError from ``mutate`` leaves both the log and the state as they were."""
        done = Deferred()
        self._queue.append((event, mutate, reserve, done))
        self._next()
        return done

    def _next(self) -> None:
        if self._busy or not self._queue:
            return
        event, mutate, reserve, done = self._queue.pop(0)
        if len(self.entries()) >= claims.KEPT - reserve:
            done.resolve(error=AuditFull(
                f"the audit log holds {len(self.entries())} entries: fetch and acknowledge "
                "them first (sez audit NAME --ack)"))
            self._next()
            return
        self._busy = True
        seq = self.next_seq()
        prev = bytes(self.state.map.get("audit_last", claims.GENESIS))

        def commit(signed: dict[str, Any]) -> Deferred:
            entry = bytes(signed["entry"])

            def apply(state: dict[str, Any]) -> Any:
                if int(state.get("audit_next", 1)) != seq:  # appends are serialised here
                    raise Internal("the audit log moved under an append")
                result = mutate(state) if mutate is not None else None
                state["audit"] = list(state.get("audit", [])) + [entry]
                state["audit_next"] = seq + 1
                state["audit_last"] = claims.link(entry)
                return result

            return self.state.update(apply)

        def finished(d: Deferred) -> None:
            self._busy = False
            done.resolve(d.value, d.error)
            self._next()

        self.keeper.call(KeeperOp.AUDIT_ENTRY, {"claims": {
            claims.SEQ: seq, claims.PREV: prev, claims.EVENT: event}}).then(commit).add(finished)

    def fetch(self, after: int, limit: int) -> dict[str, Any]:
        """Up to ``limit`` entries with a sequence number above ``after``."""
        first = self.first_seq()
        skip = max(0, after + 1 - first)
        entries = self.entries()[skip:skip + limit]
        return {"first": first, "next": self.next_seq(), "entries": entries}

    def ack(self, upto: int) -> Deferred:
        """Forget the entries up to sequence number ``upto``: the host has them."""

        def trim(state: dict[str, Any]) -> dict[str, Any]:
            kept = list(state.get("audit", []))
            first = int(state.get("audit_next", 1)) - len(kept)
            drop = max(0, min(len(kept), upto + 1 - first))
            state["audit"] = kept[drop:]
            return {"acknowledged": drop, "first": first + drop}

        return self.state.update(trim)
