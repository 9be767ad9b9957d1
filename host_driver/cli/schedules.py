
"""``sez schedule``, ``unschedule`` and ``schedules``: applets the zone runs on its own clock,
host or no host, by the owner's signed order."""

from __future__ import annotations

import argparse

from firmware.abi.errors import SezError

from ..owner import load_owner_key, schedule_change, unschedule_change
from .common import command, emit, jsonable, open_zone, read_file

__all__ = ["register"]


def cmd_schedule(args: argparse.Namespace) -> None:
    key = load_owner_key(args.key)
    data = read_file(args.input) if args.input else b""
    with open_zone(args.name) as zone:
        current = zone.schedules()
        matches = [a for a in zone.applets() if args.applet in (a["name"], a["id"])]
        if len(matches) != 1:
            raise SezError(f"zone {args.name} has no applet {args.applet!r} loaded (sez applets)")
        applet = matches[0]
        change = schedule_change(key, ueid=bytes(current["ueid"]), epoch=int(current["epoch"]),
                                 name=args.schedule, applet=applet["name"],
                                 measurement=bytes.fromhex(applet["measurement"]),
                                 input=data, every=args.every)
        result = zone.schedule(change)
    emit(args, result, f"schedule {args.schedule}: {applet['name']} v{applet['version']} "
         f"every {args.every} s on {len(data)} bytes of input, from now on (epoch "
         f"{result['epoch']})")


def cmd_unschedule(args: argparse.Namespace) -> None:
    key = load_owner_key(args.key)
    with open_zone(args.name) as zone:
        current = zone.schedules()
        result = zone.unschedule(unschedule_change(key, ueid=bytes(current["ueid"]),
                                                   epoch=int(current["epoch"]),
                                                   name=args.schedule))
    emit(args, result, f"schedule {args.schedule} removed (epoch {result['epoch']})")


def cmd_schedules(args: argparse.Namespace) -> None:
    with open_zone(args.name) as zone:
        listing = zone.schedules()
    lines = [f"{s['name']:<16} {s['applet']} every {s['every']} s: {s['runs']} runs"
             + (f", next in {s['next_in']:.0f} s" if s["next_in"] is not None else "")
             + (f", {s['skipped']} skipped ({s['skipping']})" if s["skipped"] else "")
             for s in listing["schedules"]]
    emit(args, jsonable(listing), "\n".join(lines) or "no schedules")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = command(sub, "schedule", cmd_schedule,
                "run an applet every N seconds, host or no host (owner-signed)")
    c.add_argument("name")
    c.add_argument("schedule", help="the schedule's name (a-z, 0-9, '-')")
    c.add_argument("applet", help="a loaded applet (name or id); its measurement is pinned")
    c.add_argument("--every", type=int, required=True, metavar="SECONDS")
    c.add_argument("--input", metavar="FILE", help="the input of every run (default: empty)")
    c.add_argument("--key", required=True, metavar="KEY.pem", help="the owner's key")

    c = command(sub, "unschedule", cmd_unschedule, "remove a schedule (owner-signed)")
    c.add_argument("name")
    c.add_argument("schedule")
    c.add_argument("--key", required=True, metavar="KEY.pem", help="the owner's key")

    c = command(sub, "schedules", cmd_schedules, "a zone's schedules, their runs and skips")
    c.add_argument("name")
