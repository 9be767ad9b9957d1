"""``sez demo``: the main job end to end on one zone: provision, boot, talk over the channel,
attest, own it and run trusted code, leave it alone on a schedule, come back, power off."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.factory import Factory
from emulator.machine import Machine
from emulator.paths import SezHome, image_dir, project_root
from firmware.abi.errors import SezError
from firmware.abi.keys import key_id

from ..lifecycle import booted
from ..owner import (build_applet, generate_owner_key, load_owner_key, owner_spki,
                     schedule_change, unschedule_change)
from ..relay.sync import SyncZone
from ..verifier import Reference, verify_audit, verify_audit_log, verify_evidence, verify_receipt
from .common import command

__all__ = ["register"]


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job end to end: provision, boot, talk over the channel, power off."""
    home = SezHome.default()
    name = args.name
    factory = Factory(home)
    if not factory.exists():
        _step("the factory makes its root CA (ECDSA P-384)")
        factory.init()
    if not home.device_dir(name).exists():
        _step(f"provisioning device {name!r}: fuses (a fresh UDS) and a DeviceID certificate")
        factory.provision(name)
    machine = Machine(name, home)
    if machine.is_running():
        _step(f"zone {name!r} is running from before: pulling its plug first")
        machine.stop(kill=True)
    _step(f"booting zone {name!r} under QEMU")
    with booted(name, accel=args.accel, home=home, kill=False) as booted_zone:
        try:  # the last step is said before the machine powers off, whatever happened
            status = booted_zone.status
            print(f"    up in {booted_zone.boot_seconds:.2f} s: QEMU pid {status.pid} "
                  f"({status.accel}), control channel {status.channel}")
            with SyncZone(booted_zone.url) as zone:
                _demo_channel(zone, booted_zone.greeting, factory)
                key = _demo_applets(zone, home, factory)
            _demo_out_of_band(machine, key, factory.root_cert())
        finally:
            _step(f"powering zone {name!r} off")
    print(f"demo done: console log in {machine.console_log}")


def _demo_channel(zone: SyncZone, session: dict[str, Any], factory: Factory) -> None:
    """Talk over the channel: hello, info, a large echo, null requests, attestation."""
    _step("hello (a new host session)")
    print(f"    protocol {session['protocol']}, firmware {session['firmware']}, "
          f"session {zone.greeting['session']}, boot counter {session['boot_counter']}")
    _step("info")
    info = zone.info()
    print(f"    uptime {info['uptime']:.1f} s, memory {info['memory']['available'] / 2**20:.0f}"
          f" of {info['memory']['total'] / 2**20:.0f} MiB free")
    _step("echo: 1 MiB of random bytes there and back")
    data = os.urandom(1 << 20)
    t = time.perf_counter()
    back = zone.echo(data, timeout=60)
    took = time.perf_counter() - t
    if back != data:
        raise SezError("echo came back altered")
    print(f"    intact, {took * 1000:.0f} ms ({2 * len(data) / took / 2**20:.0f} MiB/s both ways)")
    _step("50 null requests")
    times = []
    for _ in range(50):
        t = time.perf_counter()
        zone.echo(b"")
        times.append((time.perf_counter() - t) * 1000)
    print(f"    round trip median {statistics.median(times):.2f} ms")
    stats = zone.stats()
    print(f"    the zone counted {stats['frames_in']} frames in, {stats['frames_out']} out")
    _step("attest: evidence for a fresh nonce, appraised against root + reference values")
    nonce = os.urandom(32)
    t = time.perf_counter()
    evidence = zone.attest(nonce, timeout=60)
    took = time.perf_counter() - t
    result = verify_evidence(evidence, nonce=nonce, root=factory.root_cert(),
                             reference=Reference.from_manifest(image_dir() / "manifest.json"))
    print(f"    {len(evidence)} bytes in {took * 1000:.0f} ms; verified: device "
          f"{result.ueid.hex()}, boot {result.boot_counter}, firmware "
          f"{result.firmware}, kernel/initramfs/cmdline/firmware match the reference")


def _demo_applets(zone: SyncZone, home: SezHome, factory: Factory
                  ) -> ec.EllipticCurvePrivateKey:
    """Own the zone, load the example applets, run them; the owner key."""
    key_path = home.root / "demo-owner.pem"
    key = load_owner_key(key_path) if key_path.exists() else generate_owner_key(key_path)
    mine = owner_spki(key)
    current = zone.owner()["owner"]
    if current is None:
        _step(f"enroll: the owner key {key_path} becomes the zone's owner (BBRAM)")
        zone.enroll(mine)
    elif current != key_id(mine).hex():
        raise SezError("the demo zone has another owner (use --name for another device)")
    examples = project_root() / "docs" / "examples"
    for name in ("aggregate", "key-custody"):
        _step(f"load: {name}, packed and signed by the owner")
        loaded = zone.load(build_applet(examples / name, key))
        print(f"    id {loaded['id']}, measurement sha384:{loaded['measurement'][:32]}…")
    _step("open an attested session: TLS 1.3 into the zone, appraised before use")
    t = time.perf_counter()
    with zone.session(root=factory.root_cert(),
                      reference=Reference.from_manifest(image_dir() / "manifest.json")) as session:
        took = time.perf_counter() - t
        assert session.attestation is not None
        print(f"    {took * 1000:.0f} ms: the certificate chains to the factory root, fresh "
              "evidence matches the reference values and names the TLS key")
        _step("run aggregate on 6 salary records privately, with a nonce; verify the receipt")
        records = "\n".join(json.dumps({"group": g, "value": v}) for g, v in (
            ("eng", 120), ("eng", 135), ("eng", 128), ("ops", 90), ("ops", 95), ("ceo", 400)))
        nonce = os.urandom(16)
        t = time.perf_counter()
        ran = session.run("aggregate", records.encode(), nonce=nonce)
        took = time.perf_counter() - t
    print(f"    {ran['output'].decode()}  ({took * 1000:.0f} ms, job {ran['job']})")
    print("    the records and the result crossed the host only inside TLS: the host relayed "
          "ciphertext")
    checked = verify_receipt(ran["receipt"], input=records.encode(), output=ran["output"],
                             nonce=nonce, root=factory.root_cert())
    print(f"    receipt verified: {checked.applet_name} v{checked.applet_version} on device "
          f"{checked.ueid.hex()[:16]}…, job counter {checked.job_counter}; "
          "no single record (the lone 'ceo') was revealed")
    _step("run key-custody: a signature by a key that never leaves the zone")
    message = b"pay 100 to Alice"
    answer = json.loads(zone.run("key-custody", json.dumps(
        {"op": "sign", "message": message.hex()}).encode())["output"])
    certificate = x509.load_der_x509_certificate(bytes.fromhex(answer["certificate"]))
    public = certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(bytes.fromhex(answer["signature"]), message, ec.ECDSA(hashes.SHA384()))
    print(f"    signature verified with the applet's certificate ({certificate.subject.rfc4514_string()},"
          " issued by the zone's alias key)")
    return key


def _demo_out_of_band(machine: Machine, key: ec.EllipticCurvePrivateKey,
                      root: x509.Certificate) -> None:
    """A schedule runs while no host is attached; the host comes back to its results and a
    verifying audit log."""
    data = b"\n".join(json.dumps({"group": "g", "value": v}).encode() for v in (3, 5, 8))
    with SyncZone(machine.channel, timeout=60) as zone:
        log = zone.audit()  # a baseline: what the zone keeps now verifies
        anchor = verify_audit(log["chain"], log["entries"], root=root).anchor
        now = zone.schedules()
        aggregate = next(a for a in zone.applets() if a["name"] == "aggregate")
        _step("schedule: the owner signs 'run aggregate on these 3 records every 2 s'")
        zone.schedule(schedule_change(key, ueid=bytes(now["ueid"]), epoch=int(now["epoch"]),
                                      name="demo-tick", applet="aggregate",
                                      measurement=bytes.fromhex(aggregate["measurement"]),
                                      input=data, every=2))
    _step("the host goes away for 7 s: no driver holds the channel")
    time.sleep(7)
    _step("the host comes back: results waited in the outbox; the audit log verifies")
    with SyncZone(machine.channel, timeout=60) as zone:
        now = zone.schedules()
        zone.unschedule(unschedule_change(key, ueid=bytes(now["ueid"]), epoch=int(now["epoch"]),
                                          name="demo-tick"))
        result = verify_audit_log(zone.audit(after=anchor.seq if anchor else 0,
                                             nonce=os.urandom(32)), root=root, anchor=anchor)
        runs = [e.event for e in result.entries if e.event.get("kind") == "run"
                and e.event.get("schedule") == "demo-tick"]
        for run in runs:
            answer = zone.result(run["job"], wait=30)
            verify_receipt(answer["receipt"], input=data, output=answer["output"],
                           nonce=f"demo-tick#{run['run']}".encode(), root=root)
            zone.ack(run["job"])
        if result.anchor is not None:
            zone.audit_ack(result.anchor.seq)
    print(f"    {len(runs)} scheduled runs ({', '.join(str(r['run']) for r in runs)}), each in "
          f"the outbox with a verifying receipt; audit entries {result.entries[0].seq}-"
          f"{result.entries[-1].seq} signed by the alias key, chained, up to the head that "
          "fresh evidence names")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = command(sub, "demo", cmd_demo, "the main job end to end: boot, talk, power off",
                json_flag=False)
    c.add_argument("--name", default="demo", help="device name (default demo)")
    c.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
