"""``sez secret put`` and ``sez secret list``: secrets provisioned to a zone's applets.

``put`` runs inside an attested session: the zone's evidence is appraised against the root,
the reference values and the device's UEID before the value leaves this process, and the value
travels only inside the session's TLS (the host that relays it reads nothing). ``list`` shows
names and policies; no value ever leaves the zone.
"""

from __future__ import annotations

import argparse
from typing import Any

from firmware.abi import secret

from .common import (attested_session, command, emit, group, jsonable, open_zone, read_file,
                     trust_flags)

__all__ = ["register", "describe_policy"]


def parse_measurement(text: str) -> bytes:
    """An applet's measurement as ``sez load`` prints it: 96 hex digits, ``sha384:`` optional."""
    digits = text.removeprefix("sha384:")
    try:
        measurement = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"--to-measurement must be hex, not {text!r}") from None
    if len(measurement) != secret.MEASUREMENT_SIZE:
        raise ValueError(f"--to-measurement must be {secret.MEASUREMENT_SIZE} bytes "
                         f"({2 * secret.MEASUREMENT_SIZE} hex digits), not {len(measurement)}")
    return measurement


def describe_policy(policy: dict[str, Any]) -> str:
    """A policy in one line: whom it admits."""
    debug = ", debug zones too" if policy.get("debug") else ""
    if "measurement" in policy:
        return f"the applet of measurement sha384:{bytes(policy['measurement']).hex()}{debug}"
    owner = policy.get("owner")
    return (f"{policy['applet']} v{policy['min_version']} or later, owner "
            f"{bytes(owner).hex() if owner is not None else '(the enrolled one)'}{debug}")


def cmd_secret_put(args: argparse.Namespace) -> None:
    if args.to_measurement is not None and args.min_version is not None:
        raise ValueError("--min-version goes with --to-applet")
    value = read_file(args.value_file)
    target: dict[str, Any] = (
        {"measurement": parse_measurement(args.to_measurement)}
        if args.to_measurement is not None
        else {"applet": args.to_applet, "min_version": 1 if args.min_version is None else args.min_version})
    with open_zone(args.name) as zone, attested_session(
            zone, args.name, args, allow_debug=args.allow_debug) as session:
        result = session.secret_put(args.secret, value, debug=args.allow_debug, **target)
    emit(args, jsonable(result),
         f"secret {result['name']} provisioned in zone {args.name} for "
         f"{describe_policy(result['policy'])}")


def cmd_secret_list(args: argparse.Namespace) -> None:
    with open_zone(args.name) as zone:
        listing = zone.secret_list()
    emit(args, jsonable(listing),
         "\n".join(f"{s['name']}  for {describe_policy(s['policy'])}" for s in listing)
         or "no secrets provisioned")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secrets = group(sub, "secret", "secrets provisioned to a zone's applets")
    c = command(secrets, "put", cmd_secret_put,
                "provision a secret, written once, inside an attested session")
    c.add_argument("name", help="the device")
    c.add_argument("secret", help="the secret's name (1-64 of A-Z a-z 0-9 . _ -)")
    c.add_argument("--value-file", required=True, metavar="FILE",
                   help=f"the secret's value (1 to {secret.VALUE_MAX} bytes)")
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-measurement", metavar="HEX",
                        help="only the applet of this measurement (as `sez load` prints it)")
    target.add_argument("--to-applet", metavar="APPLET",
                        help="any version >= --min-version of this applet, under the zone's "
                        "owner")
    c.add_argument("--min-version", type=int, metavar="N",
                   help="with --to-applet: the lowest version admitted (default 1)")
    c.add_argument("--allow-debug", action="store_true",
                   help="accept a debug zone: its evidence, and debug: true in the policy "
                   "(a debug zone refuses the secret otherwise)")
    trust_flags(c)

    c = command(secrets, "list", cmd_secret_list,
                "the zone's secrets: names and policies, never values")
    c.add_argument("name", help="the device")
