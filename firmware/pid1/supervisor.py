"""PID 1 of the zone: start the zone's processes and keep them running.

0. Fork the first monitor, which confines itself and waits for PID 1's word; say READY on
   the start line and wait for START (firmware.pid1.start): a template of the machine is
   saved there, before anything of the device's own is read. Then reseed the kernel's CRNG
   and bind fw_cfg's driver (the BBRAM disk's once the monitor runs).
1. Read what the hardware handed over (firmware.pid1.hardware), then unload fw_cfg, disable
   kexec and drop every capability the zone's processes do not need (firmware.runtime.caps):
   CAP_SYS_RAWIO first, so no process can reach fw_cfg's I/O ports. The fuses are
   unreachable before anything that parses host input starts: only then is the first monitor
   told to serve (firmware.monitor.server.main_when_told: the boot counter and the debug
   strap; it never held the fuses).
2. Fork layer 0, the key keeper (firmware.layer0), with the fuses, and wipe PID 1's copy. The
   keeper imports the crypto libraries and derives the keys while the monitor already serves.
3. Fork the applet runner (firmware.runner), which holds nothing secret: jobs fork from it.
4. Restart the monitor or the runner when one dies.
5. In a debug zone, fork the console shell (firmware.pid1.shell), and a new one when it ends.
6. When layer 0 ends after a tamper trip (it zeroised the zone and killed the others), fork
   a keeper with nothing to keep in its place, from PID 1's clean memory: it answers
   ``tampered`` to the monitor, which PID 1 restarts as usual.

A crash in a child never takes down PID 1 (whose exit would panic the kernel and power the
machine off). The monitor module is imported before the first fork: a restart costs a fork,
not a new interpreter.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from ..runtime import caps
from ..runtime.console import log, log_exception
from ..runtime.ipc import TAMPER_RECORD, TAMPERED_EXIT, raise_buffer_limits
from ..runtime.process import allow_foreground, background
from . import shell, start
from .hardware import Hardware, seal_fw_cfg


def _spawn(name: str, body: Callable[[], None]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        body()
        code = 0
    except BaseException:
        log_exception(f"the {name} failed")
    finally:
        sys.stderr.flush()
        os._exit(code)


def _run_keeper(hw: Hardware) -> None:
    background()  # the monitor, answering the host, goes first during boot
    caps.confine(caps.KEEPER)
    from ..layer0 import keeper

    keeper.main(hw)


def _run_tampered(cause: str) -> None:
    caps.confine(caps.KEEPER)
    from ..layer0 import keeper

    keeper.serve_tampered(cause)


def _run_runner() -> None:
    background()
    caps.confine(caps.RUNNER)
    from ..runner import runner

    runner.main()


def _first_monitor() -> tuple[int, int]:
    """Fork the boot's first monitor (monitor.server.main_when_told); its pid, and the pipe's
    end PID 1 tells it on."""
    from ..monitor import server

    told, tell = os.pipe()

    def body() -> None:
        os.close(tell)
        server.main_when_told(told)

    pid = _spawn("monitor", body)
    os.close(told)
    return pid, tell


def _tell(tell: int, hw: Hardware) -> None:
    try:
        os.write(tell, f"{hw.boot_counter} {'1' if hw.debug else '0'}".encode())
    except OSError:
        log("PID 1: the first monitor is gone; another starts")
    finally:
        os.close(tell)


def supervise(hw: Hardware, current: int | None = None) -> None:
    """Start layer 0 and the runner (and the monitor, unless ``current`` runs already); then
    restart the monitor and the runner whenever one ends."""
    from ..monitor import server as monitor  # imported already: a restart costs a fork

    restarts = 0
    if current is None:
        current = _spawn("monitor", lambda: monitor.main(hw, restarts))
    background()  # the monitor, answering the host, goes first; its restarts go foreground
    start.bind_devices("virtio")  # the BBRAM disk, for layer 0
    keeper = _spawn("key keeper", lambda: _run_keeper(hw))
    hw.wipe_fuses()
    runner = _spawn("applet runner", _run_runner)
    console = _spawn("console shell", shell.run) if hw.debug else None
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            time.sleep(1)
            continue
        if pid == keeper:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == TAMPERED_EXIT:
                cause = _tamper_cause()
                log("layer 0 zeroised the zone; a keeper that answers 'tampered' takes over")
                keeper = _spawn("tampered keeper", lambda: _run_tampered(cause))
            else:
                log(f"the key keeper (pid {pid}) ended with status {status:#x}: "
                    "the zone cannot attest until it is rebooted")
        elif pid == runner:
            log(f"the applet runner (pid {pid}) ended with status {status:#x}; restarting")
            time.sleep(0.5)
            runner = _spawn("applet runner", _run_runner)
        elif pid == console:
            console = None
            if os.path.exists(shell.TERMINAL):
                time.sleep(0.5)
                console = _spawn("console shell", shell.run)
        elif pid == current:
            log(f"monitor (pid {pid}) ended with status {status:#x}; restarting")
            restarts += 1
            time.sleep(min(0.05 * 2 ** min(restarts, 6), 2.0))
            current = _spawn("monitor", lambda: monitor.main(hw, restarts))


def _tamper_cause() -> str:
    try:
        with open(TAMPER_RECORD) as f:
            return f.read(200).strip() or "tamper line"
    except OSError:
        return "tamper line"


def _confine() -> None:
    """The last privileged steps of the boot, then PID 1 keeps only what its children need
    (firmware.runtime.caps); each child drops more at its own entry."""
    if not raise_buffer_limits():
        log("PID 1: could not raise the socket buffer limits: large keeper messages will fail")
    allow_foreground()
    if not caps.disable_kexec():
        log("PID 1: could not disable kexec")
    try:
        caps.confine(caps.PID1)
    except OSError:  # fail closed: PID 1's exit panics the kernel and powers the zone off
        log_exception("PID 1: cannot drop capabilities; the zone stops")
        raise


def main() -> None:
    try:  # the zone's own processes (children inherit it) are the last the OOM killer picks
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        pass
    monitor, tell = _first_monitor()  # in the template, ready: a resumed zone has it
    start.await_start()
    try:
        if not start.reseed():
            log("start: the hardware RNG gave too little; the CRNG reseeded from the CPU's")
    except OSError:  # fail closed: a zone resumed from a template must not share its CRNG
        log_exception("start: could not reseed the CRNG; the zone stops")
        raise
    start.bind_devices("platform", start.FW_CFG_DEVICE)
    hw = Hardware.read()
    seal_fw_cfg()
    _confine()
    _tell(tell, hw)
    first: int | None = monitor
    while True:  # PID 1 must never return
        try:
            supervise(hw, first)
        except Exception:  # PID 1's exit would panic the kernel: log, wait, supervise again
            log_exception("supervisor failed")
            time.sleep(1)
        first = None
