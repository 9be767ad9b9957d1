"""Zones resumed from a template (emulator.template): a zone saved at READY, before it was any
device. Each resumed zone must be the device it is started as, with randomness of its own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.board import Board
from emulator.device import Device
from emulator.errors import MachineStateError
from emulator.factory import Factory
from emulator.image import load_image
from emulator.machine import Machine
from emulator.paths import SezHome
from emulator.template import Template, template_for
from firmware.abi import cose, receipt as receipt_claims
from host_driver import SyncZone, Zone
from host_driver.lifecycle import BootedZone
from host_driver.owner import build_applet, generate_owner_key, owner_spki
from host_driver.verifier import Reference, verify_evidence, verify_receipt

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parent.parent.parent
ENTROPY = ROOT / "tests" / "applets" / "entropy"


@pytest.fixture(scope="module")
def template(sez_home: SezHome) -> Template:
    return template_for(load_image(), home=sez_home)


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> ec.EllipticCurvePrivateKey:
    return generate_owner_key(tmp_path_factory.mktemp("owner") / "owner.pem")


@pytest.fixture(scope="module")
def trust(sez_home: SezHome) -> dict[str, Any]:
    return {"root": Factory(sez_home).root_cert(),
            "reference": Reference.from_manifest(load_image().directory / "manifest.json")}


def draw(zone: BootedZone, owner: ec.EllipticCurvePrivateKey,
         trust: dict[str, Any]) -> dict[str, Any]:
    """What the zone draws at random: an applet's 32 bytes from the kernel and its new P-256
    key (OpenSSL), layer 0's salt in a receipt and its TLS key for attested sessions; with
    the zone's evidence, appraised as the device the machine was started as."""
    ueid = bytes.fromhex(str(Device.open(zone.name).info["ueid"]))

    async def go() -> dict[str, Any]:
        async with await Zone.connect(zone.url, timeout=60) as client:
            nonce = os.urandom(16)  # the first request: the kernel has not reseeded on its own
            job = await client.run("entropy", b"", nonce=nonce)
            evidence = await client.attest(nonce)
            async with await client.session(**trust) as session:
                session_key = session.attestation.session_key
        verify_receipt(job["receipt"], input=b"", output=job["output"], nonce=nonce,
                       root=trust["root"], expected_ueid=ueid)
        _, _, _, claims = receipt_claims.parse_proof(
            cose.decode_sign1(job["receipt"]).unprotected[receipt_claims.LEAF])
        appraised = verify_evidence(evidence, nonce=nonce, expected_ueid=ueid, **trust)
        return {"urandom": job["output"][:32], "openssl": job["output"][32:],
                "salt": claims[receipt_claims.SALT], "session_key": session_key,
                "evidence": appraised}

    return asyncio.run(asyncio.wait_for(go(), 180))


def test_a_template_holds_nothing_of_any_device(sez_zone_factory: Callable[..., BootedZone],
                                               sez_home: SezHome, template: Template) -> None:
    """Made before the zone read its device's fuses or disk: a device that has run on this
    host (its fuses and BBRAM in use) has no byte of its fuses in the template."""
    zone = sez_zone_factory("snapshot-cold")  # a cold boot: its fuses were read by a zone
    uds = Device.open(zone.name).fuses.read_bytes()
    assert len(uds) == 32
    for part in (template.ram, template.state):
        with part.open("rb") as f:
            tail = b""
            while chunk := f.read(1 << 24):
                assert uds not in tail + chunk, f"the device's fuses are in {part.name}"
                tail = chunk[-31:]
    board = Board.make(accel="auto", cpus=None, tcg_thread=None, memory_mb=512, debug=False)
    assert template.board == board.key(load_image())  # made for this image and board


def test_zones_resumed_from_one_template_draw_their_own_randomness(
        sez_zone_factory: Callable[..., BootedZone], template: Template,
        owner: ec.EllipticCurvePrivateKey, trust: dict[str, Any]) -> None:
    """Device A resumed twice and device B once, from the same template: every random output
    differs (kernel, OpenSSL in an applet, layer 0's receipt salt, the TLS key), each zone
    attests as its own device with the image's measurements, and A keeps its BBRAM.

    Each draws at its first request, right after hello: the kernel reseeds its CRNG on its
    own only seconds later, so a resumed zone that did not reseed at START would draw what
    the template's CRNG would have drawn, the same in every zone."""
    for name in ("snap-a", "snap-b"):  # each gets an owner and the applet, kept in BBRAM
        prepared = sez_zone_factory(name, snapshot=True)
        with SyncZone(prepared.url, timeout=60) as client:
            client.enroll(owner_spki(owner))
            client.load(build_applet(ENTROPY, owner))
        prepared.machine.stop()
    draws = []
    for name in ("snap-a", "snap-a", "snap-b"):
        zone = sez_zone_factory(name, snapshot=True)
        assert zone.machine.status().template == str(template.directory)
        draws.append(draw(zone, owner, trust))
        zone.machine.stop(kill=True)
    for field in ("urandom", "openssl", "salt", "session_key"):
        values = [d[field] for d in draws]
        assert all(isinstance(v, bytes) and v for v in values), field
        assert len(set(values)) == 3, f"two resumed zones drew the same {field}"
    a1, a2, b = (d["evidence"] for d in draws)
    assert a1.ueid == a2.ueid != b.ueid
    assert a2.boot_counter == a1.boot_counter + 1  # the device's counter, not the template's
    assert a1.applets == a2.applets == b.applets  # loaded before: each kept its BBRAM
    assert a1.measurements == b.measurements == trust["reference"].measurements


def test_a_template_resumes_only_on_its_own_board(sez_home: SezHome,
                                                 template: Template) -> None:
    """A template made for a production zone is refused for a debug zone (another board:
    the console shell's port), before QEMU starts."""
    Factory(sez_home).provision("snap-debug")
    machine = Machine("snap-debug", sez_home)
    with pytest.raises(MachineStateError, match="another image or board"):
        machine.launch(load_image(), Device.open("snap-debug", sez_home), debug=True,
                       template=template)
    assert not machine.is_running()


def test_the_cli_lists_and_clears_templates(template: Template) -> None:
    """Last in this module: it removes the module's template."""
    def sez(*args: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "host_driver.cli", *args, "--json"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    listed = sez("template", "list")["templates"]
    assert [t["directory"] for t in listed] == [str(template.directory)]
    assert listed[0]["board"] == template.board and listed[0]["ram_bytes"] > 0
    assert sez("template", "clear") == {"removed": 1}
    assert sez("template", "list") == {"templates": []}
    assert not template.directory.exists()
