"""PID 1 of the zone: start the zone's processes and keep them running.

0. Fork the monitor (firmware.monitor), layer 0, the key keeper (firmware.layer0), and the
   applet runner (firmware.runner, which holds nothing secret: jobs fork from it). Each
   confines itself and imports what it runs; the monitor and layer 0 then wait for PID 1's
   word. Say READY on the start line and wait for START (firmware.pid1.start): a template of
   the machine is saved there, before anything of a device is read. Then reseed the kernel's
   CRNG.
1. Bind fw_cfg's driver, read what the hardware handed over (firmware.pid1.hardware), unload
   the driver, disable kexec and drop every capability the zone's processes do not need
   (firmware.runtime.caps): CAP_SYS_RAWIO first, so no process can reach fw_cfg's I/O
   ports. The fuses are unreachable before anything that parses host input starts: only then
   is the monitor told to serve (firmware.monitor.server.main_when_told: the boot counter
   and the debug strap; it never holds the fuses).
2. Bind the BBRAM disk's driver, hand layer 0 the hardware's record, the fuses with it, over
   its pipe, and wipe PID 1's copy. Layer 0 derives the keys while the monitor already
   serves.
3. Restart the monitor or the runner when one dies. In a debug zone, fork the console shell
   (firmware.pid1.shell), and a new one when it ends.
4. When layer 0 ends after a tamper trip (it zeroised the zone and killed the others), fork
   a keeper with nothing to keep in its place, from PID 1's clean memory: it answers
   ``tampered`` to the monitor, which PID 1 restarts as usual.

A crash in a child never takes down PID 1 (whose exit would panic the kernel and power the
machine off). The monitor module is imported before the first fork: a restart costs a fork,
not a new interpreter.
"""

from __future__ import annotations

import os
import select
import sys
import time
from typing import Callable

from ..runtime import caps
from ..runtime.console import log, log_exception
from ..runtime.ipc import TAMPER_RECORD, TAMPERED_EXIT, raise_buffer_limits
from ..runtime.process import allow_foreground, background
from . import shell, start
from .hardware import Hardware, seal_fw_cfg


#: The ends PID 1 tells its pre-forked children on (_prefork): no other child may hold one,
#: or the child told would never see the end of what it is told.
_TELLING: list[int] = []


def _spawn(name: str, body: Callable[[], None]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd in _TELLING:
            os.close(fd)
        _TELLING.clear()
        body()
        code = 0
    except BaseException:
        log_exception(f"the {name} failed")
    finally:
        sys.stderr.flush()
        os._exit(code)


class _SetUp:
    """How PID 1's first children say they are set up (each writes a byte on one pipe, which
    they inherit), and PID 1 waits for them all before it says READY: a template holds them
    set up (a cold power-on, told START already, does not wait). Children forked after
    ``wait`` never hold the pipe."""

    #: Seconds PID 1 waits for them.
    TIMEOUT = 60.0

    def __init__(self) -> None:
        self.read: int | None
        self.write: int | None
        self.read, self.write = os.pipe()
        self.children = 0

    def said(self) -> Callable[[], None]:
        """For a child: the call that says it is set up."""
        self.children += 1

        write = self.write
        assert write is not None

        def say() -> None:
            os.write(write, b".")

        return say

    def wait(self) -> None:
        self._close("write")  # so that the read ends once every child has said it or ended
        deadline, heard = time.monotonic() + self.TIMEOUT, 0
        while heard < self.children:
            left = deadline - time.monotonic()
            assert self.read is not None
            if left <= 0 or not select.select([self.read], [], [], left)[0]:
                break
            got = os.read(self.read, 16)
            if not got:  # every child that could say it has ended
                break
            heard += len(got)
        if heard < self.children:
            log(f"PID 1: {self.children - heard} of its children did not say they were set up")

    def close(self) -> None:
        """PID 1's ends, closed (whether it waited or not): no later child holds them."""
        self._close("write")
        self._close("read")

    def _close(self, end: str) -> None:
        fd = getattr(self, end)
        if fd is not None:
            os.close(fd)
            setattr(self, end, None)


def _prefork(name: str, body: Callable[[int], None]) -> tuple[int, int]:
    """Fork a child that sets itself up, then waits to be told (``body(told)``: it reads
    ``told`` to its end) what only the hardware knows; its pid, and the end PID 1 tells it
    on (``_tell``)."""
    told, tell = os.pipe()

    def run() -> None:
        os.close(tell)
        body(told)

    pid = _spawn(name, run)
    os.close(told)
    _TELLING.append(tell)
    return pid, tell


def _tell(tell: int, name: str, *parts: bytes | bytearray | memoryview) -> None:
    try:
        for part in parts:
            os.write(tell, part)
    except OSError:
        log(f"PID 1: the {name} is gone before it was told; it is started again if it may be")
    finally:
        os.close(tell)
        _TELLING.remove(tell)


def _run_keeper_when_told(told: int, set_up: Callable[[], None]) -> None:
    """Layer 0, forked before the start line: confined and its modules imported (in a
    template, ready), it gets the hardware's record, the fuses with it, on ``told``."""
    background()  # the monitor, answering the host, goes first during boot
    caps.confine(caps.KEEPER)
    from ..layer0 import keeper

    set_up()
    keeper.main(Hardware.receive(told))


def _run_tampered(cause: str) -> None:
    caps.confine(caps.KEEPER)
    from ..layer0 import keeper

    keeper.serve_tampered(cause)


def _run_runner(set_up: Callable[[], None] | None = None) -> None:
    background()
    caps.confine(caps.RUNNER)
    from ..runner import runner

    runner.main(set_up)


def supervise(hw: Hardware, pids: dict[str, int]) -> None:
    """Restart the monitor and the runner whenever one ends (``pids``: each child's, kept up
    to date); after a tamper trip, put a keeper that answers ``tampered`` in layer 0's place."""
    from ..monitor import server as monitor  # imported already: a restart costs a fork

    restarts = 0
    if hw.debug and "console" not in pids:
        pids["console"] = _spawn("console shell", shell.run)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            time.sleep(1)
            continue
        if pid == pids["keeper"]:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == TAMPERED_EXIT:
                cause = _tamper_cause()
                log("layer 0 zeroised the zone; a keeper that answers 'tampered' takes over")
                pids["keeper"] = _spawn("tampered keeper", lambda: _run_tampered(cause))
            else:
                log(f"the key keeper (pid {pid}) ended with status {status:#x}: "
                    "the zone cannot attest until it is rebooted")
        elif pid == pids["runner"]:
            log(f"the applet runner (pid {pid}) ended with status {status:#x}; restarting")
            time.sleep(0.5)
            pids["runner"] = _spawn("applet runner", _run_runner)
        elif pid == pids.get("console"):
            del pids["console"]
            if os.path.exists(shell.TERMINAL):
                time.sleep(0.5)
                pids["console"] = _spawn("console shell", shell.run)
        elif pid == pids["monitor"]:
            log(f"monitor (pid {pid}) ended with status {status:#x}; restarting")
            restarts += 1
            time.sleep(min(0.05 * 2 ** min(restarts, 6), 2.0))
            pids["monitor"] = _spawn("monitor", lambda: monitor.main(hw, restarts))


def _tamper_cause() -> str:
    try:
        with open(TAMPER_RECORD) as f:
            return f.read(200).strip() or "tamper line"
    except OSError:
        return "tamper line"


def _confine() -> None:
    """The last privileged steps of the boot, then PID 1 keeps only what its children need
    (firmware.runtime.caps); each child drops more at its own entry."""
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
    if not raise_buffer_limits():
        log("PID 1: could not raise the socket buffer limits: large keeper messages will fail")
    allow_foreground()
    from ..monitor import server

    # Forked before the start line: a template holds them set up and waiting.
    set_up = _SetUp()
    said = [set_up.said() for _ in range(3)]
    monitor, tell_monitor = _prefork("monitor", lambda told: server.main_when_told(told, said[0]))
    keeper, tell_keeper = _prefork("key keeper", lambda told: _run_keeper_when_told(told, said[1]))
    pids = {"monitor": monitor, "keeper": keeper,
            "runner": _spawn("applet runner", lambda: _run_runner(said[2]))}
    start.await_start(set_up.wait)
    set_up.close()
    try:
        if not start.reseed():
            log("start: the hardware RNG gave too little; the CRNG reseeded from the CPU's")
    except OSError:  # fail closed: a zone resumed from a template must not share its CRNG
        log_exception("start: could not reseed the CRNG; the zone stops")
        raise
    start.attach_window()
    start.bind_devices("platform", start.FW_CFG_DEVICE)
    hw = Hardware.read()
    seal_fw_cfg()
    _confine()
    _tell(tell_monitor, "monitor", f"{hw.boot_counter} {'1' if hw.debug else '0'}".encode())
    background()  # the monitor, answering the host, goes first; its restarts go foreground
    start.bind_devices("virtio")  # the BBRAM disk, for layer 0
    _tell(tell_keeper, "key keeper", *hw.handing_over())
    hw.wipe_fuses()
    while True:  # PID 1 must never return
        try:
            supervise(hw, pids)
        except Exception:  # PID 1's exit would panic the kernel: log, wait, supervise again
            log_exception("supervisor failed")
            time.sleep(1)
