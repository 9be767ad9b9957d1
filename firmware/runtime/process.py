"""Process priority during boot: the monitor (answering the host) goes first.

PID 1 starts the key keeper and the applet runner in the background (nice 10); each returns
to the foreground once it is set up.
"""

from __future__ import annotations

import os

__all__ = ["background", "foreground"]


def background() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 10)


def foreground() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 0)
