"""The parts of a soak cycle (bench/soak.py): every step bounded and named when it fails,
the soak's own QEMU children, and the work a cycle does with a zone that answers."""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.machine import Machine
from emulator.paths import SezHome, project_root
from firmware.abi.keys import key_id
from firmware.abi.jobs import FINAL, JobState
from host_driver import SyncZone, ZoneTimeout
from host_driver.lifecycle import boot_zone
from host_driver.owner import build_applet, owner_spki, package_measurement
from host_driver.verifier import verify_receipt

T = TypeVar("T")
log = logging.getLogger("soak")

NULL_APPLET = project_root() / "tests" / "applets" / "null"
#: Bound of a Machine.stop() (its ladder: power button 5 s, quit 5 s, SIGTERM 3 s, SIGKILL 5 s).
STOP_BOUND = 45.0

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


class Workload:
    """What a cycle does with a zone that answers: the soak's owner key and the null applet it
    signed, the root and measurement receipts must name, the bound of each request, and the
    drivers it has started to kill mid-request."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, root: x509.Certificate,
                 request_timeout: float) -> None:
        self.key = key
        self.signed = build_applet(NULL_APPLET, key)
        self.measurement = package_measurement(self.signed)
        self.root = root
        self.request_timeout = request_timeout
        self.drivers: set[subprocess.Popen[bytes]] = set()

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
        elif owner != key_id(spki).hex():
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
            if answer["state"] in FINAL:
                break
            if time.monotonic() > deadline:
                raise ZoneTimeout(f"detached job {job} still {answer['state']} after "
                                  f"{self.request_timeout:.0f} s", op="result")
        seconds = time.monotonic() - started
        if answer["state"] != JobState.DONE or answer.get("output") != data:
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


def kill(machine: Machine) -> None:
    """Pull the plug, bounded; a failure is logged, not raised (the soak goes on)."""
    try:
        bounded(STOP_BOUND, lambda: machine.stop(kill=True))
    except Exception as exc:
        log.error("killing %s: %r", machine.name, exc)
