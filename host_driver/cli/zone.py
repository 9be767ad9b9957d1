
"""``sez boot``, ``status``, ``stop``, ``tamper``, ``console``, ``shell`` and ``ping``: a zone's
machine and whether its zone answers."""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from typing import Any

from emulator.machine import Machine, MachineStatus
from emulator.paths import SezHome
from emulator.shell import Shell
from firmware.abi.errors import ZoneError

from ..errors import ChannelError, ZoneTimeout
from ..lifecycle import BOOT_TIMEOUT, boot_zone
from ..relay.sync import SyncZone
from .common import command, emit, jsonable

__all__ = ["register", "register_ping"]


def cmd_boot(args: argparse.Namespace) -> None:
    status, session, seconds = boot_zone(args.name, debug=args.debug, accel=args.accel,
                                         timeout=args.timeout, gdb=args.gdb,
                                         snapshot=args.snapshot)
    data = {**status.as_dict(), "hello": jsonable(session), "boot_seconds": round(seconds, 3)}
    how = "resumed" if args.snapshot else "up"
    emit(args, data,
         f"zone {args.name} {how} in {seconds:.2f} s: pid {status.pid}, {status.accel}, "
         f"channel {status.channel}, firmware {session.get('firmware')}, "
         f"boot {session.get('boot_counter')}" + (", DEBUG" if session.get("debug") else ""))


def cmd_status(args: argparse.Namespace) -> None:
    home = SezHome.default()
    names = [args.name] if args.name else home.devices()
    if args.name:
        home.existing_device(args.name)
    rows = [Machine(n, home).status() for n in names]
    queues = {r.name: _queue(r) for r in rows if r.running}
    if args.json:
        data: Any = [{**r.as_dict(), "queue": queues.get(r.name)} for r in rows]
        print(json.dumps(data[0] if args.name else data, indent=2, sort_keys=True))
        return
    if not rows:
        print("no devices (provision one: sez device new NAME)")
    for r in rows:
        if r.running:
            q = queues[r.name]
            queue = (f"queue: {q['error']}" if "error" in q else
                     f"{q['active']} jobs running, {q['queued']} queued, {q['outbox']} in the "
                     f"outbox, {q['schedules']} schedules, {q['audit']} audit entries kept")
            how = " (resumed from a template)" if r.template else ""
            print(f"{r.name}: running, pid {r.pid}, qemu {r.qemu_status}, {r.accel}, "
                  f"channel {r.channel}, boot {r.boot_counter}{how}, up {r.uptime:.0f} s; "
                  f"{queue}")
        else:
            print(f"{r.name}: stopped" + (f" (boots so far: {r.boot_counter})"
                                           if r.boot_counter else ""))


def _queue(status: MachineStatus) -> dict[str, Any]:
    """What the zone itself says of its work (a short session; another driver may hold the
    channel, or the zone may not answer: then why)."""
    try:
        with SyncZone(str(status.channel), timeout=5, hello_timeout=5) as zone:
            info = zone.info()
    except (ChannelError, ZoneTimeout, ZoneError) as exc:
        return {"error": str(exc).splitlines()[0]}
    if info.get("tampered"):
        return {"error": f"TAMPERED: {info['tampered']}"}
    jobs = info["jobs"]
    return {"active": jobs["active"], "queued": jobs["queued"], "outbox": jobs["outbox"],
            "schedules": info.get("schedules", 0), "audit": info.get("audit", {}).get("kept", 0)}


def cmd_stop(args: argparse.Namespace) -> None:
    SezHome.default().existing_device(args.name)
    stopped = Machine(args.name).stop(kill=args.kill)
    how = "plug pulled" if args.kill else "powered off"
    emit(args, {"name": args.name, "stopped": stopped, "kill": args.kill},
         f"zone {args.name} {how}" if stopped else f"zone {args.name} was not running")


def cmd_tamper(args: argparse.Namespace) -> None:
    """Trip the tamper line (Machine.tamper) and say what is left and what to do next."""
    SezHome.default().existing_device(args.name)
    report = Machine(args.name).tamper(args.cause)
    data = {"name": args.name, **dataclasses.asdict(report)}
    if report.zone_ms is not None:
        zone = (f"the zone zeroised its keys, BBRAM, secrets and state in {report.zone_ms:.1f} ms "
                f"({report.ack_ms:.1f} ms from trip to its answer)")
    else:
        zone = "the zone was not running (or did not answer and lost its power)"
    emit(args, data,
         f"zone {args.name} TAMPERED ({report.cause}): {zone}; the fuses and the BBRAM disk "
         f"are wiped ({report.wipe_ms:.1f} ms); tamper events: {report.count}.\n"
         f"Nothing it signed can be made again, nothing it sealed opened. Next: "
         f"sez stop {args.name}, then sez device new {args.name} --force (a new UDS and "
         "DeviceID; enroll, load and provision again)")


def cmd_console(args: argparse.Namespace) -> None:
    SezHome.default().existing_device(args.name)
    machine = Machine(args.name)
    text = machine.console(tail=args.tail)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    if not args.follow:
        return
    offset = machine.console_log.stat().st_size if machine.console_log.exists() else 0
    while True:
        sys.stdout.flush()
        try:
            with machine.console_log.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            chunk = b""
        if chunk:
            offset += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
        elif not machine.is_running():
            return
        time.sleep(0.2)


def cmd_shell(args: argparse.Namespace) -> None:
    SezHome.default().existing_device(args.name)
    with Shell(Machine(args.name), timeout=args.timeout) as shell:
        if args.command is None:
            print(f"console shell of debug zone {args.name} (leave with Ctrl-])", file=sys.stderr)
            shell.interact()
            return
        status, output = shell.run(args.command, timeout=args.timeout)
    sys.stdout.write(output)
    sys.exit(status)


def cmd_ping(args: argparse.Namespace) -> None:
    machine = Machine(args.name, SezHome.default())
    SezHome.default().existing_device(args.name)
    started = time.perf_counter()
    with SyncZone(machine.channel, timeout=args.timeout) as zone:
        hello_ms = (time.perf_counter() - started) * 1000
        info = zone.info()
        times = []
        for _ in range(args.count):
            t = time.perf_counter()
            zone.echo(b"")
            times.append((time.perf_counter() - t) * 1000)
    data = {"info": info, "hello_ms": round(hello_ms, 3),
            "rtt_ms": {"min": round(min(times), 3), "median": round(statistics.median(times), 3),
                       "max": round(max(times), 3), "count": len(times)}}
    emit(args, data,
         f"zone {args.name}: firmware {info['firmware']}, protocol {info['protocol']}, "
         f"boot {info['boot_counter']}, up {info['uptime']:.1f} s, "
         f"{info['memory']['available'] / 2**20:.0f} MiB free\n"
         f"connect+hello {hello_ms:.2f} ms; round trip over {len(times)} requests: "
         f"min {min(times):.3f} ms, median {statistics.median(times):.3f} ms, "
         f"max {max(times):.3f} ms")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """boot, status, stop, tamper, console (ping comes last in ``sez --help``: register_ping)."""
    c = command(sub, "boot", cmd_boot, "start a zone detached; return once it answers hello")
    c.add_argument("name")
    c.add_argument("--debug", action="store_true", help="boot a debug zone (evidence says so)")
    c.add_argument("--gdb", type=int, metavar="PORT", help="with --debug: a gdb stub on "
                   "127.0.0.1:PORT (gdb -ex 'target remote :PORT')")
    c.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    c.add_argument("--snapshot", action="store_true",
                   help="resume from the image's template, a zone saved before it was any "
                   "device (made at the first use: one cold boot)")
    c.add_argument("--timeout", type=float, default=BOOT_TIMEOUT,
                   help=f"seconds to wait for hello (default {BOOT_TIMEOUT:.0f})")

    c = command(sub, "status", cmd_status, "state, pid, channel, boot counter, uptime")
    c.add_argument("name", nargs="?")

    c = command(sub, "stop", cmd_stop, "orderly power-off (ACPI, then QMP quit), or --kill")
    c.add_argument("name")
    c.add_argument("--kill", action="store_true", help="pull the plug (SIGKILL)")

    c = command(sub, "tamper", cmd_tamper, "trip the tamper line: the zone zeroises its keys, "
                "BBRAM and secrets; the fuses are wiped")
    c.add_argument("name")
    c.add_argument("--cause", default="sez tamper", help="what tripped it (kept in the "
                   "device's record; printable ASCII, 80 characters)")

    c = command(sub, "console", cmd_console, "the zone's serial console log", json_flag=False)
    c.add_argument("name")
    c.add_argument("--follow", "-f", action="store_true", help="keep printing new output")
    c.add_argument("--tail", type=int, default=None, help="only the last N lines")

    c = command(sub, "shell", cmd_shell, "a debug zone's console shell (root, no "
                "capabilities; debug keys only): interactive, or one --command", json_flag=False)
    c.add_argument("name")
    c.add_argument("--command", "-c", metavar="CMD", help="run CMD, print its output and exit "
                   "with its status")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for CMD "
                   "(default 30)")


def register_ping(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = command(sub, "ping", cmd_ping, "hello + info, and the round-trip time of null requests")
    c.add_argument("name")
    c.add_argument("--count", type=int, default=10)
    c.add_argument("--timeout", type=float, default=10.0)
