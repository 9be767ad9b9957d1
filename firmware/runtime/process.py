"""Process helpers: priority during boot, and running a busybox tool with a bound.

PID 1 starts the key keeper and the applet runner in the background (nice 10); each returns
to the foreground once it is set up, so the monitor (answering the host) goes first. Returning
needs no CAP_SYS_NICE (no process keeps it: firmware.runtime.caps): PID 1 sets RLIMIT_NICE so
that every zone process may go back to nice 0, and no higher (allow_foreground).
"""

from __future__ import annotations

import os
import resource
import select
import signal

__all__ = ["background", "foreground", "allow_foreground", "run_tool"]


def background() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 10)


def foreground() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 0)


def allow_foreground() -> None:
    """PID 1, before it drops CAP_SYS_RESOURCE: RLIMIT_NICE 20 lets its children (who inherit
    it) lower their nice value to 0 again, never below (the limit is 20 - nice)."""
    resource.setrlimit(resource.RLIMIT_NICE, (20, 20))


def run_tool(argv: list[str], timeout: float) -> int | None:
    """Run ``argv`` (``argv[0]`` a path) and wait at most ``timeout`` seconds: its exit code,
    or None if it did not end in time (it is then killed, and not waited for beyond a second:
    a tool stuck in the kernel cannot hold its caller)."""
    pid = os.posix_spawn(argv[0], argv, {"PATH": "/bin"})
    pidfd = os.pidfd_open(pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], 1.0)
            os.waitpid(pid, os.WNOHANG)
            return None
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    finally:
        os.close(pidfd)
