
"""``sez owner``, ``sez applet``, ``load``, ``applets``, ``run``, ``result``, ``jobs`` and
``verify-receipt``: owning a zone, and the trusted code it runs."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from firmware.abi.errors import SezError
from firmware.abi.jobs import FINAL, JobState
from firmware.abi.keys import key_id

from ..relay.sync import SyncZone
from ..owner import (build_applet, enroll_authorization, generate_owner_key, load_owner_key,
                     owner_spki, package_of)
from ..verifier import verify_receipt
from .common import (appraising, attested_session, command, emit, group, jsonable, open_zone,
                     read_file, trust_flags, trusted_root)

__all__ = ["register"]


def cmd_owner_keygen(args: argparse.Namespace) -> None:
    try:
        key = generate_owner_key(args.output)
    except FileExistsError:
        raise SezError(f"{args.output} exists: refusing to overwrite a key") from None
    fingerprint = key_id(owner_spki(key)).hex()
    emit(args, {"key": args.output, "owner": fingerprint},
         f"owner key (ECDSA P-384) in {args.output}; fingerprint {fingerprint}")


def cmd_owner_enroll(args: argparse.Namespace) -> None:
    new = owner_spki(load_owner_key(args.key))
    with open_zone(args.name) as zone:
        current = zone.owner()
        authorization = None
        if current["owner"] is not None and current["owner"] != key_id(new).hex():
            if not args.authorize:
                raise SezError(f"zone {args.name} has an owner ({current['owner'][:16]}…): "
                               "replacing it needs --authorize CURRENT_OWNER.pem")
            authorization = enroll_authorization(load_owner_key(args.authorize), new,
                                                 bytes(current["ueid"]), int(current["epoch"]))
        result = zone.enroll(new, authorization)
    emit(args, result, f"zone {args.name} owned by {result['owner']} (epoch {result['epoch']})")


def cmd_applet_build(args: argparse.Namespace) -> None:
    signed = build_applet(args.directory, load_owner_key(args.key))
    Path(args.output).write_bytes(signed)
    package = package_of(signed)
    emit(args, {"file": args.output, "name": package.name, "version": package.version,
                "id": package.id, "measurement": package.measurement.hex()},
         f"{package.name} v{package.version} -> {args.output} ({len(signed)} bytes)\n"
         f"  measurement sha384:{package.measurement.hex()}")


def cmd_load(args: argparse.Namespace) -> None:
    signed = read_file(args.file)
    with open_zone(args.name) as zone:
        loaded = zone.load(signed)
    emit(args, loaded, f"loaded {loaded['name']} v{loaded['version']}: id {loaded['id']}\n"
         f"  measurement sha384:{loaded['measurement']}")


def cmd_applets(args: argparse.Namespace) -> None:
    with open_zone(args.name) as zone:
        listing = zone.applets()
    emit(args, listing, "\n".join(f"{a['id']}  {a['name']} v{a['version']}" for a in listing)
         or "no applets loaded")


@contextmanager
def private(zone: SyncZone, args: argparse.Namespace) -> Iterator[SyncZone]:
    """With ``--private``, an attested session with the zone (what travels in it never
    crosses the host in clear); else the plain channel."""
    if not args.private:
        yield zone
        return
    with attested_session(zone, args.name, args) as session:
        yield session


def cmd_run(args: argparse.Namespace) -> None:
    inputs = [read_file(path) for path in args.input]
    nonce = bytes.fromhex(args.nonce) if args.nonce else b""
    if len(inputs) > 1:
        _run_batch(args, inputs, nonce)
        return
    data = inputs[0]
    with open_zone(args.name, timeout=args.timeout) as zone, private(zone, args) as channel:
        if args.detach:
            queued = channel.submit(args.applet, data, nonce=nonce,
                                    key=bytes.fromhex(args.key) if args.key else None)
            emit(args, queued, str(queued["job"]))
            return
        result = channel.run(args.applet, data, nonce=nonce)
    if args.output:
        Path(args.output).write_bytes(result["output"])
    if args.receipt:
        Path(args.receipt).write_bytes(result["receipt"])
    if args.json:
        emit(args, {"job": result["job"], "applet": jsonable(result["applet"]),
                    "output": result["output"].hex(), "receipt": result["receipt"].hex()}, "")
    elif not args.output:
        sys.stdout.buffer.write(result["output"])
        sys.stdout.flush()
    else:
        print(f"job {result['job']}: {len(result['output'])} bytes -> {args.output}"
              + (f", receipt -> {args.receipt}" if args.receipt else ""))


def _run_batch(args: argparse.Namespace, inputs: list[bytes], nonce: bytes) -> None:
    """Several --input: one batch job; the outputs go to the directory -o, as 1, 2, … in
    the order of the inputs."""
    if args.detach:
        raise ValueError("a batch (several --input) runs attached only: drop --detach")
    if not args.output:
        raise ValueError("a batch (several --input) writes its outputs to a directory: -o DIR")
    with open_zone(args.name, timeout=args.timeout) as zone, private(zone, args) as channel:
        result = channel.run_batch(args.applet, inputs, nonce=nonce)
    directory = Path(args.output)
    directory.mkdir(parents=True, exist_ok=True)
    outputs = [bytes(output) for output in result["outputs"]]
    for number, output in enumerate(outputs, 1):
        (directory / str(number)).write_bytes(output)
    if args.receipt:
        Path(args.receipt).write_bytes(result["receipt"])
    emit(args, {"job": result["job"], "applet": jsonable(result["applet"]),
                "outputs": [output.hex() for output in outputs],
                "receipt": result["receipt"].hex()},
         f"job {result['job']}: {len(outputs)} outputs -> {directory}/1..{len(outputs)}"
         + (f", one receipt -> {args.receipt}" if args.receipt else ""))


def cmd_result(args: argparse.Namespace) -> None:
    """Fetch a detached job's result, write it, then acknowledge it (it leaves the zone)."""
    with open_zone(args.name, timeout=60.0) as zone, private(zone, args) as channel:
        answer = channel.result(args.job, wait=args.wait)
        state = answer["state"]
        if state == JobState.DONE:
            if args.output:
                Path(args.output).write_bytes(answer["output"])
            if args.receipt:
                Path(args.receipt).write_bytes(answer["receipt"])
            if not args.output and not args.json:
                sys.stdout.buffer.write(answer["output"])
                sys.stdout.flush()
        if state in FINAL and not args.keep:
            channel.ack(args.job)
    if state not in FINAL:
        raise SezError(f"job {args.job} is {state}: not finished (wait with --wait SECONDS)")
    if state != JobState.DONE:
        error = answer.get("error") or {}
        raise SezError(f"job {args.job} {state}: [{error.get('code')}] {error.get('message')}")
    if args.json:
        emit(args, {"job": args.job, "state": state, "output": answer["output"].hex(),
                    "receipt": answer["receipt"].hex()}, "")
    elif args.output:
        print(f"job {args.job}: {len(answer['output'])} bytes -> {args.output}"
              + (f", receipt -> {args.receipt}" if args.receipt else ""))


def cmd_jobs(args: argparse.Namespace) -> None:
    with open_zone(args.name) as zone:
        listing = zone.jobs()
    emit(args, listing, "\n".join(
        f"{j['job']:>8}  {j['state']:<11}  {j['applet']}"
        + (f"  (schedule {j['schedule']}#{j['run']})" if j.get("schedule") else "")
        + (f"  ({j['error']['message']})" if j.get("error") else "") for j in listing)
        or "the outbox is empty")


def cmd_verify_receipt(args: argparse.Namespace) -> None:
    root = trusted_root(args.root)
    with appraising():
        inputs, outputs = ([read_file(path) for path in paths]
                           for paths in (args.input, args.output))
        result = verify_receipt(read_file(args.file),
                                input=inputs if len(inputs) > 1 else inputs[0],
                                output=outputs if len(outputs) > 1 else outputs[0],
                                nonce=bytes.fromhex(args.nonce), root=root)
    emit(args, {"ok": True, **result.as_dict()},
         f"receipt verified: job {result.job} (counter {result.job_counter}) ran "
         f"{result.applet_name} v{result.applet_version} on device {result.ueid.hex()}; input, "
         "output and nonce match")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    owner = group(sub, "owner", "the zone's owner")
    c = command(owner, "keygen", cmd_owner_keygen, "make an owner key (ECDSA P-384, PEM)")
    c.add_argument("-o", "--output", required=True, metavar="KEY.pem")
    c = command(owner, "enroll", cmd_owner_enroll, "bind an owner key into the zone's BBRAM")
    c.add_argument("name")
    c.add_argument("--key", required=True, metavar="KEY.pem", help="the new owner's key")
    c.add_argument("--authorize", metavar="CURRENT.pem",
                   help="the current owner's key, to hand the zone over")

    applet = group(sub, "applet", "applet packages")
    c = command(applet, "build", cmd_applet_build, "pack and sign an applet directory")
    c.add_argument("directory")
    c.add_argument("--key", required=True, metavar="KEY.pem", help="the owner's key")
    c.add_argument("-o", "--output", required=True, metavar="FILE.sez")

    c = command(sub, "load", cmd_load, "load a signed applet; prints its id and measurement")
    c.add_argument("name")
    c.add_argument("file", metavar="FILE.sez")

    c = command(sub, "applets", cmd_applets, "the applets loaded in a zone")
    c.add_argument("name")

    c = command(sub, "run", cmd_run, "run an applet on an input; output and receipt")
    c.add_argument("name")
    c.add_argument("applet", help="the manifest name (its loaded version) or the id")
    c.add_argument("--input", required=True, metavar="FILE", action="append",
                   help="the input; given again, a batch job over every input (one receipt)")
    c.add_argument("--nonce", help="the caller's nonce (hex, up to 64 bytes), bound in the receipt")
    c.add_argument("-o", "--output", metavar="OUT", help="write the output here (else stdout); "
                   "for a batch, a directory: OUT/1, OUT/2, …")
    c.add_argument("--receipt", metavar="FILE", help="write the receipt (COSE_Sign1) here")
    c.add_argument("--timeout", type=float, default=120.0)
    c.add_argument("--detach", action="store_true",
                   help="queue the job in the zone's outbox; print its id and return at once")
    c.add_argument("--key", help="with --detach: an idempotency key (hex, 8-64 bytes); "
                   "resubmitting with it returns the first job")
    c.add_argument("--private", action="store_true",
                   help="run the job inside an attested session: input and output cross the "
                   "host encrypted (with --detach: the submission)")
    trust_flags(c)

    c = command(sub, "result", cmd_result,
                "a detached job's output and receipt (then acknowledged)")
    c.add_argument("name")
    c.add_argument("job")
    c.add_argument("-o", "--output", metavar="OUT", help="write the output here (else stdout)")
    c.add_argument("--receipt", metavar="FILE", help="write the receipt here")
    c.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for the job to finish")
    c.add_argument("--keep", action="store_true", help="do not acknowledge: leave it in the zone")
    c.add_argument("--private", action="store_true",
                   help="fetch it inside an attested session (the output crosses the host "
                   "encrypted)")
    trust_flags(c)

    c = command(sub, "jobs", cmd_jobs, "the zone's outbox: detached jobs and their states")
    c.add_argument("name")

    c = command(sub, "verify-receipt", cmd_verify_receipt,
                "check a receipt against input, output and nonce")
    c.add_argument("file")
    c.add_argument("--input", required=True, metavar="IN", action="append",
                   help="given again (with --output as often): a batch job's receipt")
    c.add_argument("--output", required=True, metavar="OUT", action="append")
    c.add_argument("--nonce", required=True, help="hex (may be empty: '')")
    c.add_argument("--root", help="manufacturer root certificate (default: the factory's)")
