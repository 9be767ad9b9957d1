"""Debug mode on one real device: booted in production, then with the debug strap, then in
production again. The debug zone is the same device (UEID, DeviceID) with other keys: another
alias key, another key for the same applet, and neither the production blob nor the production
secret opens in it; it takes a secret only under a policy that says ``debug: true``. Only the
debug zone has a console shell, and it holds no capability.

What a debug boot of a production device actually sees: its BBRAM key (from the CDI, which
the mode changes) opens nothing, so BBRAM reads ``unauthenticated`` — no owner, no applet, no
secret, not even their names — and nothing can be written over it. To go further the test
plays the host, which may swap the BBRAM file (root on the host: see the threat model): a
blank BBRAM for the debug zone, where the same owner loads the same applet, then the
production file back."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.device import BBRAM_FILE, Device
from emulator.errors import MachineStateError
from emulator.factory import Factory
from emulator.image import load_image
from emulator.paths import SezHome, image_dir
from emulator.shell import Shell
from firmware.abi.errors import AppletFailed, BbramError, DebugRefused, NoSuchApplet
from host_driver import SyncZone
from host_driver.lifecycle import BootedZone
from host_driver.owner import build_applet, owner_spki
from host_driver.verifier import Reference, VerificationError

pytestmark = pytest.mark.e2e
KEYRING = Path(__file__).parent.parent / "applets" / "keyring"
NAME = "debug-zone"
DATA = b"sealed in production"
VALUE = b"provisioned in production: the production database password"
DEBUG_VALUE = b"provisioned in debug: a test password"


@dataclass
class Modes:
    """The device, its owner and applet, and what production gave it at first."""

    booted: BootedZone
    home: SezHome
    owner: ec.EllipticCurvePrivateKey
    package: bytes
    first: dict[str, Any] = field(default_factory=dict)

    def boot(self, *, debug: bool) -> SyncZone:
        self.booted.machine.stop()
        self.booted.machine.launch(load_image(), Device.open(NAME, self.home), debug=debug)
        zone = SyncZone(self.booted.url, timeout=60, hello_timeout=90)
        assert zone.greeting["debug"] is debug
        return zone

    @contextmanager
    def session(self, zone: SyncZone, *, allow_debug: bool = False) -> Iterator[SyncZone]:
        reference = Reference.from_manifest(image_dir() / "manifest.json")
        with zone.session(root=Factory(self.home).root_cert(), reference=reference,
                          allow_debug=allow_debug) as session:
            yield session

    @property
    def bbram(self) -> Path:
        return self.home.device_dir(NAME) / BBRAM_FILE


def info(zone: SyncZone) -> dict[str, Any]:
    """``info`` once the zone has read BBRAM (``owner`` waits for that; ``info`` does not)."""
    zone.owner()
    return dict(zone.info())


def call(zone: SyncZone, **request: Any) -> bytes:
    return bytes(zone.run("keyring", json.dumps(request).encode())["output"])


def refused(zone: SyncZone, **request: Any) -> str:
    """The error code the applet got from the zone."""
    with pytest.raises(AppletFailed) as failure:
        call(zone, **request)
    for code in ("bad-blob", "no-such-secret", "secret-denied", "debug-refused"):
        if f"[{code}]" in failure.value.message:
            return code
    raise AssertionError(failure.value.message)


def alias_key(zone: SyncZone) -> bytes:
    cert = x509.load_der_x509_certificate(bytes(zone.identity()["alias_cert"]))
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def keys_of(zone: SyncZone) -> dict[str, Any]:
    identity = zone.identity()
    return {"ueid": bytes(identity["ueid"]), "device_id": bytes(identity["device_id_cert"]),
            "alias": alias_key(zone), "applet": call(zone, op="public-key")}


@pytest.fixture(scope="module")
def modes(sez_zone_factory: Callable[..., BootedZone], sez_home: SezHome,
          tmp_path_factory: pytest.TempPathFactory) -> Modes:
    owner = ec.generate_private_key(ec.SECP384R1())
    return Modes(sez_zone_factory(NAME), sez_home, owner, build_applet(KEYRING, owner))


def test_production_seals_and_provisions(modes: Modes) -> None:
    with SyncZone(modes.booted.url, timeout=60) as zone:
        assert zone.info()["debug"] is False
        zone.enroll(owner_spki(modes.owner))
        zone.load(modes.package)
        modes.first = keys_of(zone)
        modes.first["blob"] = call(zone, op="seal", data=DATA.hex())
        with modes.session(zone) as session:
            put = session.secret_put("db", VALUE, applet="keyring")
        assert "debug" not in put["policy"]
        assert call(zone, op="secret", name="db") == hashlib.sha384(VALUE).digest()
        assert call(zone, op="unseal", blob=modes.first["blob"].hex()) == DATA


def test_a_debug_boot_does_not_open_the_production_state(modes: Modes) -> None:
    with modes.boot(debug=True) as zone:
        identity = zone.identity()
        assert identity["debug"] is True
        assert bytes(identity["ueid"]) == modes.first["ueid"]
        assert bytes(identity["device_id_cert"]) == modes.first["device_id"]
        assert alias_key(zone) != modes.first["alias"]
        state = info(zone)
        assert (state["bbram"], state["owner"], state["applets"]) == ("unauthenticated", None, 0)
        assert zone.secret_list() == []  # the production secret: not even its name
        with pytest.raises(NoSuchApplet):
            call(zone, op="secret", name="db")
        with pytest.raises(BbramError, match="unauthenticated"):
            zone.enroll(owner_spki(modes.owner))  # nothing overwrites the production state
        with pytest.raises(VerificationError) as appraisal:
            with modes.session(zone):
                pass
        assert appraisal.value.check == "debug"
        with modes.session(zone, allow_debug=True) as session:
            with pytest.raises(BbramError):
                session.secret_put("db-debug", DEBUG_VALUE, applet="keyring", debug=True)


def test_a_debug_zone_derives_other_keys_for_the_same_applet(modes: Modes) -> None:
    """The host gives the debug zone a blank BBRAM; the same owner loads the same package."""
    os.replace(modes.bbram, modes.bbram.with_name("bbram.production"))
    with modes.boot(debug=True) as zone:
        state = info(zone)  # a blank BBRAM: the zone's first commit made it "ok"
        assert (state["bbram"], state["owner"], state["applets"]) == ("ok", None, 0)
        zone.enroll(owner_spki(modes.owner))
        zone.load(modes.package)
        debug = keys_of(zone)
        assert debug["ueid"] == modes.first["ueid"]
        assert debug["alias"] != modes.first["alias"]
        assert debug["applet"] != modes.first["applet"]
        assert refused(zone, op="unseal", blob=modes.first["blob"].hex()) == "bad-blob"
        modes.first["debug_blob"] = call(zone, op="seal", data=DATA.hex())
        assert call(zone, op="unseal", blob=modes.first["debug_blob"].hex()) == DATA
        assert refused(zone, op="secret", name="db") == "no-such-secret"

        with modes.session(zone, allow_debug=True) as session:
            with pytest.raises(DebugRefused) as failure:
                session.secret_put("db", DEBUG_VALUE, applet="keyring")
            assert DEBUG_VALUE.decode() not in str(failure.value)
            put = session.secret_put("db", DEBUG_VALUE, applet="keyring", debug=True)
        assert put["policy"]["debug"] is True
        assert zone.secret_list() == [put]
        assert call(zone, op="secret", name="db") == hashlib.sha384(DEBUG_VALUE).digest()


def sez(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_driver.cli", *args], capture_output=True,
                          text=True, timeout=180)


def test_the_cli_puts_into_a_debug_zone_only_when_told(modes: Modes, tmp_path: Path) -> None:
    """Still the debug zone of the test before: ``sez secret put`` appraises the evidence
    (refused: debug) unless ``--allow-debug``, which also puts debug: true in the policy."""
    value_file = tmp_path / "value"
    value_file.write_bytes(DEBUG_VALUE)
    put = ["secret", "put", NAME, "cli", "--value-file", str(value_file), "--to-applet",
           "keyring"]
    plain = sez(*put)
    assert plain.returncode == 1
    assert "verification failed: debug: the zone runs in debug mode" in plain.stderr
    allowed = sez(*put, "--allow-debug", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["policy"]["debug"] is True
    listed = sez("secret", "list", NAME)
    assert "cli  for keyring v1 or later" in listed.stdout and "debug zones too" in listed.stdout
    for output in (plain.stdout + plain.stderr, allowed.stdout, listed.stdout):
        assert DEBUG_VALUE.decode() not in output


def test_a_debug_zone_has_a_console_shell_with_no_capability(modes: Modes) -> None:
    """Still the debug zone: its console shell is root with every capability set empty, so
    fw_cfg's ports, the zone processes' memory and the kernel's stay out of reach, and BBRAM
    holds no plaintext of the secret it keeps."""
    with Shell(modes.booted.machine) as shell:
        assert shell.run("id -u") == (0, "0\n")
        status, output = shell.run("grep ^Cap /proc/self/status")
        assert status == 0 and output.count("\t0000000000000000\n") == 5, output
        for path in ("/dev/port", "/dev/mem", "/proc/1/mem", "/proc/1/environ"):
            status, output = shell.run(f"cat {path} > /dev/null")
            assert status != 0 and ("not permitted" in output or "denied" in output), output
        assert shell.run(f"grep -c '{DEBUG_VALUE.decode()}' /dev/vda") == (1, "0\n")
        assert shell.run("exit 7") == (7, "")
    assert modes.booted.machine.shell_socket.is_socket()
    through_cli = sez("shell", NAME, "--command", "echo $((6 * 7)); false")
    assert (through_cli.returncode, through_cli.stdout) == (1, "42\n"), through_cli.stderr


def test_production_again_opens_its_own_and_not_debugs(modes: Modes) -> None:
    """The production BBRAM back: the state the debug boots could not touch, the same keys."""
    os.replace(modes.bbram.with_name("bbram.production"), modes.bbram)
    with modes.boot(debug=False) as zone:
        assert info(zone)["bbram"] == "ok"
        assert keys_of(zone) == {k: modes.first[k] for k in ("ueid", "device_id", "alias",
                                                             "applet")}
        assert call(zone, op="unseal", blob=modes.first["blob"].hex()) == DATA
        assert refused(zone, op="unseal", blob=modes.first["debug_blob"].hex()) == "bad-blob"
        assert [s["name"] for s in zone.secret_list()] == ["db"]
        assert call(zone, op="secret", name="db") == hashlib.sha384(VALUE).digest()
    assert not modes.booted.machine.shell_socket.exists()
    with pytest.raises(MachineStateError, match="production zone"):
        Shell(modes.booted.machine)
    assert "only a debug zone has a console shell" in sez("shell", NAME, "-c", "id").stderr
