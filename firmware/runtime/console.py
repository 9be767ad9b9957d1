"""The zone's console (ttyS0, captured by the emulator in console.log): one line per event.

Nothing secret goes here: no key, fuse, sealed state or applet data, in any message.
"""

from __future__ import annotations

import sys

__all__ = ["log", "log_exception"]


def log(message: str) -> None:
    """One line on the console, stamped with the zone's uptime in seconds."""
    try:
        with open("/proc/uptime", "rb") as f:
            uptime = f.read().split()[0].decode()
    except OSError:
        uptime = "?"
    sys.stderr.write(f"[{uptime:>8}] sez: {message}\n")
    sys.stderr.flush()


def log_exception(message: str) -> None:
    """``message`` and the traceback of the exception being handled."""
    import traceback  # only on failure: importing it costs 0.4 s of boot under TCG

    log(message + ":\n" + traceback.format_exc().rstrip())
