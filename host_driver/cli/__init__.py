"""The ``sez`` command (README, "CLI"). Every command exits 0 on success, and otherwise
non-zero with a one-line reason on stderr; ``--json`` gives machine-readable output.

One module per subject, each adding its own commands to the parser: ``provisioning`` (image,
device, factory), ``attestation`` (attest, verify), ``zone`` (boot, status, stop, console,
ping), ``applets`` (owner, applet, load, applets, run, result, jobs, verify-receipt),
``sessions`` (relay), ``schedules``, ``audit``, ``secrets`` (secret put, secret list),
``demo``. Booting a zone is ``host_driver.lifecycle``'s.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from firmware.abi.errors import SezError

from ..errors import ZoneTimeout
from ..lifecycle import unanswered
from . import (applets, attestation, audit, demo, provisioning, schedules, secrets, sessions,
               zone)

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sez", description="SEZ: an emulated out-of-band secure "
                                "execution zone (a crypto coprocessor under QEMU)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In the order `sez --help` lists them, which scripts and users know.
    provisioning.register(sub)
    attestation.register(sub)
    zone.register(sub)
    applets.register(sub)
    sessions.register(sub)
    schedules.register(sub)
    audit.register(sub)
    secrets.register(sub)
    demo.register(sub)
    zone.register_ping(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="sez: %(name)s: %(message)s")
    try:
        try:
            args.func(args)
        except ZoneTimeout as exc:  # commands on a named zone: say why and how to recover
            if getattr(args, "name", None) is None:
                raise
            raise unanswered(args.name, exc) from exc
    except SezError as exc:
        print(f"sez: error: {str(exc).splitlines()[0] if not args.verbose else exc}",
              file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"sez: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written (-o, --input, a key …)
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"sez: error: {where}{(exc.strerror or str(exc)).splitlines()[0]}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
