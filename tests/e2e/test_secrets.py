"""Provisioned secrets on a real zone: put inside an attested session, written once, read by the
applets their policy admits (after a reboot and a power cut too), refused to any other."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.device import Device
from emulator.factory import Factory
from emulator.image import load_image
from emulator.paths import SezHome, image_dir
from firmware.abi import secret
from firmware.abi.errors import (AppletFailed, BadArgs, NeedsSession, PolicyUnmatched,
                                 SecretExists)
from firmware.abi.keys import key_id
from host_driver import SyncZone
from host_driver.lifecycle import BootedZone
from host_driver.owner import build_applet, enroll_authorization, owner_spki
from host_driver.verifier import Reference

from .test_sessions import RecordingZone

pytestmark = pytest.mark.e2e
READER = Path(__file__).parent.parent / "applets" / "secret-reader"
NAME = "secret-zone"
VALUE = b"db password: correct horse battery staple"
DIGEST = hashlib.sha384(VALUE).digest()


class Secrets:
    """The zone these tests share, its owners, and the reader applet in any name and version."""

    def __init__(self, booted: BootedZone, home: SezHome, tmp: Path) -> None:
        self.booted, self.home, self.tmp = booted, home, tmp
        self.owner = ec.generate_private_key(ec.SECP384R1())
        self.successor = ec.generate_private_key(ec.SECP384R1())

    def zone(self) -> SyncZone:
        return SyncZone(self.booted.url, timeout=60, hello_timeout=90)

    def reader(self, version: int, name: str = "secret-reader",
               key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        target = self.tmp / f"{name}-v{version}"
        if not target.exists():
            shutil.copytree(READER, target)
            manifest = (target / "manifest.toml").read_text()
            (target / "manifest.toml").write_text(manifest.replace(
                'name = "secret-reader"\nversion = 1',
                f'name = "{name}"\nversion = {version}'))
        return build_applet(target, key or self.owner)

    @contextmanager
    def session(self, zone: SyncZone) -> Iterator[Any]:
        """An attested session with the zone: its evidence appraised against the factory root
        and the image's reference values, as ``sez secret put`` does."""
        reference = Reference.from_manifest(image_dir() / "manifest.json")
        with zone.session(root=Factory(self.home).root_cert(), reference=reference) as session:
            yield session

    def reboot(self, *, kill: bool) -> None:
        self.booted.machine.stop(kill=kill)
        self.booted.machine.launch(load_image(), Device.open(NAME, self.home))


@pytest.fixture(scope="module")
def secrets(sez_zone_factory: Callable[..., BootedZone], sez_home: SezHome,
            tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    shared = Secrets(sez_zone_factory(NAME), sez_home, tmp_path_factory.mktemp("secrets"))
    with shared.zone() as zone:
        zone.enroll(owner_spki(shared.owner))
        zone.load(shared.reader(2))
    return shared


def read(zone: SyncZone, applet: str, name: str) -> bytes:
    """What ``applet`` gets for secret ``name``: the SHA-384 of its value."""
    return bytes(zone.run(applet, json.dumps({"name": name}).encode())["output"])


def refused(zone: SyncZone, applet: str, name: str) -> str:
    """The error code the applet got when it asked for secret ``name``."""
    with pytest.raises(AppletFailed) as failure:
        read(zone, applet, name)
    for code in ("secret-denied", "no-such-secret", "bad-blob"):
        if f"[{code}]" in failure.value.message:
            return code
    raise AssertionError(failure.value.message)


def measurement_of(zone: SyncZone, applet: str) -> bytes:
    return bytes.fromhex(next(a["measurement"] for a in zone.applets() if a["name"] == applet))


def test_put_outside_a_session_needs_one(secrets: Secrets) -> None:
    with secrets.zone() as zone:
        with pytest.raises(NeedsSession):
            zone.secret_put("db", VALUE, applet="secret-reader")
        assert zone.secret_list() == []
        assert zone.echo(b"alive") == b"alive"


def test_a_secret_reaches_the_applets_its_policy_admits(secrets: Secrets) -> None:
    owner = key_id(owner_spki(secrets.owner))
    with secrets.zone() as zone:
        exact = measurement_of(zone, "secret-reader")
        with secrets.session(zone) as session:
            put = session.secret_put("db", VALUE, applet="secret-reader", min_version=2)
            assert put == {"name": "db", "policy": {"applet": "secret-reader",
                                                    "min_version": 2, "owner": owner}}
            session.secret_put("exact", VALUE[::-1], measurement=exact)
        assert read(zone, "secret-reader", "db") == DIGEST
        assert read(zone, "secret-reader", "exact") == hashlib.sha384(VALUE[::-1]).digest()
        assert refused(zone, "secret-reader", "nothing-here") == "no-such-secret"
        listing = zone.secret_list()
        assert listing == [put, {"name": "exact", "policy": {"measurement": exact}}]
        assert all(set(entry) == {"name", "policy"} for entry in listing)
        assert VALUE not in cbor2.dumps(listing) and VALUE[::-1] not in cbor2.dumps(listing)


def test_the_value_crosses_the_host_only_inside_tls(secrets: Secrets) -> None:
    value = b"WIRE-SECRET-" + os.urandom(16).hex().encode()
    reference = Reference.from_manifest(image_dir() / "manifest.json")

    async def main() -> bytes:
        recording = RecordingZone(secrets.booted.url, timeout=60)
        async with recording:
            async with await recording.session(root=Factory(secrets.home).root_cert(),
                                               reference=reference) as session:
                await session.secret_put("wire", value, applet="secret-reader")
            run = await recording.run("secret-reader", json.dumps({"name": "wire"}).encode())
        assert bytes(run["output"]) == hashlib.sha384(value).digest()
        return bytes(recording.wire)

    wire = asyncio.run(asyncio.wait_for(main(), 120))
    assert b"secret-reader" in wire  # the recording sees what is in clear
    assert value not in wire and value.hex().encode() not in wire


def test_bad_puts_are_refused_typed_and_change_nothing(secrets: Secrets) -> None:
    other = b"the host's own value"
    with secrets.zone() as zone:
        with secrets.session(zone) as session:
            for policy in ({"applet": "nobody"}, {"applet": "secret-reader", "min_version": 3},
                           {"measurement": os.urandom(48)}):
                with pytest.raises(PolicyUnmatched):
                    session.secret_put("unmatched", VALUE, **policy)
            with pytest.raises(SecretExists):
                session.secret_put("db", other, applet="secret-reader")
            with pytest.raises(SecretExists):
                session.secret_put("exact", other, measurement=os.urandom(48))
            for name in ("", "x" * 65, "x" * 20_000, "../etc", "a b"):
                with pytest.raises(BadArgs) as failure:
                    session.secret_put(name, VALUE, applet="secret-reader")
                assert "1 to 64" in failure.value.message
            for value in (b"", bytes(secret.VALUE_MAX + 1), bytes(1 << 20)):
                with pytest.raises(BadArgs, match=f"not {len(value)}"):
                    session.secret_put("sized", value, applet="secret-reader")
        assert [s["name"] for s in zone.secret_list()] == ["db", "exact", "wire"]
        assert read(zone, "secret-reader", "db") == DIGEST, "the first value stays"
        assert zone.echo(b"alive") == b"alive"


def test_other_applets_and_versions_are_refused(secrets: Secrets) -> None:
    """Another applet; a lower version already running when the secret is put (rollback keeps
    any other lower version from loading); a higher version for a measurement policy."""
    with secrets.zone() as zone:
        zone.load(secrets.reader(5, name="secret-reader-b"))
        assert refused(zone, "secret-reader-b", "db") == "secret-denied"
        assert refused(zone, "secret-reader-b", "exact") == "secret-denied"

        job = zone.submit("secret-reader", json.dumps({"name": "late", "poll": 45}).encode())
        deadline = time.monotonic() + 30
        while next(j["state"] for j in zone.jobs() if j["job"] == job["job"]) != "running":
            assert time.monotonic() < deadline, zone.jobs()
            time.sleep(0.2)
        zone.load(secrets.reader(3))  # the version 2 job goes on running
        with secrets.session(zone) as session:
            session.secret_put("late", VALUE, applet="secret-reader", min_version=3)
        answer = zone.result(job["job"], wait=50)
        zone.ack(job["job"])
        assert answer["state"] == "failed", answer
        assert "[secret-denied]" in answer["error"]["message"]
        assert "secret-reader v2" in answer["error"]["message"]
        assert read(zone, "secret-reader", "late") == DIGEST  # version 3
        assert read(zone, "secret-reader", "db") == DIGEST  # min_version 2
        assert refused(zone, "secret-reader", "exact") == "secret-denied"  # not v2's build


def test_secrets_survive_a_reboot_and_a_power_cut(secrets: Secrets) -> None:
    secrets.reboot(kill=False)
    with secrets.zone() as zone:
        assert read(zone, "secret-reader", "db") == DIGEST
        assert read(zone, "secret-reader", "late") == DIGEST
        with secrets.session(zone) as session:
            session.secret_put("cut", VALUE, applet="secret-reader")
    secrets.reboot(kill=True)  # the put was answered: it is in BBRAM
    with secrets.zone() as zone:
        assert [s["name"] for s in zone.secret_list()] == ["cut", "db", "exact", "late", "wire"]
        assert zone.info()["bbram"] == "ok"
        assert read(zone, "secret-reader", "cut") == DIGEST
        assert read(zone, "secret-reader", "db") == DIGEST


def sez(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_driver.cli", *args], capture_output=True,
                          text=True, timeout=180)


def test_the_cli_puts_in_a_session_and_lists_no_value(secrets: Secrets, tmp_path: Path) -> None:
    value_file = tmp_path / "value"
    value_file.write_bytes(VALUE)
    put = sez("secret", "put", NAME, "from-cli", "--value-file", str(value_file),
              "--to-applet", "secret-reader", "--min-version", "3", "--json")
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["policy"]["min_version"] == 3
    again = sez("secret", "put", NAME, "from-cli", "--value-file", str(value_file),
                "--to-applet", "secret-reader")
    assert again.returncode == 1 and "secret-exists" in again.stderr
    listed = sez("secret", "list", NAME, "--json")
    assert listed.returncode == 0, listed.stderr
    names = [s["name"] for s in json.loads(listed.stdout)]
    assert names == ["cut", "db", "exact", "from-cli", "late", "wire"]
    text = sez("secret", "list", NAME)
    assert "from-cli  for secret-reader v3 or later" in text.stdout
    audit = sez("audit", NAME, "--json")  # every put is an entry: name and policy
    assert audit.returncode == 0, audit.stderr
    events = [e["event"] for e in json.loads(audit.stdout)["entries"]]
    assert {"kind": "secret", "name": "from-cli", "applet": "secret-reader", "min_version": 3,
            "owner": key_id(owner_spki(secrets.owner)).hex()} in events
    assert [e["name"] for e in events if e["kind"] == "secret"] == [
        "db", "exact", "wire", "late", "cut", "from-cli"]
    for output in (put.stdout, listed.stdout, text.stdout, audit.stdout):
        assert VALUE.decode() not in output and VALUE.hex() not in output
    with secrets.zone() as zone:
        assert read(zone, "secret-reader", "from-cli") == DIGEST


def test_another_owner_is_refused(secrets: Secrets) -> None:
    """After a handover, the new owner's applet of the same name reads none of the secrets
    put for the old owner's; what is put now is for the new owner."""
    with secrets.zone() as zone:
        state = zone.owner()
        successor = owner_spki(secrets.successor)
        zone.enroll(successor, enroll_authorization(secrets.owner, successor,
                                                    bytes(state["ueid"]), state["epoch"]))
        zone.load(secrets.reader(4, key=secrets.successor))
        for name in ("db", "late", "cut", "exact"):
            assert refused(zone, "secret-reader", name) == "secret-denied", name
        with secrets.session(zone) as session:
            put = session.secret_put("db-2", VALUE, applet="secret-reader", min_version=4)
        assert put["policy"]["owner"] == key_id(successor)
        assert read(zone, "secret-reader", "db-2") == DIGEST
        assert zone.echo(b"alive") == b"alive"
        assert len(zone.secret_list()) == 7
