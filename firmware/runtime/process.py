"""Process helpers: priority during boot.

PID 1 starts the key keeper and the applet runner in the background (nice 10); each returns
to the foreground once it is set up, so the monitor (answering the host) goes first. Returning
needs no CAP_SYS_NICE (no process keeps it: firmware.runtime.caps): PID 1 sets RLIMIT_NICE so
that every zone process may go back to nice 0, and no higher (allow_foreground).
"""

from __future__ import annotations

import os
import resource

__all__ = ["background", "foreground", "allow_foreground"]


def background() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 10)


def foreground() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 0)


def allow_foreground() -> None:
    """PID 1, before it drops CAP_SYS_RESOURCE: RLIMIT_NICE 20 lets its children (who inherit
    it) lower their nice value to 0 again, never below (the limit is 20 - nice)."""
    resource.setrlimit(resource.RLIMIT_NICE, (20, 20))
