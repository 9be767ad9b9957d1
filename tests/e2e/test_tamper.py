"""Tamper response on a real zone: the trip, what is zeroised (in BBRAM and in RAM), what fails
after, the job that was running, and the device provisioned anew."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.device import Device
from emulator.errors import DeviceTampered
from emulator.machine import Machine
from emulator.factory import Factory
from emulator.image import load_image
from emulator.paths import SezHome
from emulator.shell import Shell
from firmware.abi import dice
from firmware.abi.errors import AppletFailed, BadBlob, Tampered
from firmware.monitor.jobs import UID_BASE
from host_driver import SyncZone
from host_driver.lifecycle import booted
from host_driver.owner import build_applet, generate_owner_key, owner_spki
from host_driver.verifier import Reference, VerificationError, verify_evidence

pytestmark = pytest.mark.e2e
APPLETS = Path(__file__).parent.parent / "applets"


def sez(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_driver.cli", *args], capture_output=True,
                          text=True, timeout=180)


def settled_info(zone: SyncZone, timeout: float = 15.0) -> dict[str, Any]:
    """``info`` once the monitor has heard from layer 0 (after a trip, PID 1 restarts the
    monitor, which asks the keeper that replaced layer 0): at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        info = zone.info()
        if info["bbram"] != "loading":
            return info
        assert time.monotonic() < deadline, f"the zone still loads after {timeout} s"
        time.sleep(0.1)


def prepare(zone: SyncZone, owner: ec.EllipticCurvePrivateKey, trust: dict[str, Any]
            ) -> dict[str, Any]:
    """An owner, two applets, a sealed blob, a provisioned secret, a result in the outbox."""
    zone.enroll(owner_spki(owner))
    zone.load(build_applet(APPLETS / "vault", owner))
    zone.load(build_applet(APPLETS / "secret-reader", owner))
    blob = zone.run("vault", json.dumps({"op": "seal", "data": b"before".hex()}).encode())
    with zone.session(**trust) as session:
        session.secret_put("api-key", os.urandom(32), applet="secret-reader")
    zone.submit("vault", json.dumps({"op": "seal", "data": "00"}).encode())
    return {"blob": blob["output"]}


def test_tamper_zeroises_and_the_device_comes_back_as_another(
        sez_home: SezHome, tmp_path_factory: pytest.TempPathFactory) -> None:
    name = "tamper-zone"
    Factory(sez_home).provision(name)
    device = Device.open(name, sez_home)
    old_uds = device.fuses.read_bytes()
    old_ueid = bytes.fromhex(str(device.info["ueid"]))
    owner = generate_owner_key(tmp_path_factory.mktemp("owner") / "owner.pem")
    root = Factory(sez_home).root_cert()
    trust = {"root": root,
             "reference": Reference.from_manifest(load_image().directory / "manifest.json")}

    with booted(name, home=sez_home) as zone_machine:
        with SyncZone(zone_machine.url, timeout=30) as zone:
            kept = prepare(zone, owner, trust)
            before = verify_evidence(zone.attest(b"n" * 16), nonce=b"n" * 16, **trust)
            assert before.tamper == {"count": 0, "last": None}

        tripped = sez("tamper", name, "--cause", "lid opened", "--json")
        assert tripped.returncode == 0, tripped.stderr
        report = json.loads(tripped.stdout)
        assert report["count"] == 1 and report["cause"] == "lid opened"
        assert 0 < report["zone_ms"] < report["ack_ms"]  # the zone answered, and said when

        # The zone still answers, and says so; everything that needs a key says `tampered`.
        with SyncZone(zone_machine.url, timeout=30) as zone:
            info = settled_info(zone)
            assert info["bbram"] == "tampered" and "lid opened" in info["tampered"]
            assert info["jobs"]["outbox"] == 0 and info["applets"] == 0
            for call in (lambda: zone.attest(b"n" * 16), lambda: zone.identity(),
                         lambda: zone.run("vault", b"{}"), lambda: zone.enroll(owner_spki(owner)),
                         lambda: zone.secret_list(), lambda: zone.jobs(),
                         lambda: zone.session(**trust)):
                with pytest.raises(Tampered):
                    call()
            assert zone.echo(b"alive") == b"alive"
        status = sez("status", name)
        assert "TAMPERED" in status.stdout, status.stdout + status.stderr

    # The hardware's side: no trace of the old UDS anywhere in the device's files.
    assert not device.fuses.exists()
    for path in device.directory.rglob("*"):
        if path.is_file():
            assert old_uds not in path.read_bytes(), path
    assert not any((device.directory / "bbram.img").read_bytes())
    with pytest.raises(DeviceTampered, match="--force"):
        with booted(name, home=sez_home):
            pass
    refused = sez("boot", name)
    assert refused.returncode != 0 and "--force" in refused.stderr

    # Provisioned anew: another device to every verifier, and nothing from before opens.
    renewed = sez("device", "new", name, "--force", "--json")
    assert renewed.returncode == 0, renewed.stderr
    assert Device.open(name, sez_home).tamper_record["count"] == 1
    with booted(name, home=sez_home) as zone_machine:
        with SyncZone(zone_machine.url, timeout=30) as zone:
            evidence = zone.attest(b"m" * 16)
            result = verify_evidence(evidence, nonce=b"m" * 16, **trust)
            assert result.ueid != old_ueid
            assert result.tamper == {"count": 1, "last": "lid opened"}
            assert result.alias_cert != before.alias_cert
            with pytest.raises(VerificationError) as refused_device:
                verify_evidence(evidence, nonce=b"m" * 16, expected_ueid=old_ueid, **trust)
            assert refused_device.value.check == "device"
            with pytest.raises(VerificationError) as refused_history:
                verify_evidence(evidence, nonce=b"m" * 16, max_tamper_count=0, **trust)
            assert refused_history.value.check == "tamper"
            zone.enroll(owner_spki(owner))  # the same owner, the same applet
            zone.load(build_applet(APPLETS / "vault", owner))
            with pytest.raises(AppletFailed, match=BadBlob.code):
                zone.run("vault", json.dumps({"op": "unseal", "blob": kept["blob"].hex()})
                         .encode())
            assert zone.secret_list() == []


def start_slow_job(zone: SyncZone, timeout: float = 15.0) -> str:
    """Submit a job of the ``slow`` applet that runs for a minute; return its id once the
    zone says it runs (at most ``timeout`` seconds: it is queued until the runner forks it)."""
    job = str(zone.submit("slow", b"60:running at the trip")["job"])
    deadline = time.monotonic() + timeout
    while {j["job"]: j["state"] for j in zone.jobs()}.get(job) != "running":
        assert time.monotonic() < deadline, f"the job did not start within {timeout} s"
        time.sleep(0.05)
    return job


def ram(machine: Machine, tmp: Path) -> bytes:
    """The guest's RAM as the hardware holds it (QMP ``pmemsave``: what a probe on the memory
    bus would read; the device has no sensors, so nothing trips)."""
    size = machine.qmp("query-memory-size-summary")["base-memory"]
    out = tmp / "ram"
    machine.qmp("pmemsave", {"val": 0, "size": size, "filename": str(out)}, timeout=60)
    try:
        return out.read_bytes()
    finally:
        out.unlink()


def test_a_trip_leaves_no_key_secret_or_plaintext_in_ram_and_no_job_running(
        sez_home: SezHome, tmp_path: Path) -> None:
    """The test knows the fuses, so it derives the zone's keys as layer 0 does, and finds them
    in the RAM of the running zone. After the trip none is left, nor the secret provisioned
    inside TLS, nor the plaintext an applet sealed: the killed processes' pages were zeroed as
    they were freed (``init_on_free=1``). The job running at the trip is gone."""
    name = "scrub-zone"
    Factory(sez_home).provision(name)
    uds = Device.open(name, sez_home).fuses.read_bytes()
    owner = generate_owner_key(tmp_path / "owner.pem")
    trust: dict[str, Any] = {"root": Factory(sez_home).root_cert(),
             "reference": Reference.from_manifest(load_image().directory / "manifest.json")}
    value, plaintext = os.urandom(32), os.urandom(32)

    with booted(name, home=sez_home) as zone_machine:
        with SyncZone(zone_machine.url, timeout=30) as zone:
            evidence = verify_evidence(zone.attest(b"n" * 16), nonce=b"n" * 16, **trust)
            cdi = dice.cdi(uds, dict(evidence.measurements), False)
            seal_root = dice.seal_root(uds, False)
            alias = dice.alias_key(cdi)
            scalar = alias.private_numbers().private_value.to_bytes(alias.curve.key_size // 8,
                                                                    "big")
            keys = {"uds": uds, "cdi": cdi, "seal root": seal_root,
                    "BBRAM key": dice.bbram_key(cdi), "secret key": dice.secret_key(seal_root),
                    "alias key": scalar, "alias key (BIGNUM)": scalar[::-1]}
            zone.enroll(owner_spki(owner))
            for applet in ("vault", "secret-reader", "slow"):
                zone.load(build_applet(APPLETS / applet, owner))
            with zone.session(**trust) as session:
                session.secret_put("api-key", value, applet="secret-reader")
            zone.run("secret-reader", b'{"name": "api-key"}')
            blob = zone.run("vault", json.dumps({"op": "seal", "data": plaintext.hex()})
                            .encode())["output"]
            assert zone.run("vault", json.dumps({"op": "unseal", "blob": bytes(blob).hex()})
                            .encode())["output"] == plaintext
            job = start_slow_job(zone)
            before = ram(zone_machine.machine, tmp_path)
            # The search works: layer 0 holds these while the zone runs.
            assert all(before.count(keys[k]) for k in ("cdi", "BBRAM key", "alias key (BIGNUM)"))

        zone_machine.machine.tamper("scrub test")
        with SyncZone(zone_machine.url, timeout=30) as zone:
            info = settled_info(zone)
            assert info["bbram"] == "tampered"
            assert (info["jobs"]["active"], info["jobs"]["outbox"]) == (0, 0)
            with pytest.raises(Tampered):
                zone.result(job)
            after = ram(zone_machine.machine, tmp_path)
    # What crossed the channel in clear (a job's input: the host saw it) may stay in the
    # virtio port's receive buffers; the secret went inside TLS, the sealed data as a blob.
    left = {k: after.count(v) for k, v in {**keys, "secret": value, "plaintext": plaintext}
            .items()}
    assert left == dict.fromkeys(left, 0), left


def test_a_trip_ends_the_job_running_in_a_debug_zone_as_its_shell_sees(
        sez_home: SezHome, tmp_path: Path) -> None:
    """A debug zone's console shell lists the processes: the job's (an unprivileged uid)
    before the trip, none after; the shell itself is started anew."""
    name = "scrub-debug-zone"
    Factory(sez_home).provision(name)
    owner = generate_owner_key(tmp_path / "owner.pem")
    with booted(name, home=sez_home, debug=True) as zone_machine:
        with SyncZone(zone_machine.url, timeout=30) as zone:
            zone.enroll(owner_spki(owner))
            zone.load(build_applet(APPLETS / "slow", owner))
            start_slow_job(zone)
        with Shell(zone_machine.machine) as shell:
            status, table = shell.run("ps -o user,comm")
            assert status == 0 and any(line.split()[0].isdigit() and
                                       int(line.split()[0]) >= UID_BASE
                                       for line in table.splitlines()[1:]), table
        zone_machine.machine.tamper("scrub test")
        with SyncZone(zone_machine.url, timeout=30) as zone:
            assert settled_info(zone)["bbram"] == "tampered"
        with Shell(zone_machine.machine) as shell:
            status, table = shell.run("ps -o user,comm")
        users = [line.split()[0] for line in table.splitlines()[1:]]
        assert status == 0 and users and set(users) == {"0"}, table
