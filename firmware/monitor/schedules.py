"""Scheduled work: owner-signed schedules the zone runs with or without a host (abi.schedule).

Each schedule runs its applet on its input at once when it is installed or the zone boots, then
every ``every`` seconds. A run is a detached job (firmware.monitor.jobs) whose result waits in the
outbox like any other, and whose end is committed together with an audit-log entry
(firmware.monitor.audit), so every run that ends is in the log. A tick is skipped, and counted in the
next run's entry, when the previous run is still going, the applet with the pinned measurement
is not loaded, or the outbox or the audit log has no room.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import cbor2

from ..abi import schedule as abi
from ..abi.errors import BadArgs, NoSuchSchedule, NotOwner, ZoneError
from ..abi.jobs import FINAL
from ..runtime.console import log
from ..runtime.reactor import Reactor, Timer
from .audit import RESERVE
from .deferred import Deferred
from .jobs import Jobs
from .store import ZoneStore


class Schedules:
    def __init__(self, loop: Reactor, store: ZoneStore, jobs: Jobs) -> None:
        self.loop = loop
        self.store = store
        self.jobs = jobs
        self.timers: dict[str, Timer] = {}
        self.job: dict[str, str] = {}  # schedule -> its latest run's job
        self.skipped: dict[str, int] = {}
        self.why: dict[str, str] = {}  # schedule -> why its last tick was skipped

    def specs(self) -> dict[str, dict[str, Any]]:
        return dict(self.store.state.map.get("schedules", {}))

    def start(self, requeued: list[str]) -> None:
        """After a boot: every persisted schedule runs again, its first run at once, unless
        a run of it is among the ``requeued`` jobs (firmware.monitor.jobs.Jobs.recover) and still
        going: runs of one schedule never overlap."""
        specs = self.specs()
        outbox = self.store.outbox()
        for job in requeued:
            if outbox.get(job, {}).get("schedule") in specs:
                self.job[outbox[job]["schedule"]] = job
        for name in sorted(specs):
            self._arm(name, 0.0)

    # -- changes by the owner ---------------------------------------------------------------------

    def change(self, signed: Any, op: str) -> Deferred:
        """Install (op ``schedule``) or remove (``unschedule``) the schedule in ``signed``."""

        def check(result: dict[str, Any]) -> Deferred:
            try:
                document = cbor2.loads(result["payload"])
            except (ValueError, TypeError) as exc:  # cbor2's decode errors are ValueErrors
                raise BadArgs(f"the schedule change is not CBOR: {exc}") from None
            change = abi.parse(document)
            epoch = int(self.store.state.map.get("schedule_epoch", 0))
            if change.op != op or change.ueid != self.store.ueid or change.epoch != epoch:
                raise NotOwner(f"the owner signed a {change.op} for another device or epoch "
                               f"(this is {self.store.ueid.hex()}, epoch {epoch})")
            return self._apply(change)

        return self.store.verify_owner(signed).then(check)

    def _apply(self, change: abi.Change) -> Deferred:
        specs = self.specs()
        if change.op == "unschedule" and change.name not in specs:
            raise NoSuchSchedule(f"no schedule {change.name!r}")
        if change.op == "schedule" and change.name not in specs and len(specs) >= abi.MAX_SCHEDULES:
            raise BadArgs(f"the zone keeps at most {abi.MAX_SCHEDULES} schedules")
        if change.op == "schedule":
            event = {"kind": "schedule", "name": change.name, "applet": change.applet,
                     "measurement": change.measurement, "every": change.every,
                     "input": hashlib.sha384(change.input).digest()}
        else:
            event = {"kind": "unschedule", "name": change.name}

        def mutate(state: dict[str, Any]) -> dict[str, Any]:
            if int(state.get("schedule_epoch", 0)) != change.epoch:
                raise NotOwner("the schedules changed meanwhile")
            schedules = dict(state.get("schedules", {}))
            if change.op == "schedule":
                schedules[change.name] = {"applet": change.applet, "every": change.every,
                                          "measurement": change.measurement,
                                          "input": change.input, "runs": 0}
            else:
                schedules.pop(change.name, None)
            state["schedules"] = schedules
            state["schedule_epoch"] = change.epoch + 1
            return {"name": change.name, "op": change.op, "epoch": change.epoch + 1}

        def applied(result: dict[str, Any]) -> dict[str, Any]:
            self._disarm(change.name)
            if change.op == "schedule":
                self._arm(change.name, 0.0)
            log(f"{change.op} {change.name}" + (f": {change.applet} every {change.every} s"
                                                 if change.op == "schedule" else ""))
            return result

        return self.store.audit.append(event, mutate).then(applied)

    # -- running --------------------------------------------------------------------------------

    def _arm(self, name: str, delay: float) -> None:
        self.timers[name] = self.loop.call_later(delay, self._tick, name)

    def _disarm(self, name: str) -> None:
        timer = self.timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self.skipped.pop(name, None)
        self.why.pop(name, None)

    def _tick(self, name: str) -> None:
        spec = self.specs().get(name)
        if spec is None:
            return
        # the next tick is due ``every`` after this one was, not after it ran: no drift
        due = self.timers[name].when + float(spec["every"])
        self._arm(name, max(0.0, due - time.monotonic()))
        package = self.store.packages.get(spec["applet"])
        why = None
        if self._running(name):
            why = "the previous run is still going"
        elif package is None or package.measurement != spec["measurement"]:
            why = f"applet {spec['applet']} with the scheduled measurement is not loaded"
        elif not self.store.audit.room(RESERVE):
            why = "the audit log is full"
        if why is None:
            assert package is not None
            run = int(spec.get("runs", 0)) + 1
            skipped = self.skipped.get(name, 0)
            scheduled = {"schedule": name, "run": run, "skipped": skipped}
            try:
                submitted = self.jobs.submit(package, spec["input"], f"{name}#{run}".encode(),
                                             None, scheduled)
            except ZoneError as exc:  # outbox-full, or BBRAM unusable
                why = exc.message
            else:
                self.skipped[name] = 0
                self.why.pop(name, None)
                self.job[name] = "submitting"
                submitted.add(lambda d: self._submitted(name, d, skipped))
                return
        self.skipped[name] = self.skipped.get(name, 0) + 1
        if self.why.get(name) != why:
            log(f"schedule {name}: skipping runs: {why}")
        self.why[name] = why

    def _submitted(self, name: str, d: Deferred, skipped_before: int) -> None:
        if d.error is not None:  # the run was never queued: it counts as skipped too
            self.job.pop(name, None)
            self.why[name] = d.error.message
            self.skipped[name] = self.skipped.get(name, 0) + skipped_before + 1
        else:
            self.job[name] = str(d.value["job"])

    def _running(self, name: str) -> bool:
        job = self.job.get(name)
        if job is None:
            return False
        if job == "submitting":
            return True
        entry = self.store.outbox().get(job)
        return entry is not None and entry["state"] not in FINAL

    def listing(self) -> dict[str, Any]:
        schedules = []
        for name, spec in sorted(self.specs().items()):
            timer = self.timers.get(name)
            schedules.append({
                "name": name, "applet": spec["applet"], "measurement": spec["measurement"],
                "every": spec["every"], "input": hashlib.sha384(spec["input"]).digest(),
                "runs": int(spec.get("runs", 0)), "skipped": self.skipped.get(name, 0),
                "skipping": self.why.get(name), "last_job": self.job.get(name),
                "next_in": round(max(0.0, timer.when - time.monotonic()), 3) if timer else None})
        return {"ueid": self.store.ueid, "epoch": int(self.store.state.map.get("schedule_epoch", 0)),
                "schedules": schedules}
