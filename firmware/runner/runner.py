"""The applet runner: a clean process that forks one isolated child per job.

PID 1 forks it before anything else holds a secret, so what a job inherits is only this
package and the runtime. It serves the monitor on a root-only unix socket
(firmware.runtime.ipc)::

    monitor -> runner   {op: "start", job, uid, limits, warm} + the job's socket (SCM_RIGHTS)
                        {op: "kill", job}
    runner -> monitor   {event: "exit", job, status, oom}

Each job runs in its own process: its own cgroup (memory.max, pids.max; cgroup.kill ends every
process it made), an unprivileged uid of its own, no supplementary groups, CPU-time and file
rlimits, stdio on /dev/null, a private 0700 work directory, only the job socket open, and no
capability (the runner keeps only CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_DAC_OVERRIDE, its
bounding set is empty: firmware.runtime.caps; setresuid() clears the rest). The applet reaches the zone only through that socket (firmware.runner.job.ZoneAPI): the monitor
answers ``sign`` (with the applet's own key, held by the key keeper) and ``log``.

**Warm workers.** An applet whose manifest says ``warm = true`` (``warm`` above is then its
measurement) runs in a long-lived worker instead: a job process confined the same way, which
serves that applet's jobs one after another (firmware.runner.job.serve_warm), so a job costs
no fork, no confinement and no import. The runner hands a worker each job's socket over the
worker's own socket pair, and an idle worker of the applet takes the next job; a job that
finds none gets a new worker, so up to the monitor's jobs in flight run at once. What a warm
applet gives up: its jobs share a process, so what one job leaves in memory (its input, its
globals) the next of the same applet can read. Other applets, and every cold job, are as
isolated as before. The worker's cgroup limits memory and processes for all its jobs; CPU
time and wall time are each job's own. A worker killed (wall time, CPU time, memory) takes
its job with it and is not reused; at most IDLE_WARM idle workers are kept, the oldest
going first.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import time
from typing import Any, Callable

import cbor2

from ..runtime.console import log, log_exception
from ..runtime.ipc import CONFINEMENT_FAILED, EXIT, RUNNER_SOCKET, RunnerOp, listen
from ..runtime.process import foreground
from ..runtime.reactor import Reactor
from .job import run_job, serve_warm  # imported here: a job's process starts with them

CGROUP_ROOT = "/sys/fs/cgroup"
JOBS_CGROUP = f"{CGROUP_ROOT}/sez-jobs"
WORK_ROOT = "/tmp/sez-jobs"
#: Memory kept for the zone's own processes (PID 1, keeper, runner, monitor, page cache).
ZONE_RESERVE = 192 << 20
#: Idle warm workers kept, over every applet.
IDLE_WARM = 4
#: Warm workers' uids: a range of their own, above the monitor's for jobs (20000-29999), so
#: a worker never shares its uid with a cold job of another applet.
WARM_UID_BASE, WARM_UID_SLOTS = 30000, 10000


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


class Warm:
    """A warm worker: its applet (measurement), process, socket, cgroup, work directory, and
    the job it runs now (None when idle)."""

    __slots__ = ("measurement", "pid", "pidfd", "control", "cgroup", "work", "job")

    def __init__(self, measurement: bytes, pid: int, pidfd: int, control: socket.socket,
                 cgroup: str, work: str) -> None:
        self.measurement, self.pid, self.pidfd, self.control = measurement, pid, pidfd, control
        self.cgroup, self.work = cgroup, work
        self.job: str | None = None


class Runner:
    def __init__(self, loop: Reactor) -> None:
        self.loop = loop
        self.conn: socket.socket | None = None
        self.jobs: dict[str, str] = {}  # job -> the cgroup that holds it
        self.idle: list[Warm] = []  # oldest first
        self.workers = 0

    def setup(self) -> None:
        """Set up the jobs' cgroup (cgroup2 is mounted by /init: the runner has no
        CAP_SYS_ADMIN) and listen; OSError if that fails (PID 1 then restarts the runner)."""
        if not os.path.exists(f"{CGROUP_ROOT}/cgroup.controllers"):
            log(f"runner: cgroup2 is not mounted on {CGROUP_ROOT}")
        _write(f"{CGROUP_ROOT}/cgroup.subtree_control", "+memory +pids")
        os.makedirs(JOBS_CGROUP, exist_ok=True)
        _write(f"{JOBS_CGROUP}/cgroup.subtree_control", "+memory +pids")
        # All jobs together may use the memory the zone's own processes do not need: a
        # burst of jobs can exhaust their budget, never the zone.
        _write(f"{JOBS_CGROUP}/memory.max", str(_jobs_memory_budget()))
        os.makedirs(WORK_ROOT, mode=0o711, exist_ok=True)
        server = listen(RUNNER_SOCKET)
        server.setblocking(False)
        self.server = server
        self.loop.add_reader(server.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.server.accept()
        except BlockingIOError:
            return
        if self.conn is not None:  # a restarted monitor replaces the old one
            self.loop.remove_reader(self.conn.fileno())
            self.conn.close()
        conn.setblocking(False)
        self.conn = conn
        self.loop.add_reader(conn.fileno(), self._readable)

    def _send(self, message: dict[str, Any]) -> None:
        if self.conn is not None:
            try:
                self.conn.send(cbor2.dumps(message))
            except OSError as exc:
                log(f"runner: cannot tell the monitor {message.get('event')}: {exc}")

    def _readable(self) -> None:
        assert self.conn is not None
        try:
            data, fds, _, _ = socket.recv_fds(self.conn, 1 << 16, 1)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            self.loop.remove_reader(self.conn.fileno())
            self.conn.close()
            self.conn = None
            for fd in fds:
                os.close(fd)
            return
        try:
            message = cbor2.loads(data)
            if message["op"] == RunnerOp.START and len(fds) == 1:
                warm = message.get("warm")
                if isinstance(warm, bytes):
                    self._start_warm(str(message["job"]), message["limits"], fds[0], warm)
                else:
                    self._start(str(message["job"]), int(message["uid"]), message["limits"],
                                fds[0])
            elif message["op"] == RunnerOp.KILL:
                self._kill(str(message["job"]))
            else:
                raise ValueError(f"unexpected message {message!r:.80}")
        except (ValueError, KeyError, TypeError, OSError):  # a bad message, or set-up failed
            log_exception("runner: bad request")
            for fd in fds:
                os.close(fd)

    def _cgroup(self, name: str, uid: int, limits: dict[str, int]) -> tuple[str, str]:
        """A new cgroup with ``limits`` and a work directory owned by ``uid``."""
        cgroup = f"{JOBS_CGROUP}/{name}"
        work = f"{WORK_ROOT}/{name}"
        os.makedirs(cgroup, exist_ok=True)
        _write(f"{cgroup}/memory.max", str(limits["memory_mb"] << 20))
        if os.path.exists(f"{cgroup}/memory.swap.max"):
            _write(f"{cgroup}/memory.swap.max", "0")
        _write(f"{cgroup}/pids.max", str(limits["processes"]))
        os.makedirs(work, mode=0o700, exist_ok=True)
        os.chown(work, uid, uid)
        return cgroup, work

    def _start(self, job: str, uid: int, limits: dict[str, int], fd: int) -> None:
        cgroup, work = self._cgroup(f"job-{job}", uid, limits)
        pid = os.fork()
        if pid == 0:
            _child(fd, cgroup, work, uid, limits)
        os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.jobs[job] = cgroup
        self.loop.add_reader(pidfd, lambda: self._exited(job, pid, pidfd, work))

    def _start_warm(self, job: str, limits: dict[str, int], fd: int,
                    measurement: bytes) -> None:
        worker = next((w for w in self.idle if w.measurement == measurement), None)
        if worker is None:
            worker = self._spawn_warm(limits, measurement)
        else:
            self.idle.remove(worker)
        worker.job = job
        self.jobs[job] = worker.cgroup
        try:
            socket.send_fds(worker.control, [f"{limits['cpu_seconds']} "
                                             f"{limits['wall_seconds']}".encode()], [fd])
        except OSError:  # the worker is dying: its exit ends the job
            pass
        finally:
            os.close(fd)

    def _spawn_warm(self, limits: dict[str, int], measurement: bytes) -> Warm:
        self.workers += 1
        uid = WARM_UID_BASE + self.workers % WARM_UID_SLOTS
        cgroup, work = self._cgroup(f"warm-{self.workers}", uid, limits)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _warm_child(theirs.detach(), cgroup, work, uid)
        theirs.close()
        ours.setblocking(False)
        worker = Warm(measurement, pid, os.pidfd_open(pid), ours, cgroup, work)
        self.loop.add_reader(worker.pidfd, lambda: self._worker_exited(worker))
        self.loop.add_reader(ours.fileno(), lambda: self._worker_done(worker))
        return worker

    def _worker_done(self, worker: Warm) -> None:
        """The worker answered its job's exit code; it waits for the next job."""
        try:
            answer = worker.control.recv(16)
        except BlockingIOError:
            return
        except OSError:
            answer = b""
        if not answer:  # the worker is gone: _worker_exited tells its job
            self.loop.remove_reader(worker.control.fileno())
            return
        job, worker.job = worker.job, None
        if job is not None:
            self.jobs.pop(job, None)
            self._send({"event": EXIT, "job": job, "status": answer[0], "oom": False})
        self.idle.append(worker)
        while len(self.idle) > IDLE_WARM:
            self._retire(self.idle.pop(0))

    def _retire(self, worker: Warm) -> None:
        """Stop an idle worker: it hangs up when its socket closes (_worker_exited follows)."""
        self.loop.remove_reader(worker.control.fileno())
        worker.control.close()

    def _worker_exited(self, worker: Warm) -> None:
        self.loop.remove_reader(worker.pidfd)
        os.close(worker.pidfd)
        _, status = os.waitpid(worker.pid, 0)
        if worker in self.idle:
            self.idle.remove(worker)
        if worker.control.fileno() != -1:
            self._retire(worker)
        if worker.job is not None:
            self.jobs.pop(worker.job, None)
            self._send({"event": EXIT, "job": worker.job,
                        "status": os.waitstatus_to_exitcode(status),
                        "oom": _oom(worker.cgroup)})
        self._end(worker.cgroup, worker.work)

    def _kill(self, job: str) -> None:
        cgroup = self.jobs.get(job)
        if cgroup is not None:
            _write(f"{cgroup}/cgroup.kill", "1")

    def _exited(self, job: str, pid: int, pidfd: int, work: str) -> None:
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        cgroup = self.jobs.pop(job)
        self._send({"event": EXIT, "job": job,
                    "status": os.waitstatus_to_exitcode(status), "oom": _oom(cgroup)})
        self._end(cgroup, work)

    def _end(self, cgroup: str, work: str) -> None:
        _write(f"{cgroup}/cgroup.kill", "1")  # whatever the applet forked dies with it
        self.loop.call_later(0.01, self._cleanup, cgroup, work, 0)

    def _cleanup(self, cgroup: str, work: str, attempt: int) -> None:
        try:
            os.rmdir(cgroup)
        except OSError:
            if attempt < 500:  # processes still dying
                self.loop.call_later(0.02, self._cleanup, cgroup, work, attempt + 1)
                return
            log(f"runner: cgroup {cgroup} would not empty")
        shutil.rmtree(work, ignore_errors=True)


def _oom(cgroup: str) -> bool:
    """Whether the kernel killed a process of ``cgroup`` for memory."""
    return any(line.split()[1] != "0" for line in _read(f"{cgroup}/memory.events").splitlines()
               if line.startswith("oom_kill "))


def _jobs_memory_budget() -> int:
    total = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    return max(64 << 20, total - ZONE_RESERVE)


def _confine(cgroup: str, work: str, uid: int, keep: int) -> None:
    """Confine this new job process: its own session and ``cgroup``, stdio on /dev/null, no
    descriptor but ``keep``, rlimits, ``work`` as its directory, ``uid`` with no groups."""
    os.setsid()
    _write(f"{cgroup}/cgroup.procs", str(os.getpid()))
    _write("/proc/self/oom_score_adj", "1000")  # under pressure, jobs die first
    null = os.open("/dev/null", os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.closerange(3, keep)
    os.closerange(keep + 1, 4096)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
    os.chdir(work)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    os.umask(0o077)


def _child(fd: int, cgroup: str, work: str, uid: int, limits: dict[str, int]) -> None:
    """The job process: confine itself, drop to ``uid``, run the applet. Never returns."""
    forked = time.monotonic_ns()
    code = 70  # anything unforeseen: os._exit below still ends the process
    try:
        cpu = limits["cpu_seconds"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        _confine(cgroup, work, uid, fd)
        code = run_job(fd, work, limits["wall_seconds"], forked)
    except (OSError, ValueError):  # confinement failed: the applet must not run
        code = CONFINEMENT_FAILED
    finally:
        os._exit(code)


def _warm_child(control: int, cgroup: str, work: str, uid: int) -> None:
    """A warm worker: confined as a job process, then serving jobs. Never returns."""
    code = 70
    try:
        _confine(cgroup, work, uid, control)
        code = serve_warm(control, work)
    except (OSError, ValueError):
        code = CONFINEMENT_FAILED
    finally:
        os._exit(code)


def main(set_up: Callable[[], None] | None = None) -> None:
    """Set up, say so (``set_up``: PID 1 waits for it before the start line), serve."""
    loop = Reactor()
    runner = Runner(loop)
    runner.setup()
    foreground()
    log("runner: ready")
    if set_up is not None:
        set_up()
    loop.run()

