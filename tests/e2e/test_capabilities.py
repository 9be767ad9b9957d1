"""Capabilities on a real zone (firmware.runtime.caps): after PID 1 has read fw_cfg, no zone
process keeps CAP_SYS_RAWIO or any other capability it does not need, and neither the monitor
nor a job can reach fw_cfg's I/O ports — while the zone still does all it did."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from host_driver import SyncZone
from host_driver.lifecycle import BootedZone
from host_driver.owner import build_applet, owner_spki

pytestmark = pytest.mark.e2e
APPLETS = Path(__file__).parent.parent / "applets"
RAWIO = 1 << 17
CHOWN, DAC_OVERRIDE, KILL, SETGID, SETUID, SYS_BOOT = (1 << 0, 1 << 1, 1 << 5, 1 << 6, 1 << 7,
                                                       1 << 22)
#: What each process keeps (effective = permitted); every bounding set is empty.
EXPECTED = {
    "monitor": SYS_BOOT,
    "keeper": KILL,
    "runner": CHOWN | DAC_OVERRIDE | SETGID | SETUID,
    "pid1": SYS_BOOT | CHOWN | DAC_OVERRIDE | KILL | SETGID | SETUID,
}
#: How long the runner may take to remove a finished job's work directory.
CLEANUP_WAIT = 10.0


@pytest.fixture(scope="module")
def booted(sez_zone_factory: Callable[..., BootedZone]) -> BootedZone:
    return sez_zone_factory("caps-zone")


@pytest.fixture(scope="module")
def zone(booted: BootedZone) -> Iterator[SyncZone]:
    owner = ec.generate_private_key(ec.SECP384R1())
    with SyncZone(booted.url, timeout=60) as client:
        client.enroll(owner_spki(owner))
        for name in ("port-probe", "vault"):
            client.load(build_applet(APPLETS / name, owner))
        yield client


def probe(zone: SyncZone, request: dict[str, Any] | None = None) -> dict[str, Any]:
    output = zone.run("port-probe", json.dumps(request or {}).encode())["output"]
    return dict(json.loads(output))


def test_each_zone_process_keeps_only_what_it_needs(zone: SyncZone) -> None:
    found = zone.info()["capabilities"]
    assert set(found) == set(EXPECTED)
    for process, keeps in EXPECTED.items():
        sets = {name: int(value, 16) for name, value in found[process].items()}
        assert not sets["effective"] & RAWIO and not sets["permitted"] & RAWIO, process
        assert sets == {"effective": keeps, "permitted": keeps, "bounding": 0,
                        "inheritable": 0, "ambient": 0}, process


def test_the_monitor_cannot_reach_the_fw_cfg_ports(zone: SyncZone,
                                                   booted: BootedZone) -> None:
    """The monitor's boot-time self-check: ioperm and iopl on fw_cfg's ports, /dev/port and
    /dev/mem, and kexec (it keeps CAP_SYS_BOOT to power off; PID 1 disabled kexec)."""
    assert zone.info()["port_io"] == {"ioperm": "EPERM", "iopl": "EPERM", "/dev/port": "EPERM",
                                      "/dev/mem": "EPERM", "kexec_load": "EPERM"}
    assert "monitor: fw_cfg's ports are out of reach" in booted.machine.console()


def test_a_job_holds_no_capability_and_reaches_no_port(zone: SyncZone) -> None:
    report = probe(zone)
    assert report["uid"] >= 20000
    assert report["capabilities"] == {key: "0000000000000000" for key in
                                      ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    # /dev/port and /dev/mem are root's (0640): the job's uid is refused before the kernel
    # would ask for CAP_SYS_RAWIO
    assert report["attempts"] == {"ioperm": "EPERM", "iopl": "EPERM", "/dev/port": "EACCES",
                                  "/dev/mem": "EACCES"}


def test_the_runner_still_removes_a_finished_jobs_directory(zone: SyncZone) -> None:
    """The job owns its 0700 work directory: the runner needs CAP_DAC_OVERRIDE to remove it."""
    work = probe(zone)["cwd"]
    assert work.startswith("/tmp/sez-jobs/")
    deadline = time.monotonic() + CLEANUP_WAIT
    while probe(zone, {"exists": work})["exists"]:
        assert time.monotonic() < deadline, f"{work} still there after {CLEANUP_WAIT} s"


def test_the_keeper_still_takes_large_messages(zone: SyncZone) -> None:
    """Half a MiB each way between the monitor and layer 0: beyond the kernel's default socket
    buffer, which only CAP_NET_ADMIN (kept by no one) or PID 1's raised ceiling exceeds."""
    data = os.urandom(512 << 10)
    request = json.dumps({"op": "seal", "data": data.hex()}).encode()
    blob = bytes(zone.run("vault", request)["output"])
    request = json.dumps({"op": "unseal", "blob": blob.hex()}).encode()
    assert bytes(zone.run("vault", request)["output"]) == data


def test_the_monitor_still_powers_the_zone_off(zone: SyncZone, booted: BootedZone) -> None:
    """Last: the monitor's one capability, CAP_SYS_BOOT, at work."""
    assert zone.request("poweroff")["powering_off"] is True
    assert booted.machine.wait(30), "QEMU still runs 30 s after poweroff"
