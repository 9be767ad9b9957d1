"""Emulated environmental sensors on real zones: each trips the tamper line when the device
enables it, and nothing happens when it does not."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable

import pytest

from emulator.device import Device
from emulator.factory import Factory
from emulator.errors import MachineStateError
from emulator.machine import Machine
from emulator.paths import SezHome
from emulator.sensors import parse_sensors
from host_driver import SyncZone
from host_driver.lifecycle import booted

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_too_long(machine: Machine, tmp: Path) -> None:
    machine.qmp("stop")
    deadline = time.monotonic() + 3.0  # the sensor's threshold is 1 s: stay stopped 3
    while time.monotonic() < deadline and not _tampered(machine):
        time.sleep(0.1)
    if machine.is_running():
        machine.qmp("cont")


def dump_memory(machine: Machine, tmp: Path) -> None:
    machine.qmp("dump-guest-memory", {"paging": False, "protocol": f"file:{tmp / 'ram.elf'}"},
                timeout=60)


def migrate(machine: Machine, tmp: Path) -> None:
    machine.qmp("migrate", {"uri": f"exec:cat > {tmp / 'migration'}"})


def start_gdb_stub(machine: Machine, tmp: Path) -> None:
    machine.qmp("human-monitor-command",
                {"command-line": f"gdbserver tcp:127.0.0.1:{free_port()}"})


def _tampered(machine: Machine) -> bool:
    return Device.open(machine.name, machine.home).tamper_record["count"] != 0


POKES: dict[str, Callable[[Machine, Path], None]] = {
    "stopped=1": stop_too_long, "dump": dump_memory, "migration": migrate,
    "gdb": start_gdb_stub}


@pytest.mark.parametrize("sensor", POKES)
def test_an_enabled_sensor_trips_the_tamper_line(sensor: str, sez_home: SezHome,
                                                 tmp_path: Path) -> None:
    name = f"sensor-{sensor.split('=')[0]}"
    Factory(sez_home).provision(name).set_sensors(parse_sensors(sensor))
    with booted(name, home=sez_home) as zone:
        with SyncZone(zone.url, timeout=30) as client:
            assert client.echo(b"up") == b"up"
        POKES[sensor](zone.machine, tmp_path)
        deadline = time.monotonic() + 30  # the watcher trips, the zone zeroises, the fuses go
        while not _tampered(zone.machine):
            assert time.monotonic() < deadline, f"{sensor} did not trip within 30 s"
            time.sleep(0.1)
    device = Device.open(name, sez_home)
    assert device.tampered
    last = device.tamper_record["last"]
    assert isinstance(last, dict) and str(last["cause"]).startswith("sensor: ")
    expected = {"stopped=1": "stopped", "dump": "dump", "migration": "migration",
                "gdb": "gdb"}[sensor]
    assert expected in str(last["cause"])


def test_sensors_that_are_not_enabled_do_nothing(sez_home: SezHome, tmp_path: Path) -> None:
    name = "sensor-none"
    Factory(sez_home).provision(name)  # sensors: none (the default)
    with booted(name, home=sez_home) as zone:
        for poke in (stop_too_long, dump_memory, start_gdb_stub):
            poke(zone.machine, tmp_path)
        assert zone.machine.qmp("query-status")["status"] == "running"
        with SyncZone(zone.url, timeout=30) as client:
            assert client.attest(b"n" * 16)  # keys intact: the zone can still sign
            assert not client.info()["tampered"]
        migrate(zone.machine, tmp_path)
        deadline = time.monotonic() + 60
        while zone.machine.qmp("query-migrate").get("status") not in ("completed", "failed"):
            assert time.monotonic() < deadline, "the migration did not end within 60 s"
            time.sleep(0.2)
    device = Device.open(name, sez_home)
    assert not device.tampered and device.tamper_record["count"] == 0
    assert not (zone.machine.sensors_log).exists()  # no watcher was started


def test_a_debug_zone_may_have_its_gdb_stub(sez_home: SezHome) -> None:
    """The gdb sensor guards production keys; a debug zone's keys are its own (they differ
    from production's), so ``sez boot --debug --gdb PORT`` is allowed and trips nothing."""
    name = "sensor-debug-gdb"
    Factory(sez_home).provision(name).set_sensors(parse_sensors("gdb"))
    with pytest.raises(MachineStateError, match="debug zones only"):
        with booted(name, home=sez_home, gdb=free_port()):
            pass
    port = free_port()
    with booted(name, home=sez_home, debug=True, gdb=port) as zone:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as gdb:
            gdb.sendall(b"$?#3f")  # the remote protocol's "why did you stop?"
            reply = gdb.recv(256)
            assert reply.lstrip(b"+").startswith((b"$S", b"$T")), reply  # a stop reply
        zone.machine.qmp("cont")  # a client halts the machine on connecting; go on
        with SyncZone(zone.url, timeout=30) as client:
            assert client.info()["debug"] is True and not client.info()["tampered"]
    assert Device.open(name, sez_home).tamper_record["count"] == 0
