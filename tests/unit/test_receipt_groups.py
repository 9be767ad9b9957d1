"""How the monitor groups receipts (firmware.monitor.jobs.Receipts), without a zone: a fake
layer 0 that answers when told, a fake loop whose timers fire when told."""

from __future__ import annotations

from typing import Any, Callable

from firmware.monitor.deferred import Deferred
from firmware.monitor.jobs import GATHER, Receipts


class Loop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[[], None], list[bool]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        cancelled = [False]
        self.timers.append((delay, callback, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True
        return Handle()

    def fire(self) -> None:
        timers, self.timers = self.timers, []
        for _, callback, cancelled in timers:
            if not cancelled[0]:
                callback()


class Keeper:
    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, Any]], Deferred]] = []

    def call(self, op: str, args: dict[str, Any]) -> Deferred:
        done = Deferred()
        self.calls.append((args["jobs"], done))
        return done

    def answer(self) -> None:
        jobs, done = self.calls[-1]
        done.resolve({"receipts": [f"receipt of {job['n']}".encode() for job in jobs]})


def receipts(busy: list[bool]) -> tuple[Receipts, Keeper, Loop]:
    loop, keeper = Loop(), Keeper()
    return Receipts(loop, keeper, lambda: busy[0]), keeper, loop  # type: ignore[arg-type]


def test_a_job_alone_is_signed_at_once() -> None:
    group, keeper, _ = receipts([False])
    got = group.sign({"n": 1})
    assert [len(jobs) for jobs, _ in keeper.calls] == [1]
    keeper.answer()
    assert got.value == {"receipt": b"receipt of 1"}


def test_receipts_wait_for_the_jobs_still_running() -> None:
    busy = [True]
    group, keeper, loop = receipts(busy)
    first = group.sign({"n": 1})
    second = group.sign({"n": 2})
    assert keeper.calls == [] and loop.timers[0][0] == GATHER
    busy[0] = False  # the last running job finishes: its receipt joins the group at once
    third = group.sign({"n": 3})
    assert [[job["n"] for job in jobs] for jobs, _ in keeper.calls] == [[1, 2, 3]]
    keeper.answer()
    assert [d.value["receipt"] for d in (first, second, third)] == [
        b"receipt of 1", b"receipt of 2", b"receipt of 3"]
    loop.fire()  # the gathering timer was cancelled: nothing more is signed
    assert len(keeper.calls) == 1


def test_a_receipt_waits_at_most_the_gathering_time() -> None:
    group, keeper, loop = receipts([True])  # jobs run on and on
    group.sign({"n": 1})
    assert keeper.calls == []
    loop.fire()
    assert [len(jobs) for jobs, _ in keeper.calls] == [1]


def test_receipts_that_come_while_layer_0_signs_go_in_its_next_signature() -> None:
    busy = [False]
    group, keeper, loop = receipts(busy)
    group.sign({"n": 1})
    group.sign({"n": 2})
    group.sign({"n": 3})
    assert [len(jobs) for jobs, _ in keeper.calls] == [1]
    keeper.answer()
    assert [[job["n"] for job in jobs] for jobs, _ in keeper.calls] == [[1], [2, 3]]
