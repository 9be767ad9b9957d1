"""The zone's persistent state as the monitor holds it: one CBOR map, kept in BBRAM by the key
keeper (firmware.layer0.bbram), changed only by committed updates.

Updates are serialised: each starts from the state the one before it committed, and the
monitor's copy changes only once BBRAM holds the new state durably. Updates that arrive while
a commit is in flight go together in the next one (group commit). The map's keys are listed in
firmware.monitor.store, which owns the policy on them.
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
        self._pending: list[tuple[Mutation, Deferred]] = []
        self._committing = False

    def loaded(self, status: str, state: dict[str, Any]) -> None:
        """What the key keeper read from BBRAM at boot."""
        self.status = status
        self.map = dict(state)

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
        if not applied:
            self._commit_pending()
            return

        def committed(d: Deferred) -> None:
            if d.error is None:
                self.map = new
                self.status = BbramStatus.OK
                self.commits += 1
            for done, result in applied:
                done.resolve(result, d.error)
            self._commit_pending()

        try:  # encoded once, here: the keeper seals these bytes as they are
            sent = self.keeper.call(KeeperOp.BBRAM_COMMIT, {"state": cbor2.dumps(new)})
        except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:  # a zone bug
            sent = Deferred.failed(Internal(f"state not encodable: {exc}"[:200]))
        sent.add(committed)
