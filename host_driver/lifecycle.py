"""A zone's lifecycle from the host: boot it, say what QEMU is doing, stop it.

    with booted("demo") as zone:          # provisioned device "demo", booted until it answers
        with SyncZone(zone.url) as session:
            session.info()
                                          # here the machine is stopped (killed by default)

``boot_zone`` starts a device's machine detached and returns once its zone answers hello; a
failure after the launch leaves no QEMU running (unless the caller asks to keep a zone that
timed out, to look at it). ``booted`` wraps it as a context that stops the machine at its end.
The CLI, the pytest plugin, the demo and the benchmarks boot zones through this module; it, the
CLI and the plugin are the host driver's only importers of ``emulator``.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from emulator.device import Device
from emulator.errors import BootTimeout, LaunchError
from emulator.image import load_image
from emulator.machine import QMP_ERRORS, Machine, MachineStatus
from emulator.paths import SezHome
from emulator.template import template_for

from .errors import ChannelError, ZoneTimeout
from .relay.sync import SyncZone

__all__ = ["BOOT_TIMEOUT", "QMP_STATE_TIMEOUT", "BootedZone", "boot_zone", "booted",
           "qemu_state", "unanswered", "qemu_processes"]

#: Seconds a cold boot may take before it counts as hung (TCG on 2 cores boots in ~5 s).
BOOT_TIMEOUT = float(os.environ.get("SEZ_BOOT_TIMEOUT", "90"))
#: Seconds each QMP step may take when an error message asks QEMU for its run state.
QMP_STATE_TIMEOUT = 2.0


def boot_zone(name: str, *, debug: bool = False, accel: str = "auto",
              timeout: float = BOOT_TIMEOUT, home: SezHome | None = None,
              cpus: int | None = None, tcg_thread: str | None = None, gdb: int | None = None,
              snapshot: bool = False,
              kill_on_timeout: bool = True) -> tuple[MachineStatus, dict[str, Any], float]:
    """Start device ``name`` detached and wait until its zone answers ``hello``.
    ``cpus`` and ``tcg_thread`` override the machine's defaults (emulator.board); ``gdb``
    opens a gdb stub on that port of 127.0.0.1 (debug zones only). With ``snapshot``, the
    machine resumes from the image's template (emulator.template; made first if there is
    none, which takes a cold boot) instead of booting.

    Returns the machine status, the hello answer, and the seconds from launch to hello.
    Raises LaunchError if QEMU dies (with its output and the console tail), BootTimeout if the
    zone does not answer within ``timeout`` seconds: the machine is then killed, unless
    ``kill_on_timeout`` is false (to look at it first, as the soak does). Any other failure
    after the launch, Ctrl-C included, kills the machine too.
    """
    home = home or SezHome.default()
    image = load_image()
    device = Device.open(name, home)
    machine = Machine(name, home)
    template = template_for(image, home=home, accel=accel, debug=debug, cpus=cpus,
                            tcg_thread=tcg_thread) if snapshot else None
    started = time.monotonic()
    with machine:  # from here on, an error kills the QEMU launched in this block
        machine.launch(image, device, accel=accel, debug=debug, cpus=cpus, tcg_thread=tcg_thread,
                       gdb=gdb, template=template)
        remaining = max(1.0, timeout - (time.monotonic() - started))
        try:
            with SyncZone(machine.channel, hello_timeout=remaining) as zone:
                session = zone.greeting
        except (ZoneTimeout, ChannelError) as exc:
            no_hello: ZoneTimeout | ChannelError = exc
        else:
            return machine.status(), session, time.monotonic() - started
        if kill_on_timeout or not machine.is_running():
            raise _boot_failure(name, machine, timeout, killed=True) from no_hello
    # The zone timed out and the caller keeps it running, to look at it before stopping it.
    raise _boot_failure(name, machine, timeout, killed=False) from no_hello


def _boot_failure(name: str, machine: Machine, timeout: float, *, killed: bool) -> LaunchError:
    """Why zone ``name`` did not answer hello: QEMU exited (LaunchError), or it runs but the
    zone is silent (BootTimeout, saying QEMU's run state and, as ``killed`` says, either that
    the machine is killed or how to recover it); with the console's tail."""
    console = machine.console(tail=20)
    if not machine.is_running():
        return LaunchError(f"QEMU exited while zone {name!r} booted (sez console {name}):"
                           f"\n{console}", console=console)
    state = qemu_state(machine)
    then = (f"killed it: sez boot {name} starts it again, the zone keeps its state (sez "
            f"console {name} shows the boot)" if killed else
            f"to recover: sez stop {name} --kill, then sez boot {name} (the zone keeps its "
            "state)")
    return BootTimeout(f"zone {name!r} did not answer hello within {timeout:.0f} s (QEMU: "
                       f"{state}); {then}:\n{console}", console=console, qemu_status=state)


@dataclass(frozen=True)
class BootedZone:
    """A zone this process booted: its machine, the machine's status and the zone's hello
    answer at boot, and the seconds from launch to that answer."""

    name: str
    machine: Machine
    status: MachineStatus = field(repr=False)
    greeting: dict[str, Any] = field(repr=False)
    boot_seconds: float

    @property
    def url(self) -> str:
        """The control channel's host end (what Zone.connect and SyncZone take)."""
        return self.machine.channel


@contextmanager
def booted(name: str, *, debug: bool = False, accel: str = "auto",
           timeout: float = BOOT_TIMEOUT, home: SezHome | None = None,
           cpus: int | None = None, tcg_thread: str | None = None, gdb: int | None = None,
           snapshot: bool = False, kill: bool = True) -> Iterator[BootedZone]:
    """Boot device ``name`` (``boot_zone``, which raises as it says) and yield it as a
    BootedZone; at the end of the block, whatever happened in it, stop its machine: by
    pulling the plug, or with ``kill`` false in order (the zone syncs and powers off)."""
    home = home or SezHome.default()
    status, session, seconds = boot_zone(name, debug=debug, accel=accel, timeout=timeout,
                                         home=home, cpus=cpus, tcg_thread=tcg_thread, gdb=gdb,
                                         snapshot=snapshot)
    zone = BootedZone(name, Machine(name, home), status, session, seconds)
    try:
        yield zone
    finally:
        zone.machine.stop(kill=kill)


def qemu_state(machine: Machine) -> str:
    """QEMU's run state from QMP (``running``, ``paused``, …) for an error message, bounded by
    QMP_STATE_TIMEOUT; or why there is none."""
    if not machine.is_running():
        return "not running"
    try:
        return str(machine.qmp("query-status", timeout=QMP_STATE_TIMEOUT)["status"])
    except QMP_ERRORS as exc:  # a wedged QMP is part of the diagnosis, not a second failure
        return f"QMP did not answer ({exc.__class__.__name__})"


def unanswered(name: str, exc: ZoneTimeout) -> ZoneTimeout:
    """``exc`` (the zone ``name`` did not answer, or stopped answering heartbeats) as the
    same error type, saying QEMU's run state, the console's last line and how to recover in
    its first line; the console's tail follows on the next lines."""
    machine = Machine(name)
    console = machine.console(tail=20)
    last = next((line.strip() for line in reversed(console.splitlines()) if line.strip()),
                "(empty)")
    message = (f"zone {name!r} did not answer ({(str(exc).splitlines() or ['?'])[0]}); QEMU: "
               f"{qemu_state(machine)}; last console line: {last[-200:]}; to recover: sez stop "
               f"{name} --kill, then sez boot {name} (the zone keeps its state)\n{console}")
    return type(exc)(message, op=exc.op, seconds=exc.seconds)


def qemu_processes(run_root: Path) -> list[int]:
    """Live (non-zombie) processes whose command line mentions ``run_root`` (the machines'
    runtime directories: what is left of the QEMUs started under it)."""
    found = []
    needle = str(run_root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "cmdline").read_bytes():
                continue
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return found
