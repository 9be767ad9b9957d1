"""The ``sez`` command (DESIGN §10). Every command exits 0 on success, and otherwise non-zero
with a one-line reason on stderr; ``--json`` gives machine-readable output.

The functions here (``boot_zone`` …) are also the programmatic way to drive the emulator from
the host side; this module and the pytest plugin are the only host-driver modules that import
``emulator``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.device import Device
from emulator.errors import BootTimeout, LaunchError
from emulator.factory import Factory
from emulator.image import build_image, load_image
from emulator.machine import Machine, MachineStatus
from emulator.paths import SezHome, image_dir, project_root
from firmware.abi.errors import SezError

from .applet import (build_applet, enroll_authorization, generate_owner_key, load_owner_key,
                     owner_spki, package_of, schedule_change, unschedule_change)
from .errors import ChannelError, ZoneTimeout
from .sync import SyncZone
from .verify import (AuditAnchor, AuditResult, Reference, VerificationError, load_root,
                     verify_audit, verify_audit_log, verify_evidence, verify_receipt)

__all__ = ["main", "boot_zone", "qemu_state", "unanswered", "BOOT_TIMEOUT"]

#: Seconds a cold boot may take before it counts as hung (TCG on 2 cores boots in ~5 s).
BOOT_TIMEOUT = float(os.environ.get("SEZ_BOOT_TIMEOUT", "90"))
#: Seconds each QMP step may take when an error message asks QEMU for its run state.
QMP_STATE_TIMEOUT = 2.0


def boot_zone(name: str, *, debug: bool = False, accel: str = "auto",
              timeout: float = BOOT_TIMEOUT, home: SezHome | None = None,
              cpus: int | None = None, tcg_thread: str | None = None,
              kill_on_timeout: bool = True) -> tuple[MachineStatus, dict[str, Any], float]:
    """Start device ``name`` detached and wait until its zone answers ``hello``.
    ``cpus`` and ``tcg_thread`` override the machine's defaults (emulator.machine).

    Returns the machine status, the hello answer, and the seconds from launch to hello.
    Raises LaunchError if QEMU dies (with its output and the console tail), BootTimeout if the
    zone does not answer within ``timeout`` seconds: the machine is then killed, unless
    ``kill_on_timeout`` is false (to look at it first, as the soak does).
    """
    home = home or SezHome.default()
    image = load_image()
    device = Device.open(name, home)
    machine = Machine(name, home)
    started = time.monotonic()
    machine.launch(image, device, accel=accel, debug=debug, cpus=cpus, tcg_thread=tcg_thread)
    remaining = max(1.0, timeout - (time.monotonic() - started))
    try:
        with SyncZone(machine.channel, hello_timeout=remaining) as zone:
            session = zone.session
    except (ZoneTimeout, ChannelError) as exc:
        console = machine.console(tail=20)
        if not machine.is_running():
            raise LaunchError(f"QEMU exited while zone {name!r} booted (sez console {name}):"
                              f"\n{console}", console=console) from exc
        state = qemu_state(machine)
        if not kill_on_timeout:
            raise BootTimeout(f"zone {name!r} did not answer hello within {timeout:.0f} s (QEMU:"
                              f" {state}); to recover: sez stop {name} --kill, then sez boot "
                              f"{name} (the zone keeps its state):\n{console}",
                              console=console, qemu_status=state) from exc
        machine.stop(kill=True)
        raise BootTimeout(f"zone {name!r} did not answer hello within {timeout:.0f} s (QEMU: "
                          f"{state}); killed it: sez boot {name} starts it again, the zone "
                          f"keeps its state (sez console {name} shows the boot):\n{console}",
                          console=console, qemu_status=state) from exc
    return machine.status(), session, time.monotonic() - started


def qemu_state(machine: Machine) -> str:
    """QEMU's run state from QMP (``running``, ``paused``, …) for an error message, bounded by
    QMP_STATE_TIMEOUT; or why there is none. Never raises."""
    if not machine.is_running():
        return "not running"
    try:
        return str(machine.qmp("query-status", timeout=QMP_STATE_TIMEOUT)["status"])
    except Exception as exc:  # a wedged QMP is part of the diagnosis, not a second failure
        return f"QMP did not answer ({exc.__class__.__name__})"


def unanswered(name: str, exc: ZoneTimeout) -> ZoneTimeout:
    """``exc`` (the zone ``name`` did not answer, or stopped answering heartbeats) as the
    same error type, saying QEMU's run state, the console's last line and how to recover in
    its first line; the console's tail follows on the next lines."""
    machine = Machine(name)
    console = machine.console(tail=20)
    last = next((line.strip() for line in reversed(console.splitlines()) if line.strip()),
                "(empty)")
    message = (f"zone {name!r} did not answer ({(str(exc).splitlines() or ['?'])[0]}); QEMU: "
               f"{qemu_state(machine)}; last console line: {last[-200:]}; to recover: sez stop "
               f"{name} --kill, then sez boot {name} (the zone keeps its state)\n{console}")
    return type(exc)(message, op=exc.op, seconds=exc.seconds)


# -- output ---------------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else text)


def _progress(message: str) -> None:
    print(f"sez: {message}", file=sys.stderr, flush=True)


# -- commands -------------------------------------------------------------------------------------


def cmd_image_build(args: argparse.Namespace) -> None:
    image = build_image(force=args.force, progress=_progress)
    m = image.manifest
    _emit(args, m, "\n".join([
        f"image {image.directory}",
        f"  kernel     {m['kernel']['release']}  sha384:{m['kernel']['sha384']}",
        f"  initramfs  {m['initramfs']['size'] / 2**20:.1f} MiB  sha384:{m['initramfs']['sha384']}",
        f"  cmdline    sha384:{m['cmdline']['sha384']}",
        f"  firmware   {m['firmware_version']}",
    ]))


def cmd_factory_init(args: argparse.Namespace) -> None:
    factory = Factory()
    cert = factory.init()
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    _emit(args, {"root": str(factory.root_cert_path), "sha256": fingerprint},
          f"manufacturer root CA (ECDSA P-384) in {factory.root_cert_path}\n"
          f"  SHA-256 fingerprint {fingerprint}")


def cmd_device_new(args: argparse.Namespace) -> None:
    device = Factory().provision(args.name)
    _emit(args, {"name": device.name, "directory": str(device.directory), **device.info},
          f"device {device.name} provisioned in {device.directory}: UEID {device.info['ueid']}")


def _nonce(text: str) -> bytes:
    try:
        nonce = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"--nonce must be hex, not {text!r}") from None
    if not 8 <= len(nonce) <= 64:
        raise ValueError(f"--nonce must be 8 to 64 bytes (16 to 128 hex digits), not {len(nonce)}")
    return nonce


def cmd_attest(args: argparse.Namespace) -> None:
    SezHome.default().existing_device(args.name)
    nonce = _nonce(args.nonce)
    with SyncZone(Machine(args.name).channel, timeout=args.timeout) as zone:
        evidence = zone.attest(nonce)
    Path(args.output).write_bytes(evidence)
    _emit(args, {"file": args.output, "size": len(evidence)},
          f"evidence ({len(evidence)} bytes, COSE_Sign1 EAT) written to {args.output}")


def cmd_verify(args: argparse.Namespace) -> None:
    root = load_root(args.root or Factory().root_cert_path)
    reference = Reference.from_manifest(args.reference or image_dir() / "manifest.json")
    evidence = _read(args.file)
    try:
        expected = bytes.fromhex(args.ueid) if args.ueid else None
        result = verify_evidence(evidence, nonce=_nonce(args.nonce), root=root,
                                 reference=reference, allow_debug=args.allow_debug,
                                 expected_ueid=expected)
    except VerificationError as exc:
        raise SezError(f"verification failed: {exc}") from exc
    _emit(args, {"ok": True, **result.as_dict()},
          f"evidence verified: device {result.ueid.hex()}, firmware {result.firmware}, "
          f"boot {result.boot_counter}{', DEBUG' if result.debug else ''}; every measurement "
          "matches the reference")


def cmd_boot(args: argparse.Namespace) -> None:
    status, session, seconds = boot_zone(args.name, debug=args.debug, accel=args.accel,
                                         timeout=args.timeout)
    data = {**status.as_dict(), "hello": _jsonable(session), "boot_seconds": round(seconds, 3)}
    _emit(args, data,
          f"zone {args.name} up in {seconds:.2f} s: pid {status.pid}, {status.accel}, "
          f"channel {status.channel}, firmware {session.get('firmware')}, "
          f"boot {session.get('boot_counter')}" + (", DEBUG" if session.get("debug") else ""))


def cmd_status(args: argparse.Namespace) -> None:
    home = SezHome.default()
    names = [args.name] if args.name else home.devices()
    if args.name:
        home.existing_device(args.name)
    rows = [Machine(n, home).status() for n in names]
    queues = {r.name: _queue(r) for r in rows if r.running}
    if args.json:
        data: Any = [{**r.as_dict(), "queue": queues.get(r.name)} for r in rows]
        print(json.dumps(data[0] if args.name else data, indent=2, sort_keys=True))
        return
    if not rows:
        print("no devices (provision one: sez device new NAME)")
    for r in rows:
        if r.running:
            q = queues[r.name]
            queue = (f"queue: {q['error']}" if "error" in q else
                     f"{q['active']} jobs running, {q['queued']} queued, {q['outbox']} in the "
                     f"outbox, {q['schedules']} schedules, {q['audit']} audit entries kept")
            print(f"{r.name}: running, pid {r.pid}, qemu {r.qemu_status}, {r.accel}, "
                  f"channel {r.channel}, boot {r.boot_counter}, up {r.uptime:.0f} s; {queue}")
        else:
            print(f"{r.name}: stopped" + (f" (boots so far: {r.boot_counter})"
                                           if r.boot_counter else ""))


def _queue(status: MachineStatus) -> dict[str, Any]:
    """What the zone itself says of its work (a short session; another driver may hold the
    channel, or the zone may not answer: then why)."""
    try:
        with SyncZone(str(status.channel), timeout=5, hello_timeout=5) as zone:
            info = zone.info()
    except SezError as exc:
        return {"error": str(exc).splitlines()[0]}
    jobs = info["jobs"]
    return {"active": jobs["active"], "queued": jobs["queued"], "outbox": jobs["outbox"],
            "schedules": info.get("schedules", 0), "audit": info.get("audit", {}).get("kept", 0)}


def cmd_stop(args: argparse.Namespace) -> None:
    SezHome.default().existing_device(args.name)
    stopped = Machine(args.name).stop(kill=args.kill)
    how = "plug pulled" if args.kill else "powered off"
    _emit(args, {"name": args.name, "stopped": stopped, "kill": args.kill},
          f"zone {args.name} {how}" if stopped else f"zone {args.name} was not running")


def cmd_console(args: argparse.Namespace) -> None:
    SezHome.default().existing_device(args.name)
    machine = Machine(args.name)
    text = machine.console(tail=args.tail)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    if not args.follow:
        return
    offset = machine.console_log.stat().st_size if machine.console_log.exists() else 0
    while True:
        sys.stdout.flush()
        try:
            with machine.console_log.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            chunk = b""
        if chunk:
            offset += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
        elif not machine.is_running():
            return
        time.sleep(0.2)


def cmd_ping(args: argparse.Namespace) -> None:
    machine = Machine(args.name, SezHome.default())
    SezHome.default().existing_device(args.name)
    started = time.perf_counter()
    with SyncZone(machine.channel, timeout=args.timeout) as zone:
        hello_ms = (time.perf_counter() - started) * 1000
        info = zone.info()
        times = []
        for _ in range(args.count):
            t = time.perf_counter()
            zone.echo(b"")
            times.append((time.perf_counter() - t) * 1000)
    data = {"info": info, "hello_ms": round(hello_ms, 3),
            "rtt_ms": {"min": round(min(times), 3), "median": round(statistics.median(times), 3),
                       "max": round(max(times), 3), "count": len(times)}}
    _emit(args, data,
          f"zone {args.name}: firmware {info['firmware']}, protocol {info['protocol']}, "
          f"boot {info['boot_counter']}, up {info['uptime']:.1f} s, "
          f"{info['memory']['available'] / 2**20:.0f} MiB free\n"
          f"connect+hello {hello_ms:.2f} ms; round trip over {len(times)} requests: "
          f"min {min(times):.3f} ms, median {statistics.median(times):.3f} ms, "
          f"max {max(times):.3f} ms")


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job end to end: provision, boot, talk over the channel, power off."""
    home = SezHome.default()
    name = args.name

    def step(text: str) -> None:
        print(f"==> {text}", flush=True)

    factory = Factory(home)
    if not factory.exists():
        step("the factory makes its root CA (ECDSA P-384)")
        factory.init()
    if not home.device_dir(name).exists():
        step(f"provisioning device {name!r}: fuses (a fresh UDS) and a DeviceID certificate")
        factory.provision(name)
    machine = Machine(name, home)
    if machine.is_running():
        step(f"zone {name!r} is running from before: pulling its plug first")
        machine.stop(kill=True)
    step(f"booting zone {name!r} under QEMU")
    status, session, seconds = boot_zone(name, accel=args.accel, home=home)
    try:
        print(f"    up in {seconds:.2f} s: QEMU pid {status.pid} ({status.accel}), "
              f"control channel {status.channel}")
        with SyncZone(machine.channel) as zone:
            step("hello (a new host session)")
            print(f"    protocol {session['protocol']}, firmware {session['firmware']}, "
                  f"session {zone.session['session']}, boot counter {session['boot_counter']}")
            step("info")
            info = zone.info()
            print(f"    uptime {info['uptime']:.1f} s, memory {info['memory']['available'] / 2**20:.0f}"
                  f" of {info['memory']['total'] / 2**20:.0f} MiB free")
            step("echo: 1 MiB of random bytes there and back")
            data = os.urandom(1 << 20)
            t = time.perf_counter()
            back = zone.echo(data, timeout=60)
            took = time.perf_counter() - t
            if back != data:
                raise SezError("echo came back altered")
            print(f"    intact, {took * 1000:.0f} ms ({2 * len(data) / took / 2**20:.0f} MiB/s both ways)")
            step("50 null requests")
            times = []
            for _ in range(50):
                t = time.perf_counter()
                zone.echo(b"")
                times.append((time.perf_counter() - t) * 1000)
            print(f"    round trip median {statistics.median(times):.2f} ms")
            stats = zone.stats()
            print(f"    the zone counted {stats['frames_in']} frames in, {stats['frames_out']} out")
            step("attest: evidence for a fresh nonce, appraised against root + reference values")
            nonce = os.urandom(32)
            t = time.perf_counter()
            evidence = zone.attest(nonce, timeout=60)
            took = time.perf_counter() - t
            result = verify_evidence(evidence, nonce=nonce, root=factory.root_cert(),
                                     reference=Reference.from_manifest(
                                         image_dir() / "manifest.json"))
            print(f"    {len(evidence)} bytes in {took * 1000:.0f} ms; verified: device "
                  f"{result.ueid.hex()}, boot {result.boot_counter}, firmware "
                  f"{result.firmware}, kernel/initramfs/cmdline/firmware match the reference")
            key = _demo_applets(zone, home, factory, step)
        _demo_out_of_band(machine, key, factory.root_cert(), step)
    finally:
        step(f"powering zone {name!r} off")
        machine.stop()
    print(f"demo done: console log in {machine.console_log}")


def _zone(name: str, timeout: float = 60.0) -> SyncZone:
    SezHome.default().existing_device(name)
    return SyncZone(Machine(name).channel, timeout=timeout)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SezError(f"cannot read {path}: {exc.strerror}") from exc


def cmd_owner_keygen(args: argparse.Namespace) -> None:
    try:
        key = generate_owner_key(args.output)
    except FileExistsError:
        raise SezError(f"{args.output} exists: refusing to overwrite a key") from None
    fingerprint = hashlib.sha256(owner_spki(key)).hexdigest()
    _emit(args, {"key": args.output, "owner": fingerprint},
          f"owner key (ECDSA P-384) in {args.output}; fingerprint {fingerprint}")


def cmd_owner_enroll(args: argparse.Namespace) -> None:
    new = owner_spki(load_owner_key(args.key))
    with _zone(args.name) as zone:
        current = zone.owner()
        authorization = None
        if current["owner"] is not None and current["owner"] != hashlib.sha256(new).hexdigest():
            if not args.authorize:
                raise SezError(f"zone {args.name} has an owner ({current['owner'][:16]}…): "
                               "replacing it needs --authorize CURRENT_OWNER.pem")
            authorization = enroll_authorization(load_owner_key(args.authorize), new,
                                                 bytes(current["ueid"]), int(current["epoch"]))
        result = zone.enroll(new, authorization)
    _emit(args, result, f"zone {args.name} owned by {result['owner']} (epoch {result['epoch']})")


def cmd_applet_build(args: argparse.Namespace) -> None:
    signed = build_applet(args.directory, load_owner_key(args.key))
    Path(args.output).write_bytes(signed)
    package = package_of(signed)
    _emit(args, {"file": args.output, "name": package.name, "version": package.version,
                 "id": package.id, "measurement": package.measurement.hex()},
          f"{package.name} v{package.version} -> {args.output} ({len(signed)} bytes)\n"
          f"  measurement sha384:{package.measurement.hex()}")


def cmd_load(args: argparse.Namespace) -> None:
    signed = _read(args.file)
    with _zone(args.name) as zone:
        loaded = zone.load(signed)
    _emit(args, loaded, f"loaded {loaded['name']} v{loaded['version']}: id {loaded['id']}\n"
          f"  measurement sha384:{loaded['measurement']}")


def cmd_applets(args: argparse.Namespace) -> None:
    with _zone(args.name) as zone:
        listing = zone.applets()
    _emit(args, listing, "\n".join(f"{a['id']}  {a['name']} v{a['version']}" for a in listing)
          or "no applets loaded")


def cmd_run(args: argparse.Namespace) -> None:
    data = _read(args.input)
    nonce = bytes.fromhex(args.nonce) if args.nonce else b""
    if args.detach:
        with _zone(args.name, timeout=args.timeout) as zone:
            queued = zone.submit(args.applet, data, nonce=nonce,
                                 key=bytes.fromhex(args.key) if args.key else None)
        _emit(args, queued, str(queued["job"]))
        return
    with _zone(args.name, timeout=args.timeout) as zone:
        result = zone.run(args.applet, data, nonce=nonce)
    if args.output:
        Path(args.output).write_bytes(result["output"])
    if args.receipt:
        Path(args.receipt).write_bytes(result["receipt"])
    if args.json:
        _emit(args, {"job": result["job"], "applet": _jsonable(result["applet"]),
                     "output": result["output"].hex(), "receipt": result["receipt"].hex()}, "")
    elif not args.output:
        sys.stdout.buffer.write(result["output"])
        sys.stdout.flush()
    else:
        print(f"job {result['job']}: {len(result['output'])} bytes -> {args.output}"
              + (f", receipt -> {args.receipt}" if args.receipt else ""))


def cmd_result(args: argparse.Namespace) -> None:
    """Fetch a detached job's result, write it, then acknowledge it (it leaves the zone)."""
    with _zone(args.name, timeout=60.0) as zone:
        answer = zone.result(args.job, wait=args.wait)
        state = answer["state"]
        if state == "done":
            if args.output:
                Path(args.output).write_bytes(answer["output"])
            if args.receipt:
                Path(args.receipt).write_bytes(answer["receipt"])
            if not args.output and not args.json:
                sys.stdout.buffer.write(answer["output"])
                sys.stdout.flush()
        if state in ("done", "failed", "interrupted") and not args.keep:
            zone.ack(args.job)
    if state not in ("done", "failed", "interrupted"):
        raise SezError(f"job {args.job} is {state}: not finished (wait with --wait SECONDS)")
    if state != "done":
        error = answer.get("error") or {}
        raise SezError(f"job {args.job} {state}: [{error.get('code')}] {error.get('message')}")
    if args.json:
        _emit(args, {"job": args.job, "state": state, "output": answer["output"].hex(),
                     "receipt": answer["receipt"].hex()}, "")
    elif args.output:
        print(f"job {args.job}: {len(answer['output'])} bytes -> {args.output}"
              + (f", receipt -> {args.receipt}" if args.receipt else ""))


def cmd_jobs(args: argparse.Namespace) -> None:
    with _zone(args.name) as zone:
        listing = zone.jobs()
    _emit(args, listing, "\n".join(
        f"{j['job']:>8}  {j['state']:<11}  {j['applet']}"
        + (f"  (schedule {j['schedule']}#{j['run']})" if j.get("schedule") else "")
        + (f"  ({j['error']['message']})" if j.get("error") else "") for j in listing)
        or "the outbox is empty")


def cmd_verify_receipt(args: argparse.Namespace) -> None:
    root = load_root(args.root or Factory().root_cert_path)
    try:
        result = verify_receipt(_read(args.file), input=_read(args.input),
                                output=_read(args.output), nonce=bytes.fromhex(args.nonce),
                                root=root)
    except VerificationError as exc:
        raise SezError(f"verification failed: {exc}") from exc
    _emit(args, {"ok": True, **result.as_dict()},
          f"receipt verified: job {result.job} (counter {result.job_counter}) ran "
          f"{result.applet_name} v{result.applet_version} on device {result.ueid.hex()}; input, "
          "output and nonce match")


def cmd_schedule(args: argparse.Namespace) -> None:
    key = load_owner_key(args.key)
    data = _read(args.input) if args.input else b""
    with _zone(args.name) as zone:
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
    _emit(args, result, f"schedule {args.schedule}: {applet['name']} v{applet['version']} "
          f"every {args.every} s on {len(data)} bytes of input, from now on (epoch "
          f"{result['epoch']})")


def cmd_unschedule(args: argparse.Namespace) -> None:
    key = load_owner_key(args.key)
    with _zone(args.name) as zone:
        current = zone.schedules()
        result = zone.unschedule(unschedule_change(key, ueid=bytes(current["ueid"]),
                                                   epoch=int(current["epoch"]),
                                                   name=args.schedule))
    _emit(args, result, f"schedule {args.schedule} removed (epoch {result['epoch']})")


def cmd_schedules(args: argparse.Namespace) -> None:
    with _zone(args.name) as zone:
        listing = zone.schedules()
    lines = [f"{s['name']:<16} {s['applet']} every {s['every']} s: {s['runs']} runs"
             + (f", next in {s['next_in']:.0f} s" if s["next_in"] is not None else "")
             + (f", {s['skipped']} skipped ({s['skipping']})" if s["skipped"] else "")
             for s in listing["schedules"]]
    _emit(args, _jsonable(listing), "\n".join(lines) or "no schedules")


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
    root = load_root(args.root or Factory().root_cert_path)
    start = _anchor(args.anchor)
    try:
        result = verify_audit_log(log, root=root, anchor=start)
    except VerificationError as exc:
        raise SezError(f"verification failed: {exc}") from exc
    if args.anchor and result.anchor is not None:
        Path(args.anchor).write_text(json.dumps(result.anchor.as_dict()) + "\n")
    lines = [f"{e.seq:>6}  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e.at))}  boot "
             f"{e.boot_counter}  {_describe_event(e.event)}" for e in result.entries]
    if result.start is not None:  # no anchor, and entries came before the first one here
        lines.insert(0, f"no anchor: starting at entry {result.start} "
                     + ("that the evidence names" if not result.entries else
                        "(the first the log holds)")
                     + "; earlier entries were acknowledged before and cannot be checked")
    _emit(args, {"ok": True, "ueid": result.ueid.hex(),
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
    with _zone(args.name) as zone:
        log = zone.audit(after=anchor.seq if anchor else 0, nonce=os.urandom(32))
        if args.output:
            Path(args.output).write_bytes(cbor2.dumps(
                {k: log[k] for k in ("chain", "entries", "evidence", "nonce")}))
        result = _verified_audit(args, log)
        if args.ack and result.entries:
            zone.audit_ack(result.entries[-1].seq)


def cmd_verify_audit(args: argparse.Namespace) -> None:
    try:
        saved = cbor2.loads(_read(args.file))
        log = {k: saved[k] for k in ("chain", "entries", "evidence", "nonce")}
    except Exception as exc:
        raise SezError(f"{args.file} is not a saved audit log (sez audit -o): {exc}") from exc
    _verified_audit(args, log)


def _demo_applets(zone: SyncZone, home: SezHome, factory: Factory,
                  step: Callable[[str], None]) -> ec.EllipticCurvePrivateKey:
    key_path = home.root / "demo-owner.pem"
    key = load_owner_key(key_path) if key_path.exists() else generate_owner_key(key_path)
    mine = owner_spki(key)
    current = zone.owner()["owner"]
    if current is None:
        step(f"enroll: the owner key {key_path} becomes the zone's owner (BBRAM)")
        zone.enroll(mine)
    elif current != hashlib.sha256(mine).hexdigest():
        raise SezError("the demo zone has another owner (sez tamper it, or use --name)")
    examples = project_root() / "docs" / "examples"
    for name in ("aggregate", "key-custody"):
        step(f"load: {name}, packed and signed by the owner")
        loaded = zone.load(build_applet(examples / name, key))
        print(f"    id {loaded['id']}, measurement sha384:{loaded['measurement'][:32]}…")
    step("run aggregate on 6 salary records, with a nonce; verify the receipt")
    records = "\n".join(json.dumps({"group": g, "value": v}) for g, v in (
        ("eng", 120), ("eng", 135), ("eng", 128), ("ops", 90), ("ops", 95), ("ceo", 400)))
    nonce = os.urandom(16)
    t = time.perf_counter()
    ran = zone.run("aggregate", records.encode(), nonce=nonce)
    took = time.perf_counter() - t
    print(f"    {ran['output'].decode()}  ({took * 1000:.0f} ms, job {ran['job']})")
    checked = verify_receipt(ran["receipt"], input=records.encode(), output=ran["output"],
                             nonce=nonce, root=factory.root_cert())
    print(f"    receipt verified: {checked.applet_name} v{checked.applet_version} on device "
          f"{checked.ueid.hex()[:16]}…, job counter {checked.job_counter}; "
          "no single record (the lone 'ceo') was revealed")
    step("run key-custody: a signature by a key that never leaves the zone")
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
                      root: x509.Certificate, step: Callable[[str], None]) -> None:
    """A schedule runs while no host is attached; the host comes back to its results and a
    verifying audit log."""
    data = b"\n".join(json.dumps({"group": "g", "value": v}).encode() for v in (3, 5, 8))
    with SyncZone(machine.channel, timeout=60) as zone:
        log = zone.audit()  # a baseline: what the zone keeps now verifies
        anchor = verify_audit(log["chain"], log["entries"], root=root).anchor
        now = zone.schedules()
        aggregate = next(a for a in zone.applets() if a["name"] == "aggregate")
        step("schedule: the owner signs 'run aggregate on these 3 records every 2 s'")
        zone.schedule(schedule_change(key, ueid=bytes(now["ueid"]), epoch=int(now["epoch"]),
                                      name="demo-tick", applet="aggregate",
                                      measurement=bytes.fromhex(aggregate["measurement"]),
                                      input=data, every=2))
    step("the host goes away for 7 s: no driver holds the channel")
    time.sleep(7)
    step("the host comes back: results waited in the outbox; the audit log verifies")
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# -- argument parsing -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sez", description="SEZ: an emulated out-of-band secure "
                                "execution zone (a crypto coprocessor under QEMU)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], None], help: str,
                parent: Any = sub, json_flag: bool = True) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        c.set_defaults(func=func)
        if json_flag:
            c.add_argument("--json", action="store_true", help="machine-readable output")
        return c

    image = sub.add_parser("image", help="the guest image").add_subparsers(
        dest="image_command", required=True, metavar="COMMAND")
    c = command("build", cmd_image_build, "build vmlinux + initramfs + manifest.json", image)
    c.add_argument("--force", action="store_true", help="download and build again")

    device = sub.add_parser("device", help="provisioned devices").add_subparsers(
        dest="device_command", required=True, metavar="COMMAND")
    c = command("new", cmd_device_new, "provision a device: fuses (UDS) + DeviceID certificate",
                device)
    c.add_argument("name")

    factory = sub.add_parser("factory", help="the manufacturer").add_subparsers(
        dest="factory_command", required=True, metavar="COMMAND")
    command("init", cmd_factory_init, "make the manufacturer root CA", factory)

    c = command("attest", cmd_attest, "evidence for a nonce: COSE_Sign1 EAT, raw CBOR")
    c.add_argument("name")
    c.add_argument("--nonce", required=True, help="8 to 64 bytes, hex")
    c.add_argument("-o", "--output", required=True, help="file for the evidence")
    c.add_argument("--timeout", type=float, default=60.0)

    c = command("verify", cmd_verify, "appraise evidence; exit 0 only if every check passes")
    c.add_argument("file")
    c.add_argument("--nonce", required=True, help="the nonce the evidence must answer (hex)")
    c.add_argument("--root", help="manufacturer root certificate (default: the factory's)")
    c.add_argument("--reference", help="reference values (default: the image's manifest.json)")
    c.add_argument("--allow-debug", action="store_true", help="accept a debug zone")
    c.add_argument("--ueid", help="the device the evidence must come from (hex UEID)")

    c = command("boot", cmd_boot, "start a zone detached; return once it answers hello")
    c.add_argument("name")
    c.add_argument("--debug", action="store_true", help="boot a debug zone (evidence says so)")
    c.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    c.add_argument("--timeout", type=float, default=BOOT_TIMEOUT,
                   help=f"seconds to wait for hello (default {BOOT_TIMEOUT:.0f})")

    c = command("status", cmd_status, "state, pid, channel, boot counter, uptime")
    c.add_argument("name", nargs="?")

    c = command("stop", cmd_stop, "orderly power-off (ACPI, then QMP quit), or --kill")
    c.add_argument("name")
    c.add_argument("--kill", action="store_true", help="pull the plug (SIGKILL)")

    c = command("console", cmd_console, "the zone's serial console log", json_flag=False)
    c.add_argument("name")
    c.add_argument("--follow", "-f", action="store_true", help="keep printing new output")
    c.add_argument("--tail", type=int, default=None, help="only the last N lines")

    owner = sub.add_parser("owner", help="the zone's owner").add_subparsers(
        dest="owner_command", required=True, metavar="COMMAND")
    c = command("keygen", cmd_owner_keygen, "make an owner key (ECDSA P-384, PEM)", owner)
    c.add_argument("-o", "--output", required=True, metavar="KEY.pem")
    c = command("enroll", cmd_owner_enroll, "bind an owner key into the zone's BBRAM", owner)
    c.add_argument("name")
    c.add_argument("--key", required=True, metavar="KEY.pem", help="the new owner's key")
    c.add_argument("--authorize", metavar="CURRENT.pem",
                   help="the current owner's key, to hand the zone over")

    applet = sub.add_parser("applet", help="applet packages").add_subparsers(
        dest="applet_command", required=True, metavar="COMMAND")
    c = command("build", cmd_applet_build, "pack and sign an applet directory", applet)
    c.add_argument("directory")
    c.add_argument("--key", required=True, metavar="KEY.pem", help="the owner's key")
    c.add_argument("-o", "--output", required=True, metavar="FILE.sez")

    c = command("load", cmd_load, "load a signed applet; prints its id and measurement")
    c.add_argument("name")
    c.add_argument("file", metavar="FILE.sez")

    c = command("applets", cmd_applets, "the applets loaded in a zone")
    c.add_argument("name")

    c = command("run", cmd_run, "run an applet on an input; output and receipt")
    c.add_argument("name")
    c.add_argument("applet", help="the manifest name (its loaded version) or the id")
    c.add_argument("--input", required=True, metavar="FILE")
    c.add_argument("--nonce", help="the caller's nonce (hex, up to 64 bytes), bound in the receipt")
    c.add_argument("-o", "--output", metavar="OUT", help="write the output here (else stdout)")
    c.add_argument("--receipt", metavar="FILE", help="write the receipt (COSE_Sign1) here")
    c.add_argument("--timeout", type=float, default=120.0)
    c.add_argument("--detach", action="store_true",
                   help="queue the job in the zone's outbox; print its id and return at once")
    c.add_argument("--key", help="with --detach: an idempotency key (hex, 8-64 bytes); "
                   "resubmitting with it returns the first job")

    c = command("result", cmd_result, "a detached job's output and receipt (then acknowledged)")
    c.add_argument("name")
    c.add_argument("job")
    c.add_argument("-o", "--output", metavar="OUT", help="write the output here (else stdout)")
    c.add_argument("--receipt", metavar="FILE", help="write the receipt here")
    c.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for the job to finish")
    c.add_argument("--keep", action="store_true", help="do not acknowledge: leave it in the zone")

    c = command("jobs", cmd_jobs, "the zone's outbox: detached jobs and their states")
    c.add_argument("name")

    c = command("verify-receipt", cmd_verify_receipt,
                "check a receipt against input, output and nonce")
    c.add_argument("file")
    c.add_argument("--input", required=True, metavar="IN")
    c.add_argument("--output", required=True, metavar="OUT")
    c.add_argument("--nonce", required=True, help="hex (may be empty: '')")
    c.add_argument("--root", help="manufacturer root certificate (default: the factory's)")

    c = command("schedule", cmd_schedule,
                "run an applet every N seconds, host or no host (owner-signed)")
    c.add_argument("name")
    c.add_argument("schedule", help="the schedule's name (a-z, 0-9, '-')")
    c.add_argument("applet", help="a loaded applet (name or id); its measurement is pinned")
    c.add_argument("--every", type=int, required=True, metavar="SECONDS")
    c.add_argument("--input", metavar="FILE", help="the input of every run (default: empty)")
    c.add_argument("--key", required=True, metavar="KEY.pem", help="the owner's key")

    c = command("unschedule", cmd_unschedule, "remove a schedule (owner-signed)")
    c.add_argument("name")
    c.add_argument("schedule")
    c.add_argument("--key", required=True, metavar="KEY.pem", help="the owner's key")

    c = command("schedules", cmd_schedules, "a zone's schedules, their runs and skips")
    c.add_argument("name")

    c = command("audit", cmd_audit, "fetch and verify the zone's hash-chained audit log")
    c.add_argument("name")
    c.add_argument("-o", "--output", metavar="FILE", help="save the log (CBOR) for verify-audit")
    c.add_argument("--anchor", metavar="FILE", help="JSON: where the last verified fetch ended; "
                   "the log must continue there (the file is moved on)")
    c.add_argument("--ack", action="store_true",
                   help="once verified, let the zone forget the entries")
    c.add_argument("--root", help="manufacturer root certificate (default: the factory's)")

    c = command("verify-audit", cmd_verify_audit, "verify a saved audit log (sez audit -o)")
    c.add_argument("file")
    c.add_argument("--anchor", metavar="FILE", help="JSON: the log must continue there "
                   "(the file is moved on)")
    c.add_argument("--root", help="manufacturer root certificate (default: the factory's)")

    c = command("demo", cmd_demo, "the main job end to end: boot, talk, power off",
                json_flag=False)
    c.add_argument("--name", default="demo", help="device name (default demo)")
    c.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")

    c = command("ping", cmd_ping, "hello + info, and the round-trip time of null requests")
    c.add_argument("name")
    c.add_argument("--count", type=int, default=10)
    c.add_argument("--timeout", type=float, default=10.0)
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


if __name__ == "__main__":
    sys.exit(main())
