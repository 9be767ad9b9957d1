"""The zone's persistent state as the monitor holds it: one CBOR map, kept in BBRAM by the key
keeper (firmware.layer0.bbram), changed only by committed updates.

Updates are serialised: each starts from the state the one before it committed, and the
monitor's copy changes only once BBRAM holds the new state durably. Updates that arrive while
a commit is in flight go together in the next one (group commit). The map's keys are listed in
firmware.monitor.store, which owns the policy on them.

A commit sends layer 0 what changed (``diff``), which it appends to its log; only when the log
has no room for it (or the device is new) does a commit send the whole state, as a checkpoint.
So a commit costs what it changes: a job's record, not the outbox it joins. A change is a CBOR
map that names what changed, to the second level of the map::

    {"put":  {key: value},                    top-level keys set to a new value
     "drop": [key],                           top-level keys removed
     "in":   {key: {"put": {k: v}, "drop": [k]}},   changes inside a map-valued key
     "tail": {key: {"from": n, "add": [...]}}}  a list that lost its first n items and
                                               gained items at its end (the audit log)

Updates never change a value in place: they put new values (a new map for a changed map), so
an unchanged value is the very same object in the old state and the new one (``is``), and
finding what changed costs a look at each key of the maps that changed. At boot, the checkpoint
and then each logged change, in order (``apply``), give the state back.
"""

from __future__ import annotations

from typing import Any, Callable

import cbor2

from ..abi.errors import BbramError, Internal, ZoneError
from ..abi.evidence import BbramStatus
from ..runtime.ipc import KeeperOp
from .deferred import Deferred
from .links import KeeperLink

__all__ = ["State", "Mutation"]

#: A change to the state map: applied to a copy, committed if it does not raise ZoneError;
#: what it returns is what the update resolves to.
Mutation = Callable[[dict[str, Any]], Any]


class State:
    def __init__(self, keeper: KeeperLink) -> None:
        self.keeper = keeper
        self.map: dict[str, Any] = {}
        self.status: str = BbramStatus.LOADING
        self.commits = 0
        self.room = 0  # the largest change layer 0's log takes now (0: commit a checkpoint)
        self._pending: list[tuple[Mutation, Deferred]] = []
        self._committing = False

    def loaded(self, status: str, state: dict[str, Any], changes: list[dict[str, Any]],
               room: int) -> None:
        """What the key keeper read from BBRAM at boot: the checkpoint, the changes logged
        since, and the room left in the log."""
        self.status = status
        self.map = dict(state)
        for change in changes:
            apply(self.map, change)
        self.room = room

    @property
    def usable(self) -> bool:
        return self.status in (BbramStatus.OK, BbramStatus.FRESH)

    def require(self) -> None:
        """BbramError unless the state can be used and changed."""
        if not self.usable:
            raise BbramError(f"BBRAM is {self.status}: the zone's state cannot be used")

    def update(self, mutate: Mutation) -> Deferred:
        """Apply ``mutate`` to the state and commit it; resolve to what ``mutate`` returned
        once BBRAM holds it. An update that raises ZoneError fails alone and changes nothing."""
        done = Deferred()
        self._pending.append((mutate, done))
        if not self._committing:
            self._commit_pending()
        return done

    def _commit_pending(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            self._committing = False
            return
        self._committing = True
        new = dict(self.map)
        applied: list[tuple[Deferred, Any]] = []
        for mutate, done in batch:
            trial = dict(new)
            try:
                self.require()
                result = mutate(trial)
            except ZoneError as exc:
                done.resolve(error=exc)
                continue
            new = trial
            applied.append((done, result))
        change = diff(self.map, new)
        if not change:  # nothing to write: what BBRAM holds stands
            for done, result in applied:
                done.resolve(result)
            self._commit_pending()
            return

        def committed(d: Deferred) -> None:
            if d.error is None:
                self.map = new
                self.status = BbramStatus.OK
                self.commits += 1
                self.room = int(d.value["room"])
            for done, result in applied:
                done.resolve(result, d.error)
            self._commit_pending()

        try:  # encoded once, here: the keeper seals these bytes as they are
            encoded = cbor2.dumps(change)
            args = ({"change": encoded} if len(encoded) <= self.room else
                    {"state": cbor2.dumps(new)})
            sent = self.keeper.call(KeeperOp.BBRAM_COMMIT, args)
        except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:  # a zone bug
            sent = Deferred.failed(Internal(f"state not encodable: {exc}"[:200]))
        sent.add(committed)


_MISSING = object()


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What turns ``old`` into ``new`` (the change format above); {} if nothing."""
    put: dict[str, Any] = {}
    inner: dict[str, Any] = {}
    tail: dict[str, Any] = {}
    for key, value in new.items():
        was = old.get(key, _MISSING)
        if was is value:
            continue
        if isinstance(was, dict) and isinstance(value, dict):
            changed = {k: v for k, v in value.items() if was.get(k, _MISSING) is not v}
            dropped = [k for k in was if k not in value]
            if changed or dropped:
                inner[key] = {"put": changed, "drop": dropped}
        elif isinstance(was, list) and isinstance(value, list) and (
                moved := _moved(was, value)) is not None:
            if moved != (0, len(value)):
                tail[key] = {"from": moved[0], "add": value[moved[1]:]}
        else:
            put[key] = value
    dropped = [key for key in old if key not in new]
    return {name: part for name, part in (("put", put), ("drop", dropped), ("in", inner),
                                          ("tail", tail)) if part}


def _moved(old: list[Any], new: list[Any]) -> tuple[int, int] | None:
    """(n, kept) if ``new`` is ``old`` without its first n items (keeping the other ``kept``,
    the same objects: ``is``) and with items added after them, else None."""
    start = next((i for i, item in enumerate(old) if new and item is new[0]), len(old))
    kept = len(old) - start
    if kept > len(new) or any(a is not b for a, b in zip(old[start:], new)):
        return None
    return start, kept


def apply(state: dict[str, Any], change: dict[str, Any]) -> None:
    """Make ``change`` (from ``diff``) to ``state``, in place."""
    for key in change.get("drop", ()):
        state.pop(key, None)
    for key, part in change.get("in", {}).items():
        value = dict(state.get(key) or {})
        for k in part.get("drop", ()):
            value.pop(k, None)
        value.update(part.get("put", {}))
        state[key] = value
    for key, part in change.get("tail", {}).items():
        state[key] = list(state.get(key) or [])[part["from"]:] + list(part["add"])
    state.update(change.get("put", {}))
