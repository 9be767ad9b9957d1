"""PID 1 of the zone: starts the zone monitor and starts it again whenever it dies.

The monitor runs in a forked child, so a crash in it never takes down PID 1 (whose exit would
panic the kernel and power the machine off). The monitor module is imported before the first
fork: a restart costs a fork, not a new interpreter.
"""

from __future__ import annotations

import os
import sys
import time

from .reactor import log, log_exception


def _run_child(restarts: int) -> None:
    code = 1
    try:
        from . import monitor

        monitor.main(restarts)
        code = 0
    except BaseException:
        log_exception("the monitor failed")
    finally:
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int) -> int:
    """Reap children (orphans included) until ``pid`` exits; return its wait status."""
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:
            return -1
        except InterruptedError:
            continue
        if done == pid:
            return status


def supervise() -> None:
    from . import monitor  # noqa: F401  (import once, before forking)

    restarts = 0
    while True:
        pid = os.fork()
        if pid == 0:
            _run_child(restarts)
        status = _wait(pid)
        log(f"monitor (pid {pid}) ended with status {status:#x}; restarting")
        restarts += 1
        time.sleep(min(0.05 * 2 ** min(restarts, 6), 2.0))


def main() -> None:
    while True:  # PID 1 must never return
        try:
            supervise()
        except Exception:
            log_exception("supervisor failed")
            time.sleep(1)


if __name__ == "__main__":
    main()
