
"""``sez attest`` and ``sez verify``: a zone's evidence for a nonce, and its appraisal."""

from __future__ import annotations

import argparse
from pathlib import Path

from emulator.machine import Machine
from emulator.paths import SezHome, image_dir

from ..relay.sync import SyncZone
from ..verifier import Reference, verify_evidence
from .common import appraising, command, emit, read_file, trusted_root

__all__ = ["register", "parse_nonce"]


def parse_nonce(text: str) -> bytes:
    try:
        nonce = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"--nonce must be hex, not {text!r}") from None
    if not 8 <= len(nonce) <= 64:
        raise ValueError(f"--nonce must be 8 to 64 bytes (16 to 128 hex digits), not {len(nonce)}")
    return nonce


def cmd_attest(args: argparse.Namespace) -> None:
    SezHome.default().existing_device(args.name)
    nonce = parse_nonce(args.nonce)
    with SyncZone(Machine(args.name).channel, timeout=args.timeout) as zone:
        evidence = zone.attest(nonce)
    Path(args.output).write_bytes(evidence)
    emit(args, {"file": args.output, "size": len(evidence)},
         f"evidence ({len(evidence)} bytes, COSE_Sign1 EAT) written to {args.output}")


def cmd_verify(args: argparse.Namespace) -> None:
    root = trusted_root(args.root)
    reference = Reference.from_manifest(args.reference or image_dir() / "manifest.json")
    evidence = read_file(args.file)
    with appraising():
        expected = bytes.fromhex(args.ueid) if args.ueid else None
        result = verify_evidence(evidence, nonce=parse_nonce(args.nonce), root=root,
                                 reference=reference, allow_debug=args.allow_debug,
                                 expected_ueid=expected, max_tamper_count=args.max_tamper_count)
    emit(args, {"ok": True, **result.as_dict()},
         f"evidence verified: device {result.ueid.hex()}, firmware {result.firmware}, "
         f"boot {result.boot_counter}{', DEBUG' if result.debug else ''}; every measurement "
         "matches the reference")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = command(sub, "attest", cmd_attest, "evidence for a nonce: COSE_Sign1 EAT, raw CBOR")
    c.add_argument("name")
    c.add_argument("--nonce", required=True, help="8 to 64 bytes, hex")
    c.add_argument("-o", "--output", required=True, help="file for the evidence")
    c.add_argument("--timeout", type=float, default=60.0)

    c = command(sub, "verify", cmd_verify, "appraise evidence; exit 0 only if every check passes")
    c.add_argument("file")
    c.add_argument("--nonce", required=True, help="the nonce the evidence must answer (hex)")
    c.add_argument("--root", help="manufacturer root certificate (default: the factory's)")
    c.add_argument("--reference", help="reference values (default: the image's manifest.json)")
    c.add_argument("--allow-debug", action="store_true", help="accept a debug zone")
    c.add_argument("--ueid", help="the device the evidence must come from (hex UEID)")
    c.add_argument("--max-tamper-count", type=int, metavar="N",
                   help="refuse a device tampered with more than N times before it was "
                   "provisioned anew")
