"""The emulated card: one QEMU process per device, detached, controlled through QMP (what
that QEMU emulates, and its command line, is ``emulator.board``'s).

``Machine(name).launch(...)`` starts QEMU in its own session with a runtime directory
``$SEZ_HOME/run/NAME/`` that holds everything a later process needs to find it again:

=================  ===========================================================
``machine.json``   pid, command line, accelerator, start time, channel path
``qmp.sock``       the QMP socket (driven with the ``qemu.qmp`` library)
``ctl.sock``       the control port ``org.sez.ctl``: the channel the host driver opens
                   (``unix:`` + this path; ``ctl.sock.lock`` keeps it to one driver)
(bulk window)      the bulk window's memory, shared with QEMU: a file in /dev/shm named for
                   this directory (``Machine.bulk_window``), named in the channel's address
``console.log``    the zone's serial console (ttyS0) for this boot
``qemu.log``       QEMU's own stdout/stderr
``tamper.in/out``  the tamper line (port ``org.sez.tamper``): two FIFOs, the emulator's alone
``sensors.sock``   QMP for the environmental sensors' watcher (emulator.sensors), when the
                   device enables sensors; ``sensors.log`` its log
``tamper.record``  the factory's record of the device's tamper events (fw_cfg ``tamper``)
``shell.sock``     the console shell's terminal, in debug zones only (emulator.shell)
=================  ===========================================================

Stopping is a bounded, idempotent ladder: ACPI power-off, QMP ``quit``, SIGTERM, SIGKILL.

A ``Machine`` is a context manager for the QEMU it launches: if the ``with`` block raises, a
QEMU launched inside the block is killed; one that was running before is left alone, and a
block that ends normally leaves the machine running (zones run detached).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Coroutine, Protocol, TypeVar

from qemu.qmp import QMPClient, QMPError

from firmware.abi import device as hw
from firmware.abi.bulk import WINDOW_SIZE
from firmware.abi.device import TAMPER_TRIP, TAMPER_ZEROISED, tamper_cause

from .board import Board, qemu_command
from .device import Device
from .errors import LaunchError, MachineStateError, MachineTimeout
from .image import Image
from .paths import SezHome

__all__ = ["Machine", "MachineStatus", "QMP_ERRORS", "LAUNCH_TIMEOUT"]

log = logging.getLogger(__name__)

#: Seconds to wait for QEMU's QMP socket after spawning it.
LAUNCH_TIMEOUT = 20.0
#: Seconds one QMP command may take.
QMP_TIMEOUT = 5.0
#: What Machine.qmp raises when QEMU does not answer (TimeoutError, MachineTimeout among the
#: OSErrors), is gone, or refuses the command.
QMP_ERRORS = (QMPError, OSError, EOFError)
#: Seconds run_sync waits for its helper thread beyond the coroutine's own bound.
JOIN_MARGIN = 2.0
#: Seconds the guest gets to power off after the ACPI power button.
POWERDOWN_TIMEOUT = 5.0
#: Seconds a running zone has to answer a tamper trip before the hardware cuts its power.
TAMPER_TIMEOUT = 10.0

T = TypeVar("T")


class Template(Protocol):
    """What ``launch`` resumes from (emulator.template.Template): the saved RAM and device
    state, and the key of the board they were saved on."""

    @property
    def directory(self) -> Path: ...

    @property
    def board(self) -> str: ...

    @property
    def ram(self) -> Path: ...

    @property
    def state(self) -> Path: ...


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """Run a coroutine to completion from synchronous code, inside or outside an event loop.

    The coroutine must bound itself to ``timeout`` seconds. Inside a running loop it runs in
    a helper thread, which is waited for ``timeout`` + JOIN_MARGIN seconds at most; past that
    MachineTimeout is raised (the thread, a daemon, is left to finish on its own).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:  # handed back to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="sez-qmp", daemon=True)
    thread.start()
    thread.join(timeout + JOIN_MARGIN)
    if thread.is_alive():
        raise MachineTimeout(f"QMP did not finish within {timeout + JOIN_MARGIN:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class TamperReport:
    """What a tamper trip did: the cause, the zone's own milliseconds from reading the trip
    to zeroised and the host's from writing it to the answer (None: the zone was off, or
    did not answer and lost its power), the hardware's milliseconds to wipe the fuses and
    BBRAM disk, and the device's tamper count now."""

    cause: str
    zone_ms: float | None
    ack_ms: float | None
    wipe_ms: float
    count: int


@dataclass(frozen=True)
class MachineStatus:
    name: str
    running: bool
    pid: int | None = None
    qemu_status: str | None = None
    channel: str | None = None
    accel: str | None = None
    started: float | None = None
    boot_counter: int | None = None
    #: The template this boot resumed from (emulator.template), None for a cold boot.
    template: str | None = None

    @property
    def uptime(self) -> float | None:
        return time.time() - self.started if self.running and self.started else None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["uptime"] = round(self.uptime, 1) if self.uptime is not None else None
        return out


class Machine:
    """The QEMU process of one device. Stateless between processes: all is in run_dir."""

    def __init__(self, name: str, home: SezHome | None = None) -> None:
        self.name = name
        self.home = home or SezHome.default()
        self.run_dir = self.home.run_dir(name)
        self.log = log.getChild(name)
        self._running_before: int | None = None

    def __enter__(self) -> "Machine":
        self._running_before = self.pid
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """If the block raised, kill the QEMU it launched (see the module's docstring)."""
        pid = self.pid
        if exc_type is None or pid is None or pid == self._running_before:
            return
        self.log.info("killing QEMU pid %d: %s", pid, exc_type.__name__)
        try:
            self.stop(kill=True)
        except MachineStateError as error:  # the block's own error is the one to raise
            self.log.error("%s", error)

    # -- paths ------------------------------------------------------------------------------

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def ctl_socket(self) -> Path:
        """The control port's host end, a unix socket (the channel: ``unix:`` + this path)."""
        return self.run_dir / "ctl.sock"

    @property
    def bulk_window(self) -> Path:
        """The bulk window's file (firmware.abi.bulk), shared by QEMU and the host driver: in
        /dev/shm where there is one (memory, never written back to a disk), named for the
        run directory."""
        shm = Path("/dev/shm")
        if not shm.is_dir():
            return self.run_dir / "bulk"
        tag = hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
        return shm / f"sez-{os.getuid()}-{tag}.bulk"

    @property
    def sensors_socket(self) -> Path:
        """QMP for the environmental sensors' watcher (emulator.sensors) alone."""
        return self.run_dir / "sensors.sock"

    @property
    def sensors_log(self) -> Path:
        return self.run_dir / "sensors.log"

    @property
    def tamper_line(self) -> Path:
        """The tamper line's pipe: QEMU reads ``tamper.in`` and writes ``tamper.out``."""
        return self.run_dir / "tamper"

    def _fifos(self, line: str) -> tuple[Path, Path]:
        """A line's two FIFOs (``tamper``, ``start``): QEMU reads ``.in`` and writes ``.out``."""
        return self.run_dir / f"{line}.in", self.run_dir / f"{line}.out"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def shell_socket(self) -> Path:
        return self.run_dir / "shell.sock"

    @property
    def qemu_log(self) -> Path:
        return self.run_dir / "qemu.log"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "machine.json"

    # -- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _save_state(self, **changes: Any) -> dict[str, Any]:
        state = self.state()
        state.update(changes)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)
        return state

    @property
    def pid(self) -> int | None:
        pid = self.state().get("pid")
        return pid if isinstance(pid, int) and self._is_ours(pid) else None

    def is_running(self) -> bool:
        return self.pid is not None

    def _is_ours(self, pid: int) -> bool:
        """``pid`` is alive (not a zombie) and is this machine's QEMU (not a reused pid)."""
        _reap(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return False
        return str(self.qmp_socket).encode() in cmdline

    @property
    def channel(self) -> str:
        """The control port's host end as the host driver opens it: ``unix:PATH?bulk=FILE``
        (the socket, and the bulk window's file)."""
        channel = self.state().get("channel")
        if not self.is_running() or not channel:
            raise MachineStateError(f"zone {self.name!r} is not running (start it: sez boot {self.name})")
        return str(channel)

    def status(self) -> MachineStatus:
        state = self.state()
        pid = self.pid
        if pid is None:
            return MachineStatus(self.name, False, boot_counter=state.get("boot_counter"))
        try:
            qemu_status = self.qmp("query-status")["status"]
        except QMP_ERRORS as exc:  # a wedged QMP is a status, not a crash of `sez status`
            qemu_status = f"unreachable ({exc.__class__.__name__})"
        return MachineStatus(self.name, True, pid, qemu_status, state.get("channel"),
                             state.get("accel"), state.get("started"), state.get("boot_counter"),
                             state.get("template"))

    def console(self, tail: int | None = None) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    # -- QMP ----------------------------------------------------------------------------------

    def qmp(self, command: str, args: dict[str, Any] | None = None,
            timeout: float = QMP_TIMEOUT) -> Any:
        """Execute one QMP command (connect, execute, disconnect), each step bounded by
        ``timeout``. Raises QMPError, OSError, TimeoutError (MachineTimeout among them)."""

        async def go() -> Any:
            client = QMPClient(f"sez-{self.name}")
            try:
                await asyncio.wait_for(client.connect(str(self.qmp_socket)), timeout)
                return await asyncio.wait_for(client.execute(command, args), timeout)
            finally:
                await asyncio.wait_for(client.disconnect(), timeout)

        return run_sync(go, 3 * timeout)

    # -- lifecycle ----------------------------------------------------------------------------

    def launch(self, image: Image, device: Device, *, accel: str = "auto", debug: bool = False,
               memory_mb: int = 512, cpus: int | None = None, tcg_thread: str | None = None,
               gdb: int | None = None, template: Template | None = None,
               timeout: float = LAUNCH_TIMEOUT) -> MachineStatus:
        """Power the device on: spawn QEMU detached; return once QMP answers and the zone has
        been told to start.

        The hardware measures kernel, initramfs and command line (SHA-384) and hands them to
        layer 0 through fw_cfg with the fuses (UDS), the DeviceID certificate, the boot counter
        and the debug strap.

        With ``template`` (emulator.template, made for this image and board), the machine
        resumes from it instead of booting: its RAM maps the template's copy on write, its
        device state comes in by migration, and the zone, held at READY, is told to start as
        this device.

        Raises MachineStateError if it already runs or the template does not fit,
        LaunchError (with QEMU's output) if QEMU exits, its QMP socket does not answer or the
        resume does not finish within ``timeout`` seconds.
        """
        if self.is_running():
            raise MachineStateError(f"zone {self.name!r} is already running (pid {self.pid})")
        if gdb is not None and not debug:
            raise MachineStateError("a gdb stub is for debug zones only (--debug): in "
                                    "production it would read every key in the zone's memory")
        board = Board.make(accel=accel, cpus=cpus, tcg_thread=tcg_thread, memory_mb=memory_mb,
                           debug=debug)
        if template is not None and template.board != board.key(image):
            raise MachineStateError(f"template {template.directory} was made for another "
                                    "image or board; make one for this (sez boot --snapshot)")
        device.require_fuses()
        self._prepare()
        record = device.tamper_record
        last = record.get("last")
        cause = last.get("cause") if isinstance(last, dict) else None
        tamper_record = self.run_dir / "tamper.record"
        tamper_record.write_text(f"{record.get('count', 0)} {cause or ''}".strip() + "\n")
        boots = device.count_boot()
        measured = self.run_dir / "measurements"
        measured.write_text(image.measure())
        fw_cfg: dict[str, Path | str] = {
            hw.FW_UDS: device.fuses, hw.FW_DEVICE_ID: device.device_id_cert,
            hw.FW_MEASUREMENTS: measured, hw.FW_BOOT_COUNTER: str(boots),
            hw.FW_DEBUG: "1" if debug else "0", hw.FW_TAMPER: tamper_record}
        argv = self._command(image, board, gdb=gdb, fw_cfg=fw_cfg, bbram=device.ensure_bbram(),
                             ram=template.ram if template else None, incoming=bool(template))
        deadline = time.monotonic() + timeout
        self._spawn(argv, board, deadline, boot_counter=boots,
                    template=str(template.directory) if template else None)
        if template is not None:
            self._resume(template, deadline)
        self._say("start", hw.START_GO)  # the zone goes on to its device's hardware
        if device.sensors:
            self._start_sensors(deadline)
        return self.status()

    def save_template(self, image: Image, directory: Path, *, accel: str = "auto",
                      debug: bool = False, memory_mb: int = 512, cpus: int | None = None,
                      tcg_thread: str | None = None, timeout: float = LAUNCH_TIMEOUT) -> str:
        """Boot ``image`` as no device until the zone says READY on the start line, then save
        the machine into ``directory`` as a template: ``ram`` (its RAM, written by the guest
        itself: a shared file) and ``state`` (the rest, by migration with x-ignore-shared);
        QEMU then quits. Returns the board's key (what a resumed machine must match).

        The zone at READY has read no fuses and no disk: its drivers for them are bound to
        nothing (firmware.pid1.start). Raises LaunchError if it does not get there within ``timeout``.
        """
        board = Board.make(accel=accel, cpus=cpus, tcg_thread=tcg_thread, memory_mb=memory_mb,
                           debug=debug)
        self._prepare(window=False)
        blank = directory / "disk"  # the board has a disk; the zone at READY never reads it
        with blank.open("wb") as f:
            f.truncate(hw.BBRAM_SIZE)
        argv = self._command(image, board, gdb=None, fw_cfg={}, bbram=blank,
                             ram=directory / "ram", ram_shared=True, window=False)
        deadline = time.monotonic() + timeout
        with self:
            self._spawn(argv, board, deadline, boot_counter=None, template=None)
            line = self._read_line(self._fifos("start")[1], deadline - time.monotonic())
            if line != hw.START_READY:
                raise LaunchError(f"the template zone did not say READY within {timeout:.0f} s "
                                  f"(said {line!r}): {self.console(tail=20)}", command=argv)
            self.qmp("stop")
            self.qmp("migrate-set-capabilities", {"capabilities": [
                {"capability": "x-ignore-shared", "state": True}]})
            self.qmp("migrate", {"uri": f"exec:cat > {directory / 'state'}"})
            self._wait_migration("query-migrate", deadline)
            self.stop(kill=True)
        blank.unlink()
        return board.key(image)

    # -- launch steps --------------------------------------------------------------------------

    def _prepare(self, window: bool = True) -> None:
        """A fresh run directory: no sockets or state of an earlier run; new line FIFOs; and,
        with ``window``, an empty bulk window."""
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in (self.qmp_socket, self.ctl_socket, self.sensors_socket, self.shell_socket,
                      self.state_file, self.bulk_window, *self._fifos("tamper"),
                      *self._fifos("start")):
            stale.unlink(missing_ok=True)
        for fifo in (*self._fifos("tamper"), *self._fifos("start")):
            os.mkfifo(fifo, 0o600)
        if window:
            fd = os.open(self.bulk_window, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:  # QEMU maps the file as it finds it: readable by this user alone
                os.ftruncate(fd, WINDOW_SIZE)
            finally:
                os.close(fd)
        if self.console_log.exists():
            os.replace(self.console_log, self.run_dir / "console.prev.log")

    def _command(self, image: Image, board: Board, *, gdb: int | None,
                 fw_cfg: dict[str, Path | str], bbram: Path, ram: Path | None = None,
                 ram_shared: bool = False, incoming: bool = False,
                 window: bool = True) -> list[str]:
        return qemu_command(self.name, image, accel=board.accel, memory_mb=board.memory_mb,
                            cpus=board.cpus, tcg_thread=board.tcg_thread,
                            console_log=self.console_log, tamper_line=self.tamper_line,
                            start_line=self.run_dir / "start", qmp_socket=self.qmp_socket,
                            sensors_socket=self.sensors_socket, ctl_socket=self.ctl_socket,
                            gdb_port=gdb, shell_socket=self.shell_socket if board.debug else None,
                            fw_cfg=fw_cfg, bbram=bbram, ram=ram, ram_shared=ram_shared,
                            incoming=incoming, bulk=self.bulk_window if window else None)

    def _spawn(self, argv: list[str], board: Board, deadline: float, **state: Any) -> None:
        """Start QEMU detached and wait (until ``deadline``) for its QMP socket to answer."""
        with self.qemu_log.open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, close_fds=True)
        _CHILDREN[proc.pid] = proc
        self._save_state(pid=proc.pid, argv=argv, accel=board.accel, debug=board.debug,
                         started=time.time(), channel=None, **state)
        self.log.info("launched QEMU pid %d (%s)", proc.pid, board.accel)
        while True:
            if proc.poll() is not None:
                raise LaunchError(
                    f"QEMU exited with status {proc.returncode} at launch: {self._qemu_output()}",
                    exitcode=proc.returncode, command=argv, output=self._qemu_output())
            if self.qmp_socket.exists():
                try:
                    self.qmp("query-status", timeout=2.0)
                    break
                except (OSError, QMPError, asyncio.TimeoutError):
                    pass
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise LaunchError("QEMU's QMP socket did not answer before the launch's "
                                  "deadline", command=argv, output=self._qemu_output())
            time.sleep(0.005)
        self._save_state(channel=f"unix:{self.ctl_socket}?bulk={self.bulk_window}")

    def _resume(self, template: Template, deadline: float) -> None:
        """Load the template's device state into the QEMU waiting for it, then run it."""
        self.qmp("migrate-set-capabilities", {"capabilities": [
            {"capability": "x-ignore-shared", "state": True}]})
        self.qmp("migrate-incoming", {"uri": f"exec:cat {template.state}"})
        self._wait_migration("query-status", deadline)
        self.qmp("cont")

    def _wait_migration(self, query: str, deadline: float) -> None:
        """Poll until the migration (``query-migrate``: of this QEMU's state out;
        ``query-status``: into it) has finished, or raise LaunchError at ``deadline``."""
        while True:
            answer = self.qmp(query)
            status = answer.get("status")
            if query == "query-migrate" and status == "completed" or \
                    query == "query-status" and status not in ("inmigrate", "prelaunch"):
                return
            if status == "failed" or time.monotonic() > deadline:
                self.stop(kill=True)
                raise LaunchError(f"the template's migration did not finish ({query}: "
                                  f"{answer})", output=self._qemu_output())
            time.sleep(0.002)

    def _say(self, line: str, words: bytes) -> None:
        """Write ``words`` as a line on a line's ``.in`` FIFO (QEMU holds it open)."""
        writer = os.open(self._fifos(line)[0], os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(writer, words + b"\n")
        finally:
            os.close(writer)

    @staticmethod
    def _read_line(fifo: Path, timeout: float) -> bytes | None:
        """The first line QEMU writes on a line's ``.out`` FIFO within ``timeout`` seconds."""
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            deadline = time.monotonic() + timeout
            data = b""
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([reader], [], [], left)[0]:
                    return None
                data += os.read(reader, 4096)
        finally:
            os.close(reader)
        return data.split(b"\n", 1)[0].strip()

    def _start_sensors(self, deadline: float) -> None:
        """Start the sensors' watcher (emulator.sensors) and wait until it watches."""
        with self.sensors_log.open("ab") as log:
            watcher = subprocess.Popen(
                [sys.executable, "-m", "emulator.sensors", self.name], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=log, start_new_session=True, close_fds=True,
                env={**os.environ, "SEZ_HOME": str(self.home.root)})
        _CHILDREN[watcher.pid] = watcher
        assert watcher.stdout is not None
        try:
            ready = select.select([watcher.stdout], [], [], max(1.0, deadline - time.monotonic()))
            line = watcher.stdout.readline() if ready[0] else b""
        finally:
            watcher.stdout.close()
        if line.strip() != b"watching":
            self.stop(kill=True)
            raise LaunchError(f"the sensors of {self.name!r} did not start (see "
                              f"{self.sensors_log})")

    def _qemu_output(self) -> str:
        try:
            return self.qemu_log.read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for QEMU to exit; True if it has."""
        deadline = time.monotonic() + timeout
        while self.is_running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def tamper(self, cause: str = "tamper line", timeout: float = TAMPER_TIMEOUT
               ) -> TamperReport:
        """Trip the device's tamper line. A running zone zeroises itself and answers with the
        milliseconds it took (a zone that does not answer within ``timeout`` loses its power:
        its RAM goes with it); then, running or not, the hardware wipes the device's fuses
        and BBRAM disk and counts the event (Device.zeroise)."""
        cause = tamper_cause(cause) or "tamper line"
        device = Device.open(self.name, self.home)
        device.require_fuses()
        zone_ms = ack_ms = None
        if self.is_running():
            started = time.perf_counter()
            answer = self._trip(cause, timeout)
            if answer is None:
                self.log.error("the zone did not acknowledge the tamper trip: cutting power")
                self.stop(kill=True)
            else:
                ack_ms = (time.perf_counter() - started) * 1000
                zone_ms = answer
        started = time.perf_counter()
        record = device.zeroise(cause)
        return TamperReport(cause, zone_ms, ack_ms, (time.perf_counter() - started) * 1000,
                            int(str(record["count"])))

    def _trip(self, cause: str, timeout: float) -> float | None:
        """Write the trip on the line; the zone's milliseconds to zeroised, or None."""
        self._say("tamper", TAMPER_TRIP + f" {cause}".encode())
        answer = self._read_line(self._fifos("tamper")[1], timeout)
        word, _, value = (answer or b"").partition(b" ")
        try:
            return float(value) if word == TAMPER_ZEROISED else None
        except ValueError:
            return None

    def stop(self, *, kill: bool = False, timeout: float = POWERDOWN_TIMEOUT) -> bool:
        """Power off; with ``kill``, pull the plug (SIGKILL, nothing flushed).

        The ladder: ACPI power button (the zone syncs and powers off) for ``timeout`` seconds,
        then QMP ``quit``, then SIGTERM, then SIGKILL, each bounded. Returns False if the
        machine was not running. Calling it again is harmless.
        """
        pid = self.pid
        if pid is None:
            self._cleanup()
            return False
        steps: list[tuple[str, Callable[[], Any], float]] = [
            ("SIGKILL", lambda: os.kill(pid, signal.SIGKILL), 5.0)]
        if not kill:
            steps = [
                ("system_powerdown", lambda: self.qmp("system_powerdown"), timeout),
                ("quit", lambda: self.qmp("quit"), 5.0),
                ("SIGTERM", lambda: os.kill(pid, signal.SIGTERM), 3.0),
            ] + steps
        try:
            for what, action, wait in steps:
                try:
                    action()
                except QMP_ERRORS as exc:
                    self.log.debug("%s: %r", what, exc)
                if self.wait(wait):
                    self.log.info("stopped after %s", what)
                    return True
            raise MachineStateError(f"QEMU pid {pid} survived SIGKILL")
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        for path in (self.qmp_socket, self.ctl_socket, self.sensors_socket, self.shell_socket,
                     self.bulk_window, *self._fifos("tamper"), *self._fifos("start")):
            path.unlink(missing_ok=True)
        if self.state_file.exists():
            self._save_state(pid=None, channel=None)


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if this process spawned it (so it does not linger)."""
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        del _CHILDREN[pid]
