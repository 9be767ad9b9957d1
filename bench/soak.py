"""`make soak`: boot, use and power off zones over and over, and keep a report of every failure.

A cycle, for one zone (its own provisioned device under a private $SEZ_HOME):

  boot      launch QEMU and wait for the zone's hello (timed: "boot s"): boot_zone, a zone
            that does not answer left running for the report
  connect   open a session (SyncZone)
  attest    evidence for a fresh 32-byte nonce (timed: "attest ms") ...
  verify    ... appraised against the factory root and the image manifest's reference values
  setup     once per device: enrol the soak's owner key, load tests/applets/null (the state
            then has to survive every later power-off and power cut: it is not checked again)
  job       an interactive null job with a nonce; its receipt is verified
  detached  a detached null job: submit, result (waiting), receipt verified, ack
  traffic   (with --hold S) S seconds of 1 MiB echoes and null jobs back to back
  disconnect
  kill      (the cycles --kill-cycles picks) a driver in a subprocess connects, sends half
            of an 8 MiB request and is SIGKILLed, mid-request
  rehello   a new driver connects: the seconds until its hello is answered are recorded
  echo      ... and the zone answers an echo
  stop      orderly power-off (Machine.stop()) on the zone's even cycles, plug pulled
            (Machine.stop(kill=True)) on its odd ones

Every step is bounded (--boot-timeout for boot, --step-timeout for the others; requests
inside a step get half of it). A step that raises fails the cycle as "<step>:<exception
class>", one that outlives its bound as "<step>:timeout". The cycle then ends: a report is
collected, the zone is killed, and the next cycle goes on. --zones zones run at once, one
thread each, taking cycles from a shared count until --cycles have run.

A report, in --reports/<start>/<cycle>-<zone>-<kind>/, holds:

  console.log, console.prev.log   the zone's serial console (this boot, the previous one)
  qemu.log                        QEMU's own output
  qmp.json                        QMP query-status and query-cpus-fast (or the errors)
  registers.txt                   HMP `info registers -a`: every vCPU's registers (RIP ...;
                                  SSE too: the soak's devices are its own throwaway ones)
  sysrq.json                      the sysrq keys sent through QMP send-key (or the errors)
  console-after-sysrq.log         the console ~3 s after sysrq 9 (console loglevel up), l
                                  (backtrace of all CPUs), t (all tasks), w (blocked tasks)
                                  (the guest kernel's default sysrq mask, 0x1b6, refuses l, t
                                  and w: the console then says "This sysrq operation is
                                  disabled" unless the guest enables them)
  step.json                       cycle, zone, step, exception (class, message, traceback),
                                  the cycle's timings so far, cpus / tcg-thread, QEMU's argv

--reports/<start>/ also holds soak.log (the libraries' log) and summary.json (every cycle's
row and the summary). The last line printed is the summary; the exit status is 0 only if
there was no failure. No QEMU process the soak started is left at the end, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec

from emulator.device import Device
from emulator.factory import Factory
from emulator.image import load_image
from emulator.machine import LAUNCH_TIMEOUT, Machine
from emulator.paths import SezHome, project_root
from host_driver import SyncZone, ZoneTimeout
from host_driver.lifecycle import BOOT_TIMEOUT, boot_zone, qemu_processes
from host_driver.owner import (build_applet, generate_owner_key, load_owner_key, owner_spki,
                               package_measurement)
from host_driver.verifier import Reference, verify_evidence, verify_receipt

T = TypeVar("T")
log = logging.getLogger("soak")

NULL_APPLET = project_root() / "tests" / "applets" / "null"
#: Bound of a Machine.stop() (its ladder: power button 5 s, quit 5 s, SIGTERM 3 s, SIGKILL 5 s).
STOP_BOUND = 45.0
#: Seconds to wait after the sysrq keys before copying the console again.
SYSRQ_WAIT = 3.0

#: The driver that gets killed mid-request (as in tests/e2e/test_channel.py): it sends half
#: of an 8 MiB request, says so, and waits to be killed.
DRIVER = textwrap.dedent("""
    import asyncio, sys
    from firmware.abi import wire
    from host_driver import Zone
    async def main():
        zone = await Zone.connect(sys.argv[1], timeout=float(sys.argv[2]), heartbeat=None)
        message = wire.encode_request(1, "echo", {"data": b"z" * (8 << 20)})
        zone._channel.write(message[:len(message) // 2])
        await zone._channel.drain()
        print("half sent", flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")


class StepTimeout(Exception):
    """A step outlived its bound."""


class Mismatch(Exception):
    """The zone answered, but not what it should have."""


class DriverError(Exception):
    """The driver meant to be killed mid-request did not get that far, or would not die."""


class QemuExited(Exception):
    """QEMU was gone before the soak stopped it."""


class StepFailed(Exception):
    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"{step}: {error.__class__.__name__}: {error}")
        self.step = step
        self.error = error
        timeout = isinstance(error, StepTimeout)
        self.kind = f"{step}:{'timeout' if timeout else error.__class__.__name__}"


def bounded(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()`` in a daemon thread; StepTimeout if it has not returned within ``seconds``
    (the thread is then left behind: killing the zone is what unblocks it)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, name="soak-step", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise StepTimeout(f"did not finish within {seconds:.1f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def step(name: str, seconds: float, fn: Callable[[], T]) -> T:
    """``fn()`` as step ``name``, bounded by ``seconds``: StepFailed if it raises or hangs."""
    try:
        return bounded(seconds, fn)
    except Exception as exc:
        raise StepFailed(name, exc) from exc


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and the seconds it took."""
    started = time.monotonic()
    value = fn()
    return value, time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of all values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


class Children:
    """The QEMU processes the soak started, waited for so that none is left a zombie: PID 1
    here reaps no orphans, and a killed QEMU shows as a zombie (its main thread) some time
    before it can be reaped (its other threads)."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.lock = threading.Lock()

    def add(self, pid: object) -> None:
        if isinstance(pid, int):
            with self.lock:
                self.pids.add(pid)

    def reap(self, timeout: float = 0.0) -> list[int]:
        """Reap those that have exited, waiting up to ``timeout`` s; the pids not reaped."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                for pid in list(self.pids):
                    try:
                        done = os.waitpid(pid, os.WNOHANG)[0] == pid
                    except ChildProcessError:
                        done = True  # reaped already (emulator.machine polls its children)
                    if done:
                        self.pids.discard(pid)
                left = sorted(self.pids)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)


def boot(name: str, home: SezHome, *, timeout: float, cpus: int | None,
         tcg_thread: str | None, launched: Callable[[object], None]
         ) -> tuple[dict[str, Any], float]:
    """host_driver.lifecycle.boot_zone, leaving a zone that does not answer hello running for the
    report; ``launched`` is told QEMU's pid."""
    try:
        _, session, seconds = boot_zone(name, home=home, timeout=timeout, cpus=cpus,
                                        tcg_thread=tcg_thread, kill_on_timeout=False)
    finally:
        launched(Machine(name, home).state().get("pid"))
    return session, seconds


def read_line(stream: Any, timeout: float) -> bytes:
    """One line from a pipe, or what came before EOF or ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            break
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\n")[0]


def tcg_settings(argv: list[str]) -> tuple[str, str]:
    """The vCPUs and TCG threading a QEMU command line asks for."""
    cpus = argv[argv.index("-smp") + 1] if "-smp" in argv else "?"
    accel = argv[argv.index("-accel") + 1] if "-accel" in argv else "?"
    return cpus, accel.partition("thread=")[2] or accel


class StopLadder(logging.Handler):
    """Which rung of Machine.stop()'s ladder stopped each machine (stop() only says whether
    the machine was running; it logs the rung)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "stopped after %s" and isinstance(record.args, tuple):
            self.last[record.name.rpartition(".")[2]] = str(record.args[0])


@dataclass
class ZoneSlot:
    """One zone, driven by one thread."""

    name: str
    machine: Machine
    ueid: bytes
    ready: bool = False  # owner enrolled and applet loaded
    cycles: int = 0  # cycles this zone has run


@dataclass
class Cycle:
    number: int
    zone: ZoneSlot
    kill_driver: bool
    orderly: bool
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    sessions: list[SyncZone] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, home: SezHome, run_dir: Path,
                 key: ec.EllipticCurvePrivateKey) -> None:
        self.args = args
        self.home = home
        self.run_dir = run_dir
        self.key = key
        self.signed = build_applet(NULL_APPLET, key)
        self.measurement = package_measurement(self.signed)
        self.root = Factory(home).root_cert()
        self.reference = Reference.from_manifest(load_image().directory / "manifest.json")
        self.request_timeout = args.step_timeout / 2
        self.kill_cycles = args.cycles if args.kill_cycles is None else args.kill_cycles
        self.names = [f"soak-{i}" for i in range(args.zones)]
        self.lock = threading.Lock()
        self.taken = 0
        self.rows: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.drivers: set[subprocess.Popen[bytes]] = set()
        self.children = Children()
        self.ladder = StopLadder()
        logging.getLogger("emulator.machine").addHandler(self.ladder)
        self.settings: tuple[str, str] | None = None  # (cpus, tcg thread) QEMU was given

    # -- the zones' threads --------------------------------------------------------------------

    def take_cycle(self) -> int | None:
        with self.lock:
            if self.stopping.is_set() or self.taken >= self.args.cycles:
                return None
            self.taken += 1
            return self.taken

    def kills_driver(self, number: int) -> bool:
        """--kill-cycles of the cycles, spread evenly over the run."""
        n, total = int(self.kill_cycles), int(self.args.cycles)
        return number * n // total > (number - 1) * n // total

    def zone_worker(self, slot: ZoneSlot) -> None:
        while (number := self.take_cycle()) is not None:
            cycle = Cycle(number, slot, self.kills_driver(number), orderly=slot.cycles % 2 == 0)
            try:
                row = self.run_cycle(cycle)
            except Exception as exc:  # a bug of the soak itself: stop this zone, say why
                log.exception("cycle %d of %s", number, slot.name)
                self.kill(slot.machine)
                self.record(self.row(cycle, f"soak:{exc.__class__.__name__}", None))
                return
            slot.cycles += 1
            self.record(row)

    def record(self, row: dict[str, Any]) -> None:
        """Keep the row; print the cycle's progress line."""
        t = row["timings"]
        outcome = row["kind"] or ("interrupted" if row.get("interrupted") else "ok")
        parts = [f"cycle {row['cycle']:>{len(str(self.args.cycles))}}/{self.args.cycles}",
                 f"{row['zone']:<7}", f"{outcome:<22}",
                 f"boot {t['boot_s']:5.2f} s" if "boot_s" in t else "boot     - s",
                 f"attest {t['attest_ms']:4.0f} ms" if "attest_ms" in t else "attest    - ms",
                 f"rehello {t['rehello_s']:5.2f} s" if "rehello_s" in t else "rehello     - s"]
        if row["orderly"] and row.get("stopped_after") not in (None, "system_powerdown"):
            parts.append(f"(the orderly stop needed {row['stopped_after']})")
        if row["report"]:
            parts.append(f"report {row['report']}")
        with self.lock:
            self.rows.append(row)
            print("  ".join(parts), flush=True)

    @staticmethod
    def row(cycle: Cycle, kind: str | None, report: Path | None) -> dict[str, Any]:
        return {"cycle": cycle.number, "zone": cycle.zone.name, "zone_cycle": cycle.zone.cycles,
                "ok": kind is None and not cycle.info.get("interrupted"), "kind": kind,
                "kill_driver": cycle.kill_driver, "orderly": cycle.orderly,
                "timings": dict(cycle.timings), **cycle.info,
                "report": str(report) if report else None}

    # -- one cycle -----------------------------------------------------------------------------

    def run_cycle(self, cycle: Cycle) -> dict[str, Any]:
        try:
            self.steps(cycle)
            return self.row(cycle, None, None)
        except StepFailed as failure:
            log.warning("cycle %d, %s: %s", cycle.number, cycle.zone.name, failure)
            report = None
            if self.stopping.is_set():
                cycle.info["interrupted"] = True
            else:
                report = self.report(cycle, failure)
            self.kill(cycle.zone.machine)
            for session in cycle.sessions:
                try:
                    bounded(10, session.close)
                except Exception as exc:
                    log.info("closing a session after a failure: %r", exc)
            if cycle.info.get("interrupted"):
                return self.row(cycle, None, None)
            return self.row(cycle, failure.kind, report)

    def steps(self, cycle: Cycle) -> None:
        slot, bound, timeout = cycle.zone, self.args.step_timeout, self.request_timeout
        machine, timings = slot.machine, cycle.timings
        self.children.reap()
        if machine.is_running():  # left over by a step that outlived its bound
            step("boot", STOP_BOUND, lambda: machine.stop(kill=True))
        try:
            hello, timings["boot_s"] = step(
                "boot", self.args.boot_timeout + LAUNCH_TIMEOUT + 15,
                lambda: boot(slot.name, self.home, timeout=self.args.boot_timeout,
                             cpus=self.args.cpus, tcg_thread=self.args.tcg_thread,
                             launched=self.children.add))
        finally:
            argv = machine.state().get("argv")
            self.settings = self.settings or (tcg_settings(argv) if argv else None)
        cycle.info["boot_counter"] = hello.get("boot_counter")
        url = step("connect", bound, lambda: machine.channel)

        def connect() -> SyncZone:
            zone = SyncZone(url, timeout=timeout, hello_timeout=timeout)
            cycle.sessions.append(zone)
            return zone

        zone = step("connect", bound, connect)
        nonce = os.urandom(32)
        evidence, seconds = step("attest", bound, lambda: timed(lambda: zone.attest(nonce)))
        timings["attest_ms"] = seconds * 1000
        _, seconds = step("verify", bound, lambda: timed(lambda: verify_evidence(
            evidence, nonce=nonce, root=self.root, reference=self.reference,
            expected_ueid=slot.ueid)))
        timings["verify_ms"] = seconds * 1000
        if not slot.ready:
            _, timings["setup_s"] = step("setup", bound, lambda: timed(lambda: self.setup(zone)))
            slot.ready = True
        timings["job_ms"] = step("job", bound, lambda: self.job(zone, slot.ueid)) * 1000
        timings["detached_ms"] = step("detached", bound,
                                      lambda: self.detached(zone, slot.ueid)) * 1000
        if self.args.hold > 0:
            timings["traffic_n"] = step("traffic", self.args.hold + bound,
                                        lambda: self.traffic(zone, self.args.hold))
        step("disconnect", bound, zone.close)

        if cycle.kill_driver:
            step("kill", bound, lambda: self.kill_a_driver(url))
            zone, timings["rehello_s"] = step("rehello", bound, lambda: timed(connect))

            def echo() -> None:
                if zone.echo(b"after the kill") != b"after the kill":
                    raise Mismatch("the echo after the killed driver came back changed")
                zone.close()

            _, seconds = step("echo", bound, lambda: timed(echo))
            timings["echo_ms"] = seconds * 1000

        def stop() -> None:
            self.ladder.last.pop(slot.name, None)
            if not machine.stop(kill=not cycle.orderly):
                raise QemuExited("QEMU had exited before the stop")
            cycle.info["stopped_after"] = self.ladder.last.pop(slot.name, None)

        _, timings["stop_s"] = step("stop", STOP_BOUND, lambda: timed(stop))

    @staticmethod
    def traffic(zone: SyncZone, seconds: float) -> int:
        """1 MiB echoes and null jobs back to back for ``seconds``; how many rounds."""
        rounds, until = 0, time.monotonic() + seconds
        while time.monotonic() < until:
            data = os.urandom(1 << 20)
            if zone.echo(data) != data or zone.run("null", data[:4096])["output"] != data[:4096]:
                raise Mismatch("an echo or a null job came back changed")
            rounds += 1
        return rounds

    def setup(self, zone: SyncZone) -> None:
        """Enrol the soak's owner key and load the null applet, unless done already."""
        spki = owner_spki(self.key)
        owner = zone.owner()["owner"]
        if owner is None:
            zone.enroll(spki)
        elif owner != hashlib.sha256(spki).hexdigest():
            raise Mismatch(f"the zone belongs to another owner ({owner[:16]}…)")
        if not any(applet.get("name") == "null" for applet in zone.applets()):
            zone.load(self.signed, timeout=self.request_timeout)

    def job(self, zone: SyncZone, ueid: bytes) -> float:
        """An interactive null job; its receipt verified. Returns the round trip (s)."""
        data, nonce = os.urandom(256), os.urandom(16)
        answer, seconds = timed(lambda: zone.run("null", data, nonce=nonce))
        if answer["output"] != data:
            raise Mismatch("the null applet's output is not its input")
        verify_receipt(answer["receipt"], input=data, output=answer["output"], nonce=nonce,
                       root=self.root, expected_ueid=ueid, expected_measurement=self.measurement)
        return seconds

    def detached(self, zone: SyncZone, ueid: bytes) -> float:
        """A detached null job: submit, wait for its result, verify the receipt, ack."""
        data, nonce = os.urandom(256), os.urandom(16)
        started = time.monotonic()
        job = str(zone.submit("null", data, nonce=nonce)["job"])
        deadline = started + self.request_timeout
        while True:
            answer = zone.result(job, wait=max(0.5, min(30.0, deadline - time.monotonic())))
            if answer["state"] not in ("queued", "running"):
                break
            if time.monotonic() > deadline:
                raise ZoneTimeout(f"detached job {job} still {answer['state']} after "
                                  f"{self.request_timeout:.0f} s", op="result")
        seconds = time.monotonic() - started
        if answer["state"] != "done" or answer.get("output") != data:
            raise Mismatch(f"detached job {job} ended {answer['state']}: "
                           f"{answer.get('error') or 'another output'}")
        verify_receipt(answer["receipt"], input=data, output=data, nonce=nonce, root=self.root,
                       expected_ueid=ueid, expected_measurement=self.measurement)
        zone.ack(job)
        return seconds

    def kill_a_driver(self, url: str) -> None:
        """A driver process connects, sends half of an 8 MiB request, and is SIGKILLed."""
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, url, str(self.request_timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.drivers.add(proc)
        try:
            line = read_line(proc.stdout, self.request_timeout)
        finally:
            proc.kill()
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                raise DriverError("the killed driver was not gone within 10 s") from None
            self.drivers.discard(proc)
        if line != b"half sent":
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise DriverError(f"the driver did not connect (said {line!r}): {tail[0]}")

    def kill(self, machine: Machine) -> None:
        try:
            bounded(STOP_BOUND, lambda: machine.stop(kill=True))
        except Exception as exc:
            log.error("killing %s: %r", machine.name, exc)

    # -- reports -------------------------------------------------------------------------------

    def qmp(self, machine: Machine, command: str, args: dict[str, Any] | None = None) -> Any:
        """{"return": ...} or {"error": ...}: never raises, never hangs."""
        if not machine.is_running():
            return {"error": "the machine is not running"}
        try:
            return {"return": bounded(15, lambda: machine.qmp(command, args))}
        except Exception as exc:
            return {"error": f"{exc.__class__.__name__}: {exc}"}

    def report(self, cycle: Cycle, failure: StepFailed) -> Path:
        machine = cycle.zone.machine
        directory = self.run_dir / (f"{cycle.number:04d}-{cycle.zone.name}-"
                                    + failure.kind.replace(":", "-"))
        directory.mkdir(parents=True, exist_ok=True)
        for source, target in ((machine.console_log, "console.log"),
                               (machine.run_dir / "console.prev.log", "console.prev.log"),
                               (machine.qemu_log, "qemu.log")):
            if source.exists():
                shutil.copyfile(source, directory / target)
        qmp = {command: self.qmp(machine, command)
               for command in ("query-status", "query-cpus-fast")}
        (directory / "qmp.json").write_text(json.dumps(qmp, indent=2) + "\n")
        registers = self.qmp(machine, "human-monitor-command",
                             {"command-line": "info registers -a"})
        (directory / "registers.txt").write_text(
            str(registers["return"]) if "return" in registers else f"error: {registers['error']}\n")
        # 9 first: the console loglevel to 9 (the kernel boots `quiet`, and the dumps are
        # printed below the default loglevel), then l (all CPUs), t (all tasks), w (blocked).
        sysrq = {}
        for key in ("9", "l", "t", "w"):
            sysrq[key] = self.qmp(machine, "send-key", {"keys": [
                {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "sysrq"},
                {"type": "qcode", "data": key}]})
            time.sleep(0.3)
        (directory / "sysrq.json").write_text(json.dumps(sysrq, indent=2) + "\n")
        if any("return" in answer for answer in sysrq.values()):
            time.sleep(SYSRQ_WAIT)
        if machine.console_log.exists():
            shutil.copyfile(machine.console_log, directory / "console-after-sysrq.log")
        error = failure.error
        argv = machine.state().get("argv", [])
        details = {
            "cycle": cycle.number, "zone": cycle.zone.name, "zone_cycle": cycle.zone.cycles,
            "step": failure.step, "kind": failure.kind,
            "exception": {"class": f"{type(error).__module__}.{type(error).__qualname__}",
                          "message": str(error),
                          "traceback": traceback.format_exception(error)},
            "timings": cycle.timings, **cycle.info,
            "cpus": self.args.cpus, "tcg_thread": self.args.tcg_thread,
            "qemu_settings": dict(zip(("cpus", "tcg_thread"), tcg_settings(argv))) if argv
            else None,
            "argv": argv, "qemu_pid": machine.state().get("pid"), "time": time.time(),
        }
        (directory / "step.json").write_text(json.dumps(details, indent=2, default=str) + "\n")
        return directory

    # -- the end ---------------------------------------------------------------------------------

    def abort(self) -> None:
        """Ctrl-C: no new cycle; kill the drivers and the zones (their steps then fail fast)."""
        self.stopping.set()
        for proc in list(self.drivers):
            proc.kill()
        for name in self.names:
            self.kill(Machine(name, self.home))

    def cleanup(self) -> list[int]:
        """Kill every zone and driver still there, reap them; the QEMU pids that survived."""
        for proc in list(self.drivers):
            proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for name in self.names:
            self.kill(Machine(name, self.home))
        run_root = self.home.root / "run"
        for pid in qemu_processes(run_root):
            log.error("QEMU pid %d still there at the end: SIGKILL", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        unreaped = self.children.reap(timeout=10)
        if unreaped:
            log.error("QEMU pids not reaped at the end: %s", unreaped)
        return sorted(set(qemu_processes(run_root)) | set(unreaped))

    def summary(self, interrupted: bool, left: list[int]) -> tuple[dict[str, Any], str]:
        """The results (every cycle's row and the summary) and the summary line."""
        rows = sorted(self.rows, key=lambda r: int(r["cycle"]))
        finished = sum(1 for row in rows if not row.get("interrupted"))  # cut short by Ctrl-C
        failures: dict[str, int] = {}
        for row in rows:
            if row["kind"]:
                failures[row["kind"]] = failures.get(row["kind"], 0) + 1
        if left:
            failures["cleanup:QemuLeftBehind"] = len(left)

        def figures(key: str) -> dict[str, Any]:
            values = [float(r["timings"][key]) for r in rows if key in r["timings"]]
            return {"n": len(values), "p50": percentile(values, .5) if values else None,
                    "p99": percentile(values, .99) if values else None,
                    "worst": max(values, default=None), "all": values}

        boot, attest, rehello = figures("boot_s"), figures("attest_ms"), figures("rehello_s")
        cpus, thread = self.settings or ("?", "?")
        cpus = str(self.args.cpus) if self.args.cpus is not None else cpus
        thread = self.args.tcg_thread or thread
        summary = {
            "cycles": finished, "requested": self.args.cycles, "zones": self.args.zones,
            "interrupted": interrupted, "cpus": cpus, "tcg_thread": thread,
            "failures": failures, "boot_s": boot, "attest_ms": attest,
            "hello_after_killed_driver_s": rehello, "left_behind": left,
            "home": str(self.home.root), "reports": str(self.run_dir),
        }
        total = sum(failures.values())
        failed = (f"{total} failure{'s' * (total != 1)} ("
                  + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())) + ")"
                  if total else "0 failures")
        done = (f"interrupted after {finished} of {self.args.cycles} cycles" if interrupted
                else f"{finished} cycles" if finished == self.args.cycles
                else f"{finished} of {self.args.cycles} cycles")
        parts = [
            f"soak: {done}, {self.args.zones} zone{'s' * (self.args.zones != 1)}, "
            f"cpus {cpus} {thread}: {failed}",
            f"boot p50 {boot['p50']:.1f} s p99 {boot['p99']:.1f} s" if boot["n"] else "boot -",
            f"attest p50 {attest['p50']:.0f} ms p99 {attest['p99']:.0f} ms" if attest["n"]
            else "attest -",
            f"hello after a killed driver: {rehello['n']} times, p50 {rehello['p50']:.2f} s, "
            f"worst {rehello['worst']:.2f} s" if rehello["n"]
            else "hello after a killed driver: 0 times",
        ]
        return {"summary": summary, "line": "; ".join(parts), "cycles": rows}, "; ".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=200, help="cycles in all (default 200)")
    ap.add_argument("--zones", type=int, default=2,
                    help="zones running at once, each its own device (default 2)")
    ap.add_argument("--cpus", type=int, default=None, help="vCPUs per zone (default: the "
                    "emulator's)")
    ap.add_argument("--tcg-thread", choices=("single", "multi"), default=None,
                    help="TCG threading (default: the emulator's)")
    ap.add_argument("--reports", type=Path, default=Path("soak-reports"),
                    help="where reports go (default soak-reports/)")
    ap.add_argument("--home", type=Path, default=None, help="$SEZ_HOME to use (default: a "
                    "fresh temporary one, removed at the end if nothing failed)")
    ap.add_argument("--kill-cycles", type=int, default=None, metavar="N",
                    help="how many cycles kill a driver mid-request (default: all)")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the results here")
    ap.add_argument("--boot-timeout", type=float, default=BOOT_TIMEOUT,
                    help=f"seconds from launch to hello (default {BOOT_TIMEOUT:.0f})")
    ap.add_argument("--hold", type=float, default=0.0, metavar="SECONDS",
                    help="keep each zone busy this long before the stop: 1 MiB echoes and "
                    "null jobs back to back (default 0)")
    ap.add_argument("--step-timeout", type=float, default=60.0,
                    help="bound of every other step; its requests get half (default 60)")
    args = ap.parse_args(argv)
    if args.cycles < 1 or args.zones < 1:
        ap.error("--cycles and --zones must be at least 1")
    if args.kill_cycles is not None and not 0 <= args.kill_cycles <= args.cycles:
        ap.error("--kill-cycles must be between 0 and --cycles")
    return args


def prepare_home(args: argparse.Namespace) -> tuple[SezHome, bool]:
    """The soak's $SEZ_HOME (a fresh temporary one unless --home), with a factory."""
    temporary = args.home is None
    root = Path(tempfile.mkdtemp(prefix="sez-soak-")) if temporary else args.home.resolve()
    home = SezHome(root)
    os.environ["SEZ_HOME"] = str(root)
    if not Factory(home).exists():
        Factory(home).init()
    return home, temporary


def owner_key(home: SezHome) -> ec.EllipticCurvePrivateKey:
    path = home.root / "soak-owner.pem"
    return load_owner_key(path) if path.exists() else generate_owner_key(path)


def on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(soak: Soak, slots: list[ZoneSlot]) -> bool:
    """One thread per zone until the cycles are done; True if Ctrl-C (or SIGTERM) came.
    (Polled with sleep, not Thread.join: a join that KeyboardInterrupt cuts short can leave
    the thread looking finished while it still runs.)"""
    done = [threading.Event() for _ in slots]

    def worker(slot: ZoneSlot, finished: threading.Event) -> None:
        try:
            soak.zone_worker(slot)
        finally:
            finished.set()

    try:
        for slot, finished in zip(slots, done):
            threading.Thread(target=worker, args=(slot, finished), name=slot.name,
                             daemon=True).start()
        while not all(finished.is_set() for finished in done):
            time.sleep(0.2)
        return False
    except KeyboardInterrupt:
        print("soak: interrupted, killing the zones", flush=True)
        soak.abort()
        deadline = time.monotonic() + 60
        while not all(finished.is_set() for finished in done) and time.monotonic() < deadline:
            time.sleep(0.1)
        return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = args.reports.resolve() / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=run_dir / "soak.log", level=logging.INFO,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, on_sigterm)
    home, temporary = prepare_home(args)
    for i in range(args.zones):
        if not home.device_dir(f"soak-{i}").exists():
            Factory(home).provision(f"soak-{i}")
    soak = Soak(args, home, run_dir, owner_key(home))
    slots = [ZoneSlot(name, Machine(name, home),
                      bytes.fromhex(str(Device.open(name, home).info["ueid"])))
             for name in soak.names]
    print(f"soak: {args.cycles} cycles on {args.zones} zone(s); $SEZ_HOME {home.root}; "
          f"reports in {run_dir}", flush=True)
    interrupted = True
    try:
        interrupted = run(soak, slots)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up is not to be interrupted
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        left = soak.cleanup()
    results, line = soak.summary(interrupted, left)
    text = json.dumps(results, indent=2, default=str) + "\n"
    (run_dir / "summary.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    failed = bool(results["summary"]["failures"])
    if temporary and not failed:
        shutil.rmtree(home.root, ignore_errors=True)
    elif temporary:
        print(f"soak: kept $SEZ_HOME {home.root} (there were failures)", flush=True)
    print(line, flush=True)
    return 130 if interrupted else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
