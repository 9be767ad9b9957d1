"""Emulated environmental sensors: events that mean someone is poking the hardware trip the
zone's tamper line, as the 4758's temperature, voltage and radiation sensors do.

Off unless the device enables them (``sez device new NAME --sensors …`` or
``sez device sensors NAME …``; kept in ``device.json``). When enabled, ``Machine.launch``
starts one watcher process per zone (``python -m emulator.sensors NAME``) on a QMP socket of
its own (``sensors.sock``), which trips the line (``Machine.tamper``) on the first of:

``stopped=SECONDS``  the machine stays stopped (QMP ``stop``, a debugger's halt) longer than
                     that
``dump``             a guest memory dump (QMP ``dump-guest-memory``: the machine stops in
                     run state ``save-vm``; ``DUMP_COMPLETED`` after a detached one)
``migration``        a migration starts (the ``MIGRATION`` event, enabled by the watcher:
                     ``setup`` is before any RAM leaves)
``gdb``              a gdb stub exists (QMP ``query-chardev`` lists ``gdb``: HMP
                     ``gdbserver``, checked every CHECK seconds and at every stop); not in
                     a debug zone, which may have one (``sez boot --debug --gdb PORT``)

A stopped machine cannot zeroise itself: the watcher resumes it first (``cont``); one that
does not answer the trip in time loses its power (Machine.tamper). The watcher ends with its
QEMU, or after it tripped the line.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

from qemu.qmp import QMPClient, Runstate

from .device import Device
from .paths import SezHome

__all__ = ["SENSORS", "parse_sensors", "describe", "watch"]

log = logging.getLogger(__name__)

#: The sensors a device may enable (``stopped`` takes seconds).
SENSORS = ("stopped", "dump", "migration", "gdb")
#: Seconds between checks for a gdb stub and for a machine stopped too long.
CHECK = 0.25
_STOPPED_RANGE = (0.5, 3600.0)


def parse_sensors(text: str) -> dict[str, Any]:
    """``stopped=5,dump,migration,gdb`` (or ``all``, ``none``) as the device's setting."""
    text = text.strip()
    if text == "none":
        return {}
    if text == "all":
        text = "stopped=5,dump,migration,gdb"
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in SENSORS:
            raise ValueError(f"unknown sensor {name!r}: use {', '.join(SENSORS)}, all or none")
        if name == "stopped":
            try:
                seconds = float(value)
            except ValueError:
                raise ValueError("stopped takes seconds: stopped=5") from None
            if not _STOPPED_RANGE[0] <= seconds <= _STOPPED_RANGE[1]:
                raise ValueError(f"stopped takes {_STOPPED_RANGE[0]} to {_STOPPED_RANGE[1]:.0f} s")
            settings[name] = seconds
        elif value:
            raise ValueError(f"{name} takes no value")
        else:
            settings[name] = True
    return settings


def describe(settings: dict[str, Any]) -> str:
    return ",".join(f"stopped={settings['stopped']:g}" if name == "stopped" else name
                    for name in SENSORS if name in settings) or "none"


async def watch(name: str, home: SezHome) -> str | None:
    """Watch zone ``name`` until its QEMU ends (None) or a sensor trips (the cause, after
    the trip)."""
    from .machine import Machine  # the machine starts this watcher: imported late

    machine = Machine(name, home)
    settings = Device.open(name, home).sensors
    if machine.state().get("debug"):
        settings.pop("gdb", None)  # a debug zone allows its gdb stub (its keys are its own)
    client = QMPClient(f"sez-sensors-{name}")
    await client.connect(str(machine.sensors_socket))
    try:
        if settings.get("migration"):
            await client.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True}]})
        cause = await _first_trip(client, settings)
        if cause is None:
            return None
        log.warning("sensor tripped: %s", cause)
        try:
            await client.execute("cont")  # a stopped machine cannot zeroise itself
        except Exception:  # a dump or migration in progress refuses: the trip cuts power then
            pass
    finally:
        await client.disconnect()
    report = await asyncio.to_thread(machine.tamper, cause)
    log.warning("tamper: %s", report)
    return cause


async def _first_trip(client: QMPClient, settings: dict[str, Any]) -> str | None:
    stopped_since: float | None = None
    with client.listener() as events:
        print("watching", flush=True)  # Machine.launch waits for this line
        sys.stdout.close()
        while client.runstate is Runstate.RUNNING:
            if settings.get("gdb") and await _gdb_stub(client):
                return "sensor: a gdb stub is attached"
            if stopped_since is not None and "stopped" in settings and \
                    time.monotonic() - stopped_since > settings["stopped"]:
                return f"sensor: stopped for more than {settings['stopped']:g} s"
            try:
                event = await asyncio.wait_for(events.get(), CHECK)
            except TimeoutError:
                continue
            kind = event["event"]
            if kind == "SHUTDOWN":
                return None
            if kind == "STOP":
                stopped_since = time.monotonic()
                status = await client.execute("query-status")
                state = status.get("status") if isinstance(status, dict) else None
                if state == "save-vm" and settings.get("dump"):
                    return "sensor: guest memory dump"
                if state in ("finish-migrate", "postmigrate") and settings.get("migration"):
                    return "sensor: migration"
            elif kind == "RESUME":
                stopped_since = None
            elif kind == "DUMP_COMPLETED" and settings.get("dump"):
                return "sensor: guest memory dump"
            elif kind == "MIGRATION" and settings.get("migration") and \
                    _status(event.get("data")) not in ("none", "cancelled", "failed"):
                return "sensor: migration"
    return None  # QEMU went away


def _status(data: Any) -> Any:
    return data.get("status") if isinstance(data, dict) else None


async def _gdb_stub(client: QMPClient) -> bool:
    chardevs = await client.execute("query-chardev")
    return isinstance(chardevs, list) and any(c.get("label") == "gdb" for c in chardevs)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sensors: %(message)s")
    name = sys.argv[1]
    try:
        asyncio.run(watch(name, SezHome.default()))
    except Exception as exc:  # QEMU went away under a QMP call: nothing left to watch
        log.info("watch ended: %r", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
