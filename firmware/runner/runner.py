"""The applet runner: a clean process that forks one isolated child per job.

PID 1 forks it before anything else holds a secret, so what a job inherits is only this
package and the runtime. It serves the monitor on a root-only unix socket
(firmware.runtime.ipc)::

    monitor -> runner   {op: "start", job, uid, limits} + the job's socket (SCM_RIGHTS)
                        {op: "kill", job}
    runner -> monitor   {event: "exit", job, status, oom}

Each job runs in its own process: its own cgroup (memory.max, pids.max; cgroup.kill ends every
process it made), an unprivileged uid of its own, no supplementary groups, CPU-time and file
rlimits, stdio on /dev/null, a private 0700 work directory, only the job socket open, and no
capability (the runner keeps only CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_DAC_OVERRIDE, its
bounding set is empty: firmware.runtime.caps; setresuid() clears the rest). The applet reaches the zone only through that socket (firmware.runner.job.ZoneAPI): the monitor
answers ``sign`` (with the applet's own key, held by the key keeper) and ``log``.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import time
from typing import Any

import cbor2

from ..runtime.console import log, log_exception
from ..runtime.ipc import CONFINEMENT_FAILED, EXIT, RUNNER_SOCKET, RunnerOp, listen
from ..runtime.process import foreground
from ..runtime.reactor import Reactor
from .job import run_job  # imported here, so a job's process starts with it loaded

CGROUP_ROOT = "/sys/fs/cgroup"
JOBS_CGROUP = f"{CGROUP_ROOT}/sez-jobs"
WORK_ROOT = "/tmp/sez-jobs"
#: Memory kept for the zone's own processes (PID 1, keeper, runner, monitor, page cache).
ZONE_RESERVE = 192 << 20


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


class Runner:
    def __init__(self, loop: Reactor) -> None:
        self.loop = loop
        self.conn: socket.socket | None = None
        self.jobs: dict[str, tuple[int, int]] = {}  # job -> (pid, pidfd)

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
                self._start(str(message["job"]), int(message["uid"]), message["limits"], fds[0])
            elif message["op"] == RunnerOp.KILL:
                self._kill(str(message["job"]))
            else:
                raise ValueError(f"unexpected message {message!r:.80}")
        except (ValueError, KeyError, TypeError, OSError):  # a bad message, or set-up failed
            log_exception("runner: bad request")
            for fd in fds:
                os.close(fd)

    def _start(self, job: str, uid: int, limits: dict[str, int], fd: int) -> None:
        cgroup = f"{JOBS_CGROUP}/job-{job}"
        work = f"{WORK_ROOT}/{job}"
        os.makedirs(cgroup, exist_ok=True)
        _write(f"{cgroup}/memory.max", str(limits["memory_mb"] << 20))
        if os.path.exists(f"{cgroup}/memory.swap.max"):
            _write(f"{cgroup}/memory.swap.max", "0")
        _write(f"{cgroup}/pids.max", str(limits["processes"]))
        os.makedirs(work, mode=0o700, exist_ok=True)
        os.chown(work, uid, uid)
        pid = os.fork()
        if pid == 0:
            _child(fd, cgroup, work, uid, limits)
        os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.jobs[job] = (pid, pidfd)
        self.loop.add_reader(pidfd, lambda: self._exited(job))

    def _kill(self, job: str) -> None:
        if job in self.jobs:
            _write(f"{JOBS_CGROUP}/job-{job}/cgroup.kill", "1")

    def _exited(self, job: str) -> None:
        pid, pidfd = self.jobs.pop(job)
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        cgroup = f"{JOBS_CGROUP}/job-{job}"
        oom = any(line.split()[1] != "0" for line in _read(f"{cgroup}/memory.events").splitlines()
                  if line.startswith("oom_kill "))
        _write(f"{cgroup}/cgroup.kill", "1")  # whatever the applet forked dies with it
        self._send({"event": EXIT, "job": job,
                    "status": os.waitstatus_to_exitcode(status), "oom": oom})
        self.loop.call_later(0.01, self._cleanup, cgroup, f"{WORK_ROOT}/{job}", 0)

    def _cleanup(self, cgroup: str, work: str, attempt: int) -> None:
        try:
            os.rmdir(cgroup)
        except OSError:
            if attempt < 500:  # processes still dying
                self.loop.call_later(0.02, self._cleanup, cgroup, work, attempt + 1)
                return
            log(f"runner: cgroup {cgroup} would not empty")
        shutil.rmtree(work, ignore_errors=True)


def _jobs_memory_budget() -> int:
    total = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    return max(64 << 20, total - ZONE_RESERVE)


def _child(fd: int, cgroup: str, work: str, uid: int, limits: dict[str, int]) -> None:
    """The job process: confine itself, drop to ``uid``, run the applet. Never returns."""
    forked = time.monotonic_ns()
    code = 70  # anything unforeseen: os._exit below still ends the process
    try:
        os.setsid()
        _write(f"{cgroup}/cgroup.procs", str(os.getpid()))
        _write("/proc/self/oom_score_adj", "1000")  # under pressure, jobs die first
        null = os.open("/dev/null", os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        os.closerange(3, fd)
        os.closerange(fd + 1, 4096)
        cpu = limits["cpu_seconds"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
        os.chdir(work)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        os.umask(0o077)
        code = run_job(fd, work, limits["wall_seconds"], forked)
    except (OSError, ValueError):  # confinement failed: the applet must not run
        code = CONFINEMENT_FAILED
    finally:
        os._exit(code)


def main() -> None:
    loop = Reactor()
    runner = Runner(loop)
    runner.setup()
    foreground()
    log("runner: ready")
    loop.run()

