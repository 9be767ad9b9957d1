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

# (The docstring is also --help.) A cycle's parts: soak_cycle.py; its reports: soak_report.py.

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from emulator.device import Device
from emulator.factory import Factory
from emulator.image import load_image
from emulator.machine import LAUNCH_TIMEOUT, Machine
from emulator.paths import SezHome
from host_driver import SyncZone
from host_driver.lifecycle import BOOT_TIMEOUT, qemu_processes
from host_driver.owner import generate_owner_key, load_owner_key
from host_driver.verifier import Reference, verify_evidence

from soak_cycle import (STOP_BOUND, Children, Cycle, Mismatch, QemuExited, StepFailed,
                        StopLadder, Workload, ZoneSlot, boot, bounded, kill, step, timed)
from soak_report import summary, tcg_settings, write_report

log = logging.getLogger("soak")


class Soak:
    """The run: a thread per zone takes cycles from a shared count and keeps each one's row;
    the end kills and reaps whatever is left."""

    def __init__(self, args: argparse.Namespace, home: SezHome, run_dir: Path,
                 key: ec.EllipticCurvePrivateKey) -> None:
        self.args = args
        self.home = home
        self.run_dir = run_dir
        self.work = Workload(key, Factory(home).root_cert(), args.step_timeout / 2)
        self.reference = Reference.from_manifest(load_image().directory / "manifest.json")
        self.kill_cycles = args.cycles if args.kill_cycles is None else args.kill_cycles
        self.names = [f"soak-{i}" for i in range(args.zones)]
        self.lock = threading.Lock()
        self.taken = 0
        self.rows: list[dict[str, Any]] = []
        self.stopping = threading.Event()
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
                kill(slot.machine)
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
                report = write_report(self.run_dir, cycle, failure, self.args)
            kill(cycle.zone.machine)
            for session in cycle.sessions:
                try:
                    bounded(10, session.close)
                except Exception as exc:
                    log.info("closing a session after a failure: %r", exc)
            if cycle.info.get("interrupted"):
                return self.row(cycle, None, None)
            return self.row(cycle, failure.kind, report)

    def steps(self, cycle: Cycle) -> None:
        slot, bound, timeout = cycle.zone, self.args.step_timeout, self.work.request_timeout
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
            evidence, nonce=nonce, root=self.work.root, reference=self.reference,
            expected_ueid=slot.ueid)))
        timings["verify_ms"] = seconds * 1000
        if not slot.ready:
            _, timings["setup_s"] = step("setup", bound,
                                         lambda: timed(lambda: self.work.setup(zone)))
            slot.ready = True
        timings["job_ms"] = step("job", bound, lambda: self.work.job(zone, slot.ueid)) * 1000
        timings["detached_ms"] = step("detached", bound,
                                      lambda: self.work.detached(zone, slot.ueid)) * 1000
        if self.args.hold > 0:
            timings["traffic_n"] = step("traffic", self.args.hold + bound,
                                        lambda: self.work.traffic(zone, self.args.hold))
        step("disconnect", bound, zone.close)

        if cycle.kill_driver:
            step("kill", bound, lambda: self.work.kill_a_driver(url))
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

    # -- the end ---------------------------------------------------------------------------------

    def abort(self) -> None:
        """Ctrl-C: no new cycle; kill the drivers and the zones (their steps then fail fast)."""
        self.stopping.set()
        for proc in list(self.work.drivers):
            proc.kill()
        for name in self.names:
            kill(Machine(name, self.home))

    def cleanup(self) -> list[int]:
        """Kill every zone and driver still there, reap them; the QEMU pids that survived."""
        for proc in list(self.work.drivers):
            proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for name in self.names:
            kill(Machine(name, self.home))
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
    results, line = summary(soak.rows, args, soak.settings, interrupted, left, home, run_dir)
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
