
"""``sez audit`` and ``sez verify-audit``: fetch a zone's hash-chained audit log, verify it
against the root and an anchor file, save it, and let the zone forget what the host keeps."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import cbor2

from firmware.abi.errors import SezError

from ..verifier import AuditAnchor, AuditResult, verify_audit_log
from .common import appraising, command, emit, open_zone, read_file, trusted_root

__all__ = ["register"]


def _anchor(path: str | None) -> AuditAnchor | None:
    if not path or not Path(path).exists():
        return None
    try:
        return AuditAnchor.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise SezError(f"cannot read the audit anchor {path}: {exc}") from exc


def _verified_audit(args: argparse.Namespace, log: dict[str, Any]) -> AuditResult:
    """Verify a fetched or saved log (``chain``, ``entries``, and the ``evidence`` for
    ``nonce`` that names the zone's last entry) against the root and the anchor file, then
    move the anchor on."""
    root = trusted_root(args.root)
    start = _anchor(args.anchor)
    with appraising():
        result = verify_audit_log(log, root=root, anchor=start)
    if args.anchor and result.anchor is not None:
        Path(args.anchor).write_text(json.dumps(result.anchor.as_dict()) + "\n")
    lines = [f"{e.seq:>6}  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e.at))}  boot "
             f"{e.boot_counter}  {_describe_event(e.event)}" for e in result.entries]
    if result.start is not None:  # no anchor, and entries came before the first one here
        lines.insert(0, f"no anchor: starting at entry {result.start} "
                     + ("that the evidence names" if not result.entries else
                        "(the first the log holds)")
                     + "; earlier entries were acknowledged before and cannot be checked")
    emit(args, {"ok": True, "ueid": result.ueid.hex(),
                "entries": [e.as_dict() for e in result.entries], "start": result.start,
                "anchor": result.anchor.as_dict() if result.anchor else None},
         "\n".join(lines + [f"{len(result.entries)} entries verified: signed by device "
                             f"{result.ueid.hex()}, chain unbroken"
                             + (f" from the anchor (entry {start.seq})" if start else "")
                             + " up to the last entry its evidence names"]))
    return result


def _describe_event(event: dict[str, Any]) -> str:
    kind = event.get("kind")
    if kind == "run":
        outcome = (f"output sha384:{bytes(event['output']).hex()[:16]}…" if "output" in event
                   else f"{event.get('error')}")
        return (f"run {event.get('schedule')}#{event.get('run')} job {event.get('job')} "
                f"{event.get('applet')}: {event.get('state')}, {outcome}"
                + (f" ({event['skipped']} ticks skipped before)" if event.get("skipped") else ""))
    details = ", ".join(f"{k} {v.hex()[:16] + '…' if isinstance(v, bytes) else v}"
                        for k, v in sorted(event.items()) if k != "kind")
    return f"{kind}: {details}"


def cmd_audit(args: argparse.Namespace) -> None:
    """Fetch the zone's audit log, verify it, save it; with --ack the zone forgets it."""
    anchor = _anchor(args.anchor)
    with open_zone(args.name) as zone:
        log = zone.audit(after=anchor.seq if anchor else 0, nonce=os.urandom(32))
        if args.output:
            Path(args.output).write_bytes(cbor2.dumps(
                {k: log[k] for k in ("chain", "entries", "evidence", "nonce")}))
        result = _verified_audit(args, log)
        if args.ack and result.entries:
            zone.audit_ack(result.entries[-1].seq)


def cmd_verify_audit(args: argparse.Namespace) -> None:
    try:
        saved = cbor2.loads(read_file(args.file))
        log = {k: saved[k] for k in ("chain", "entries", "evidence", "nonce")}
    except (SezError, cbor2.CBORDecodeError, LookupError, TypeError) as exc:
        raise SezError(f"{args.file} is not a saved audit log (sez audit -o): {exc}") from exc
    _verified_audit(args, log)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = command(sub, "audit", cmd_audit, "fetch and verify the zone's hash-chained audit log")
    c.add_argument("name")
    c.add_argument("-o", "--output", metavar="FILE", help="save the log (CBOR) for verify-audit")
    c.add_argument("--anchor", metavar="FILE", help="JSON: where the last verified fetch ended; "
                   "the log must continue there (the file is moved on)")
    c.add_argument("--ack", action="store_true",
                   help="once verified, let the zone forget the entries")
    c.add_argument("--root", help="manufacturer root certificate (default: the factory's)")

    c = command(sub, "verify-audit", cmd_verify_audit, "verify a saved audit log (sez audit -o)")
    c.add_argument("file")
    c.add_argument("--anchor", metavar="FILE", help="JSON: the log must continue there "
                   "(the file is moved on)")
    c.add_argument("--root", help="manufacturer root certificate (default: the factory's)")
