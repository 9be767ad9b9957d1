"""What a soak leaves behind (bench/soak.py): a failed cycle's report directory, and the
summary of the whole run."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from emulator.machine import Machine
from emulator.paths import SezHome

from soak_cycle import Cycle, StepFailed, bounded

#: Seconds to wait after the sysrq keys before copying the console again.
SYSRQ_WAIT = 3.0


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of all values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def tcg_settings(argv: list[str]) -> tuple[str, str]:
    """The vCPUs and TCG threading a QEMU command line asks for."""
    cpus = argv[argv.index("-smp") + 1] if "-smp" in argv else "?"
    accel = argv[argv.index("-accel") + 1] if "-accel" in argv else "?"
    return cpus, accel.partition("thread=")[2] or accel


def query(machine: Machine, command: str, args: dict[str, Any] | None = None) -> Any:
    """{"return": ...} or {"error": ...}: never raises, never hangs."""
    if not machine.is_running():
        return {"error": "the machine is not running"}
    try:
        return {"return": bounded(15, lambda: machine.qmp(command, args))}
    except Exception as exc:
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def write_report(run_dir: Path, cycle: Cycle, failure: StepFailed,
                 args: argparse.Namespace) -> Path:
    """The report of a failed cycle, in a directory of its own under ``run_dir`` (what it
    holds: bench/soak.py)."""
    machine = cycle.zone.machine
    directory = run_dir / (f"{cycle.number:04d}-{cycle.zone.name}-"
                           + failure.kind.replace(":", "-"))
    directory.mkdir(parents=True, exist_ok=True)
    for source, target in ((machine.console_log, "console.log"),
                           (machine.run_dir / "console.prev.log", "console.prev.log"),
                           (machine.qemu_log, "qemu.log")):
        if source.exists():
            shutil.copyfile(source, directory / target)
    qmp = {command: query(machine, command)
           for command in ("query-status", "query-cpus-fast")}
    (directory / "qmp.json").write_text(json.dumps(qmp, indent=2) + "\n")
    registers = query(machine, "human-monitor-command", {"command-line": "info registers -a"})
    (directory / "registers.txt").write_text(
        str(registers["return"]) if "return" in registers else f"error: {registers['error']}\n")
    # 9 first: the console loglevel to 9 (the kernel boots `quiet`, and the dumps are
    # printed below the default loglevel), then l (all CPUs), t (all tasks), w (blocked).
    sysrq = {}
    for key in ("9", "l", "t", "w"):
        sysrq[key] = query(machine, "send-key", {"keys": [
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
        "cpus": args.cpus, "tcg_thread": args.tcg_thread,
        "qemu_settings": dict(zip(("cpus", "tcg_thread"), tcg_settings(argv))) if argv
        else None,
        "argv": argv, "qemu_pid": machine.state().get("pid"), "time": time.time(),
    }
    (directory / "step.json").write_text(json.dumps(details, indent=2, default=str) + "\n")
    return directory


def summary(rows: list[dict[str, Any]], args: argparse.Namespace,
            settings: tuple[str, str] | None, interrupted: bool, left: list[int], home: SezHome,
            run_dir: Path) -> tuple[dict[str, Any], str]:
    """The results (every cycle's row and the summary) and the summary line."""
    rows = sorted(rows, key=lambda r: int(r["cycle"]))
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
    cpus, thread = settings or ("?", "?")
    cpus = str(args.cpus) if args.cpus is not None else cpus
    thread = args.tcg_thread or thread
    overall = {
        "cycles": finished, "requested": args.cycles, "zones": args.zones,
        "interrupted": interrupted, "cpus": cpus, "tcg_thread": thread,
        "failures": failures, "boot_s": boot, "attest_ms": attest,
        "hello_after_killed_driver_s": rehello, "left_behind": left,
        "home": str(home.root), "reports": str(run_dir),
    }
    total = sum(failures.values())
    failed = (f"{total} failure{'s' * (total != 1)} ("
              + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())) + ")"
              if total else "0 failures")
    done = (f"interrupted after {finished} of {args.cycles} cycles" if interrupted
            else f"{finished} cycles" if finished == args.cycles
            else f"{finished} of {args.cycles} cycles")
    parts = [
        f"soak: {done}, {args.zones} zone{'s' * (args.zones != 1)}, "
        f"cpus {cpus} {thread}: {failed}",
        f"boot p50 {boot['p50']:.1f} s p99 {boot['p99']:.1f} s" if boot["n"] else "boot -",
        f"attest p50 {attest['p50']:.0f} ms p99 {attest['p99']:.0f} ms" if attest["n"]
        else "attest -",
        f"hello after a killed driver: {rehello['n']} times, p50 {rehello['p50']:.2f} s, "
        f"worst {rehello['worst']:.2f} s" if rehello["n"]
        else "hello after a killed driver: 0 times",
    ]
    return {"summary": overall, "line": "; ".join(parts), "cycles": rows}, "; ".join(parts)
