"""Jobs: one applet run each, in its own confined process (firmware.runner), with a receipt.

A job's life, all in the monitor's reactor::

    allocate the job counter (store) -> socketpair -> runner forks the confined process ->
    send {files, entry, input} -> answer the applet's calls (sign, log, seal, unseal,
    secret) -> "done" + exit -> receipt from the key keeper -> the caller gets {job, output,
    receipt}

Limits: the runner enforces memory, processes and CPU time; the monitor enforces wall time
(then kills the job's cgroup) and output size (the job socket accepts no larger frame). A job
that raises, crashes or breaks a limit ends in ``applet-failed`` saying why; the zone goes on.
"""

from __future__ import annotations

import collections
import socket
import statistics
import time
from typing import Any, Callable

from ..abi import receipt as receipt_claims
from ..abi import secret, wellformed, wire
from ..abi.applet import Package
from ..abi.errors import (AppletFailed, BadArgs, Code, NoSuchJob, NoSuchSecret, NotOwner,
                          UnknownOp, ZoneError)
from ..abi.jobs import FINAL, TIMED_JOBS, JobState
from ..abi.keys import key_id
from ..runtime.console import log
from ..runtime.ipc import CONFINEMENT_FAILED, EXIT, JOB_DONE, JOB_ERROR, JobCall, KeeperOp
from ..runtime.port import Port
from ..runtime.reactor import Reactor
from .deferred import Deferred
from .links import LOST, KeeperLink, RunnerLink
from .store import ZoneStore

#: Jobs running at once; more wait in order (each holds up to its memory_mb).
MAX_RUNNING = 4
UID_BASE = 20000
UID_SLOTS = 10000
#: Applet log lines per job that reach the console (the rest are counted).
LOG_LINES = 20
#: Seconds a job's last frames may trail its exit before the job is judged without them.
EXIT_GRACE = 1.0
#: Seconds a finished job's receipt waits, at most, for the jobs still running (Receipts).
GATHER = 0.02
#: The steps of a job, each timed from the end of the one before (``stats``: job_phases_ms):
#: the monitor asks the runner, which forks; the process confines itself; receives the job;
#: writes and imports the applet; runs it; its answer reaches the monitor; the receipt is
#: signed. The first mark is the job's creation in the monitor.
PHASES = ("start", "confine", "receive", "load", "run", "report", "receipt")


class Job:
    def __init__(self, jobs: "Jobs", counter: int, package: Package, data: bytes | list[bytes],
                 nonce: bytes) -> None:
        self.created = time.monotonic_ns()
        self.marks: list[int] = []  # from the job's process: firmware.runner.job.run_job
        self.jobs = jobs
        self.id = str(counter)
        self.counter = counter
        self.package = package
        self.input = data
        self.nonce = nonce
        self.result = Deferred()
        self.output: bytes | list[bytes] | None = None
        self.failure: AppletFailed | None = None
        self.exited = False
        self.exit_status: tuple[int, bool] | None = None
        self.log_lines = 0
        limits = package.limits
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.decoder = wire.FrameDecoder(max_payload=limits["output_bytes"] + 4096,
                                          limits=wellformed.INBOUND)
        self.encoder = wire.FrameEncoder()
        self.port = Port(jobs.loop, ours.detach(), f"job {self.id}", self._data, self._eof)
        uid = UID_BASE + counter % UID_SLOTS
        jobs.runner.start(self.id, uid, limits, theirs.detach(),
                          package.measurement if package.warm else None)
        module, function = package.entry
        self._send(wire.Kind.EVENT, {"files": package.files, "entry": [module, function],
                                     ("input" if isinstance(data, bytes) else "inputs"): data})
        self.timer = jobs.loop.call_later(limits["wall_seconds"], self._timeout)

    def _send(self, kind: int, payload: Any) -> None:
        self.port.send(self.encoder.parts(kind, payload))

    def _data(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            if isinstance(item, wire.Fault):
                limit = self.package.limits["output_bytes"]
                self._fail(f"the applet sent more than its output limit ({limit} bytes)"
                           if item.code == Code.FRAME_TOO_LARGE else
                           f"the applet broke the job protocol ({item.code})")
                return
            payload = item.payload if isinstance(item.payload, dict) else {}
            if item.kind == wire.Kind.REQUEST:
                self._call(payload)
            elif payload.get("event") == JOB_DONE:
                batch = not isinstance(self.input, bytes)
                output = payload.get("outputs" if batch else "output")
                pieces = output if batch else [output]
                if not isinstance(pieces, list) or not all(
                        isinstance(piece, bytes) for piece in pieces) or (
                        batch and len(pieces) != len(self.input)):
                    self._fail("the applet's output is not bytes, one for each input")
                elif (size := sum(map(len, pieces))) > self.package.limits["output_bytes"]:
                    self._fail(f"output of {size} bytes exceeds the applet's limit")
                else:
                    self.output = output
                    marks = payload.get("marks")
                    if isinstance(marks, list) and len(marks) == len(PHASES) - 2 and all(
                            isinstance(m, int) for m in marks):
                        self.marks = [self.created, *marks, time.monotonic_ns()]
                    self._finish()
            elif payload.get("event") == JOB_ERROR:  # the job ended itself, and its process
                # (a warm worker) may serve the next: nothing to kill
                self._fail(f"the applet raised: {str(payload.get('message'))[-500:]}",
                           kill=False)

    def _call(self, request: dict[str, Any]) -> None:
        request_id, op, args = request.get("id"), request.get("op"), request.get("args")

        def reply(d: Deferred) -> None:
            if self.port is None:
                return
            if d.error is not None:
                self._send(wire.Kind.RESPONSE, {"id": request_id, "ok": False, "error": {
                    "code": d.error.code, "message": d.error.message}})
            else:
                self._send(wire.Kind.RESPONSE, {"id": request_id, "ok": True, "result": d.value})

        try:
            if args is not None and not isinstance(args, dict):
                raise BadArgs(f"a call's args are a map, not {type(args).__name__}")
            answer = self._answer(op, args or {})
        except ZoneError as exc:
            answer = Deferred.failed(exc)
        answer.add(reply)

    def _answer(self, op: Any, args: dict[str, Any]) -> Deferred:
        """The answer to the applet's call ``op``; ZoneError if it cannot be made."""
        if op == JobCall.SIGN and isinstance(args.get("data"), bytes):
            return self.jobs.keeper.call(KeeperOp.APPLET_SIGN, {
                "measurement": self.package.measurement, "data": args["data"]})
        if op == JobCall.LOG:
            self.log_lines += 1
            if self.log_lines <= LOG_LINES:
                log(f"job {self.id} ({self.package.name}): {_one_line(args.get('message'))}")
            return Deferred.of({})
        if op in (JobCall.SEAL, JobCall.UNSEAL):
            return self._seal(op, args)
        if op == JobCall.SECRET:
            return self._secret(args)
        raise UnknownOp(f"applets may call sign, log, seal, unseal and secret, not {op!r:.80}")

    def _seal(self, op: str, args: dict[str, Any]) -> Deferred:
        """Seal or unseal for this job's applet: the monitor, not the applet, names it (its
        name and version, and the enrolled owner), so no applet can open another's blobs."""
        field = "data" if op == JobCall.SEAL else "blob"
        value = args.get(field)
        if not isinstance(value, bytes):
            raise BadArgs(f"{op} takes {{{field}: bytes}}")
        return self.jobs.keeper.call(
            KeeperOp.SEAL if op == JobCall.SEAL else KeeperOp.UNSEAL,
            {"owner": self._owner("nothing can be sealed"), "name": self.package.name,
             "version": self.package.version, field: value})

    def _owner(self, consequence: str) -> bytes:
        """The key id of the owner this job's applet runs under; NotOwner without one."""
        owner = self.jobs.store.state.map.get("owner")
        if owner is None:
            raise NotOwner(f"no owner is enrolled: {consequence}")
        return key_id(owner)

    def _secret(self, args: dict[str, Any]) -> Deferred:
        """A provisioned secret's value, if its policy admits this job's applet. As for
        sealing, the monitor names the applet (measurement, name, version, the enrolled
        owner); layer 0 checks the policy and opens the blob."""
        name = secret.check_name(args.get("name"))
        entry = self.jobs.store.secrets().get(name)
        if entry is None:
            raise NoSuchSecret(f"no secret {name!r} is provisioned")
        return self.jobs.keeper.call(KeeperOp.SECRET_OPEN, {
            "name": name, "policy": entry["policy"], "blob": entry["blob"],
            "applet": {"measurement": self.package.measurement, "name": self.package.name,
                       "version": self.package.version,
                       "owner": self._owner("no secret is for this applet")}})

    def _eof(self) -> None:
        """The job's socket closed: everything the job sent has been read. If its process
        has ended too, judge it now; otherwise exit() will (or the wall-time timer)."""
        if self.port is not None:
            self.port.close()
            self.port = None  # type: ignore[assignment]
        if self.exit_status is not None:
            self._judge_exit()

    def _timeout(self) -> None:
        self._fail(f"the applet ran longer than wall_seconds "
                   f"({self.package.limits['wall_seconds']} s)")

    def exit(self, status: int, oom: bool) -> None:
        """The runner saw the job's process end (``status`` as os.waitstatus_to_exitcode).
        Its last frames may still be in the socket: judge once the socket is drained (EOF),
        or after EXIT_GRACE if a stray child holds the socket open."""
        self.exited = True
        self.exit_status = (status, oom)
        if self.port is None:
            self._judge_exit()
        else:
            self.jobs.loop.call_later(EXIT_GRACE, self._judge_exit)

    def _judge_exit(self) -> None:
        assert self.exit_status is not None
        status, oom = self.exit_status
        if self.output is None and self.failure is None:
            limits = self.package.limits
            if oom:
                self._fail(f"the applet exceeded its memory ({limits['memory_mb']} MiB)")
            elif status in (-24, -9):  # SIGXCPU, or SIGKILL at the hard CPU limit
                self._fail(f"the applet was killed (signal {-status}): CPU time "
                           f"({limits['cpu_seconds']} s) or another limit")
            elif status < 0:
                self._fail(f"the applet's process died of signal {-status}")
            elif status == CONFINEMENT_FAILED:
                self._fail("the zone could not confine the job's process")
            else:
                self._fail(f"the applet's process exited with status {status} without an answer")
        self._release()

    def _fail(self, message: str, kill: bool = True) -> None:
        if self.failure is not None or self.output is not None:
            return
        self.failure = AppletFailed(message)
        if kill:
            self.jobs.runner.kill(self.id)
        self._close()
        self.result.resolve(error=self.failure)

    def _finish(self) -> None:
        assert self.output is not None
        self._close()
        applet = {"name": self.package.name, "version": self.package.version,
                  "measurement": self.package.measurement}
        claims = {
            receipt_claims.JOB: self.id,
            receipt_claims.JOB_COUNTER: self.counter,
            receipt_claims.APPLET: applet,
            receipt_claims.INPUT: receipt_claims.digest(self.input),
            receipt_claims.OUTPUT: receipt_claims.digest(self.output),
            receipt_claims.NONCE: self.nonce,
        }
        if not isinstance(self.input, bytes):
            claims[receipt_claims.BATCH] = len(self.input)
        output = self.output

        def signed(receipt: dict[str, Any]) -> dict[str, Any]:
            if self.marks:
                self.jobs.timed(self.marks + [time.monotonic_ns()])
            return {"job": self.id, "applet": applet, "receipt": receipt["receipt"],
                    ("output" if isinstance(output, bytes) else "outputs"): output}

        self.jobs.receipts.sign(claims).then(signed).add(
            lambda d: self.result.resolve(d.value, d.error))

    def _close(self) -> None:
        self.timer.cancel()
        if self.port is not None:
            self.port.close()
            self.port = None  # type: ignore[assignment]
        self._release()

    def _release(self) -> None:
        if self.exited and self.port is None:
            self.jobs.active.pop(self.id, None)


class Queued:
    """A job waiting for a slot; ``detached`` jobs live in the outbox (store) as well."""

    __slots__ = ("counter", "package", "data", "nonce", "result", "detached")

    def __init__(self, counter: int, package: Package, data: bytes | list[bytes], nonce: bytes,
                 detached: bool) -> None:
        self.counter, self.package, self.data, self.nonce = counter, package, data, nonce
        self.result = Deferred()
        self.detached = detached


class Receipts:
    """Receipts signed in groups, as BBRAM commits are: the jobs that finish while layer 0
    signs wait, and go together in its next signature (abi.receipt: one tree, one signature,
    a receipt for each job), up to SIGNED_MAX at a time. A finished job also waits, at most
    GATHER seconds, while other jobs are still running (``busy``): on one vCPU, layer 0's
    signature holds the CPU, so few jobs would finish during it. A job alone waits for none."""

    def __init__(self, loop: Reactor, keeper: KeeperLink, busy: Callable[[], bool]) -> None:
        self.loop = loop
        self.keeper = keeper
        self.busy = busy
        self._pending: list[tuple[dict[str, Any], Deferred]] = []
        self._signing = False
        self._timer: Any = None
        self.signatures = 0

    def sign(self, claims: dict[str, Any]) -> Deferred:
        """Resolve to ``{receipt}`` for this job's claims."""
        done = Deferred()
        self._pending.append((claims, done))
        self.poke()
        return done

    def poke(self) -> None:
        """Sign what waits, unless layer 0 is signing, or jobs still running may join it."""
        if self._signing or not self._pending:
            return
        if self.busy() and len(self._pending) < receipt_claims.SIGNED_MAX:
            if self._timer is None:
                self._timer = self.loop.call_later(GATHER, self._gathered)
            return
        self._sign_pending()

    def _gathered(self) -> None:
        self._timer = None
        if not self._signing and self._pending:
            self._sign_pending()

    def _sign_pending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._pending[:receipt_claims.SIGNED_MAX]
        del self._pending[:len(batch)]
        self._signing = True

        def signed(d: Deferred) -> None:
            self._signing = False
            self.signatures += d.error is None
            for i, (_, done) in enumerate(batch):
                done.resolve(None if d.error else {"receipt": d.value["receipts"][i]}, d.error)
            self.poke()

        self.keeper.call(KeeperOp.RECEIPTS, {"jobs": [claims for claims, _ in batch]}).add(signed)


class Jobs:
    """Runs jobs MAX_RUNNING at a time, in order. ``run`` is interactive (the answer carries
    the result); ``submit`` is detached: the job and its result live in the outbox (BBRAM)
    until the host acknowledges the result, whether or not a host is attached meanwhile."""

    def __init__(self, loop: Reactor, keeper: KeeperLink, store: ZoneStore) -> None:
        self.loop = loop
        self.keeper = keeper
        self.store = store
        self.active: dict[str, Job] = {}
        self.runner = RunnerLink(loop, self._event)
        self.receipts = Receipts(loop, keeper, self._busy)
        self.waiting: list[Queued] = []
        self.waiters: dict[str, list[Deferred]] = {}
        self.running = 0
        self.times: collections.deque[list[int]] = collections.deque(maxlen=TIMED_JOBS)
        self.finished = 0
        self.failed = 0
        self.interrupted = 0

    def _busy(self) -> bool:
        """Some job is still running (no output and no failure yet)."""
        return any(job.output is None and job.failure is None for job in self.active.values())

    def timed(self, marks: list[int]) -> None:
        """A finished job's marks (ns): its creation, then the end of each of PHASES."""
        self.times.append(marks)

    def phase_medians(self) -> dict[str, float]:
        """Milliseconds each of PHASES took, and ``total``: medians over the last TIMED_JOBS
        jobs that succeeded (empty before the first)."""
        if not self.times:
            return {}
        steps = [[(m[i + 1] - m[i]) / 1e6 for m in self.times] for i in range(len(PHASES))]
        medians = {name: round(statistics.median(s), 3) for name, s in zip(PHASES, steps)}
        medians["total"] = round(statistics.median((m[-1] - m[0]) / 1e6 for m in self.times), 3)
        medians["jobs"] = len(self.times)
        return medians

    def run(self, package: Package, data: bytes | list[bytes], nonce: bytes) -> Deferred:
        """Run ``package`` on ``data`` (a list: a batch job) once a slot is free; resolve to
        the job's result."""

        def queue(counter: int) -> Deferred:
            queued = Queued(counter, package, data, nonce, detached=False)
            self._queue(queued)
            return queued.result

        return self.store.allocate_job().then(queue)

    def submit(self, package: Package, data: bytes, nonce: bytes, key: bytes | None,
               scheduled: dict[str, Any] | None = None) -> Deferred:
        """Queue a detached job; resolve to {job, state, duplicate} once it is durable. A
        retried submission (same ``key``) gets the first one's job, and runs nothing.
        ``scheduled`` marks a scheduled run (firmware.monitor.schedules)."""
        if key is not None:
            found = self.store.find_key(key)
            if found is not None:
                return Deferred.of({"job": found[0], "state": found[1], "duplicate": True})

        def queued(job: str) -> dict[str, Any]:
            self._queue(Queued(int(job), package, data, nonce, detached=True))
            return {"job": job, "state": JobState.QUEUED, "duplicate": False}

        return self.store.submit(package, data, nonce, key, scheduled).then(queued)

    def recover(self) -> list[str]:
        """After a boot: queue the outbox's queued jobs again; a job that was running when the
        power went is ``interrupted``, or queued again if its applet is idempotent. Returns
        the jobs queued again."""
        requeued = []
        for job, entry in sorted(self.store.outbox().items(), key=lambda kv: int(kv[0])):
            state = entry["state"]
            if state not in (JobState.QUEUED, JobState.RUNNING):
                continue
            package = self.store.packages.get(str(entry["applet"]))
            if package is not None and package.measurement == entry["measurement"] and (
                    state == JobState.QUEUED or package.idempotent):
                self._queue(Queued(int(job), package, entry["input"], entry["nonce"],
                                   detached=True))
                requeued.append(job)
                continue
            self.interrupted += 1
            why = ("the job was running when the power went" if state == JobState.RUNNING else
                   "the applet it was queued for has been replaced")
            self.store.set_job(job, state=JobState.INTERRUPTED, input=b"", finished=int(time.time()),
                               error={"code": Code.INTERRUPTED, "message": why}
                               ).add(self._notifier(job))
        return requeued

    def _queue(self, queued: Queued) -> None:
        self.waiting.append(queued)
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self.waiting and self.running < MAX_RUNNING:
            queued = self.waiting.pop(0)
            self.running += 1
            if queued.detached:  # durable "running" first: a power cut then means interrupted
                self.store.set_job(str(queued.counter), state=JobState.RUNNING).add(
                    self._launcher(queued))
            else:
                self._launch(queued)

    def _launcher(self, queued: Queued) -> Callable[[Deferred], None]:
        return lambda _: self._launch(queued)

    def _launch(self, queued: Queued) -> None:
        job = Job(self, queued.counter, queued.package, queued.data, queued.nonce)
        self.active[job.id] = job
        job.result.add(self._when_done(queued))

    def _when_done(self, queued: Queued) -> Callable[[Deferred], None]:
        def done(job: Deferred) -> None:
            self.running -= 1
            if job.error is None:
                self.finished += 1
            else:
                self.failed += 1
            if queued.detached:
                self._record(str(queued.counter), job)
            queued.result.resolve(job.value, job.error)
            self._start_waiting()
            self.receipts.poke()  # a job that failed may have been the one receipts waited on

        return done

    def _record(self, job: str, result: Deferred) -> None:
        now = int(time.time())
        if result.error is None:
            change = {"state": JobState.DONE, "output": result.value["output"],
                      "receipt": result.value["receipt"], "input": b"", "finished": now}
        else:
            change = {"state": JobState.FAILED, "input": b"", "finished": now,
                      "error": {"code": result.error.code, "message": result.error.message}}
        self.store.set_job(job, **change).add(self._notifier(job))

    def result(self, job: str, wait: float) -> Deferred:
        """The outbox entry of ``job``; with ``wait``, once it is final or ``wait`` s passed."""
        entry = self.store.outbox().get(job)
        if entry is None:
            raise NoSuchJob(f"no job {job!r:.80} in the outbox (never submitted, or acknowledged)")
        if entry["state"] in FINAL or wait <= 0:
            return Deferred.of(_answer(job, entry))
        waiter = Deferred()
        self.waiters.setdefault(job, []).append(waiter)
        self.loop.call_later(wait, lambda: waiter.resolve(_answer(job, self.store.outbox().get(
            job, entry))))
        return waiter

    def _notifier(self, job: str) -> Callable[[Deferred], None]:
        return lambda _: self._notify(job)

    def _notify(self, job: str) -> None:
        entry = self.store.outbox().get(job)
        for waiter in self.waiters.pop(job, []):
            if entry is not None:
                waiter.resolve(_answer(job, entry))

    def listing(self) -> list[dict[str, Any]]:
        return [{"job": job, "applet": e["applet"], "state": e["state"],
                 "submitted": e.get("submitted"), "finished": e.get("finished"),
                 **({"schedule": e["schedule"], "run": e["run"]} if e.get("schedule") else {}),
                 **({"error": e["error"]} if e.get("error") else {})}
                for job, e in sorted(self.store.outbox().items(), key=lambda kv: int(kv[0]))]

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        job = self.active.get(str(event.get("job")))
        if kind == EXIT and job is not None:
            job.exit(int(event.get("status", 0)), bool(event.get("oom")))
        elif kind == LOST:
            for active in list(self.active.values()):
                active.exited = True
                active._fail("the applet runner went away")


def _one_line(message: Any) -> str:
    """An applet's log message as it may reach the console: at most 300 characters, on one
    line, control characters replaced (an applet cannot forge the zone's own lines)."""
    text = str(message)[:300]
    return text if text.isprintable() else "".join(c if c.isprintable() else "\ufffd"
                                                    for c in text)


def _answer(job: str, entry: dict[str, Any]) -> dict[str, Any]:
    answer = {"job": job, "state": entry["state"], "applet": entry["applet"]}
    for key in ("output", "receipt", "error"):
        if entry.get(key) is not None:
            answer[key] = entry[key]
    return answer
