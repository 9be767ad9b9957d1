"""Capabilities without QEMU (firmware.runtime.caps): what each zone process keeps, and
confine() run for real in a child process of the test (tests/e2e/test_capabilities.py checks
the zone itself)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware.runtime import caps
from firmware.runtime.caps import Cap

ROOT = Path(__file__).resolve().parents[2]
CHILDREN = {"keeper": caps.KEEPER, "monitor": caps.MONITOR, "runner": caps.RUNNER}


def test_pid1_keeps_what_its_children_need_and_no_more() -> None:
    assert caps.PID1 == caps.KEEPER | caps.MONITOR | caps.RUNNER


@pytest.mark.parametrize("process", ["pid1", "keeper", "monitor", "runner"])
def test_no_process_keeps_a_way_to_the_hardware(process: str) -> None:
    keeps = caps.PID1 if process == "pid1" else CHILDREN[process]
    for cap in (Cap.SYS_RAWIO, Cap.SYS_MODULE, Cap.SYS_ADMIN, Cap.SYS_PTRACE, Cap.SETPCAP,
                Cap.NET_ADMIN, Cap.SYS_RESOURCE, Cap.SYS_NICE):
        assert cap not in keeps, f"{process} keeps {cap.name}"


def test_what_each_child_keeps() -> None:
    assert caps.KEEPER == {Cap.KILL}
    assert caps.MONITOR == {Cap.SYS_BOOT}
    assert caps.RUNNER == {Cap.SETUID, Cap.SETGID, Cap.CHOWN, Cap.DAC_OVERRIDE}


def test_capabilities_reads_proc() -> None:
    found = caps.capabilities()
    assert found is not None
    assert set(found) == {"effective", "permitted", "bounding", "inheritable", "ambient"}
    assert all(len(value) == 16 and int(value, 16) >= 0 for value in found.values())
    assert caps.capabilities(2 ** 22 + 12345) is None  # above pid_max: no such process


CHILD = """
import ctypes, json
from firmware.runtime import caps
before = caps.capabilities()
try:
    caps.confine(caps.MONITOR)
except PermissionError as exc:
    print(json.dumps({"before": before, "refused": str(exc)}))
else:
    dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
    print(json.dumps({"before": before, "after": caps.capabilities(),
                      "dumpable": dumpable, "port_io": caps.probe_port_io()}))
"""


def test_confine_in_a_child_process() -> None:
    """As the zone's monitor: only CAP_SYS_BOOT (if the test had it), an empty bounding set,
    non-dumpable, no way to the ports. A test run without CAP_SETPCAP (its bounding set cannot
    be emptied) sees confine refuse with PermissionError instead."""
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    before = {name: int(value, 16) for name, value in report["before"].items()}
    if not before["effective"] & 1 << Cap.SETPCAP and before["bounding"]:
        assert "dropping capability" in report["refused"]
        return
    kept = 1 << Cap.SYS_BOOT & before["permitted"]
    assert {name: int(value, 16) for name, value in report["after"].items()} == {
        "effective": kept, "permitted": kept, "bounding": 0, "inheritable": 0, "ambient": 0}
    assert report["dumpable"] == 0
    assert set(report["port_io"]) == {"ioperm", "iopl", "/dev/port", "/dev/mem", "kexec_load"}
    assert "allowed" not in report["port_io"].values(), report["port_io"]
