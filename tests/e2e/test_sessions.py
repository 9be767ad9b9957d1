"""Attested sessions against real zones: TLS 1.3 terminating in the zone, carried over the
channel by a host that cannot read it, appraised by the client before use."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Coroutine, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.factory import Factory
from emulator.image import load_image
from emulator.paths import SezHome
from firmware.abi import bulk
from firmware.abi.errors import BadArgs, NeedsSession, NoSuchSession, SessionFailed, TooManySessions
from firmware.abi.ops import Op
from firmware.monitor.sessions import MAX_SESSIONS
from host_driver import SyncZone, Zone
from host_driver.lifecycle import BootedZone
from host_driver.owner import build_applet, generate_owner_key, owner_spki
from host_driver.relay.channel import Channel, open_channel
from host_driver.relay.tls import client_context
from host_driver.relay.tunnel import Tunnel
from host_driver.verifier import Reference, VerificationError, verify_receipt

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parent.parent.parent
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))


@pytest.fixture(scope="module")
def trust(sez_home: SezHome) -> dict[str, Any]:
    return {"root": Factory(sez_home).root_cert(),
            "reference": Reference.from_manifest(load_image().directory / "manifest.json")}


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> ec.EllipticCurvePrivateKey:
    return generate_owner_key(tmp_path_factory.mktemp("owner") / "owner.pem")


@pytest.fixture(scope="module")
def tls_zone(sez_zone_factory: Callable[..., BootedZone],
             owner: ec.EllipticCurvePrivateKey) -> BootedZone:
    """A zone with an owner and the null applet (loaded over the plain channel)."""
    booted = sez_zone_factory("tls-zone")
    with SyncZone(booted.url, timeout=60) as zone:
        zone.enroll(owner_spki(owner))
        zone.load(build_applet(ROOT / "tests" / "applets" / "null", owner))
    return booted


class RecordingZone(Zone):
    """A client that keeps every byte it writes to the channel and reads from it."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.wire = bytearray()

    async def _open_channel(self) -> Channel:
        channel = await open_channel(self.url, self._on_data, self._on_lost)
        write = channel.write

        def recorded(data: bytes) -> None:
            self.wire += data
            write(data)

        channel.write = recorded  # type: ignore[method-assign]
        return channel

    def _on_data(self, data: bytes) -> None:
        self.wire += data
        super()._on_data(data)


def test_openssl_s_client_through_sez_relay(tls_zone: BootedZone, sez_home: SezHome) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (make deps)")
    relay = subprocess.Popen([sys.executable, "-m", "host_driver.cli", "relay", tls_zone.name,
                              "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert relay.stdout is not None
        line = relay.stdout.readline()  # the relay says where it listens, once it does
        assert "relaying" in line, relay.stderr.read() if relay.stderr else line
        port = line.rsplit(":", 1)[1].strip()
        client = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
             "-CAfile", str(Factory(sez_home).root_cert_path), "-verify_return_error"],
            input="", capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stdout + client.stderr
        assert "Verify return code: 0 (ok)" in client.stdout
        assert "New, TLSv1.3" in client.stdout
        assert "depth=3 O = SEZ, CN = SEZ Manufacturer Root CA" in client.stderr
        assert "CN = SEZ Session" in client.stdout
        # A client that sends garbage instead of TLS loses its connection, nothing more.
        with socket.create_connection(("127.0.0.1", int(port)), timeout=30) as garbage:
            garbage.sendall(os.urandom(512))
            garbage.shutdown(socket.SHUT_WR)
            while garbage.recv(4096):  # an alert, perhaps; then the relay closes
                pass
        # Another factory's root does not verify the zone.
        other = Factory(SezHome(Path(sez_home.root) / "other-factory"))
        other.init()
        refused = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
             "-CAfile", str(other.root_cert_path), "-verify_return_error"],
            input="", capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "certificate verify failed" in refused.stdout + refused.stderr
    finally:
        relay.terminate()
        assert relay.wait(30) == 0
    with SyncZone(tls_zone.url) as zone:  # the relay let go of the channel; the zone serves
        assert zone.info()["sessions"]["open"] == 0


def test_private_job_never_crosses_the_host_in_clear(
        tls_zone: BootedZone, trust: dict[str, Any], owner: ec.EllipticCurvePrivateKey) -> None:
    """attest -> load -> run -> receipt, all inside TLS; the recording of every byte on the
    channel holds neither the input nor the output."""
    secret_input = b"PRIVATE-INPUT-" + os.urandom(24).hex().encode()
    nonce = os.urandom(16)

    async def main() -> dict[str, Any]:
        recording = RecordingZone(tls_zone.url, timeout=30)
        async with recording:
            async with await recording.session(**trust) as session:
                assert session.attestation is not None
                evidence = await session.attest(os.urandom(16))
                assert len(evidence) > 0
                loaded = await session.load(build_applet(ROOT / "tests" / "applets" / "vault",
                                                         owner))
                assert loaded["name"] in [a["name"] for a in await session.applets()]
                result = await session.run("null", secret_input, nonce=nonce)
            plain = await recording.run("null", b"PLAIN-MARKER", nonce=nonce)
        assert b"PLAIN-MARKER" in recording.wire  # the recording sees what is in clear
        assert secret_input not in recording.wire
        assert secret_input.hex().encode() not in recording.wire
        assert plain["output"] == b"PLAIN-MARKER"
        return result

    result = run(main())
    assert result["output"] == secret_input  # the null applet echoes: the output is private too
    verify_receipt(result["receipt"], input=secret_input, output=secret_input, nonce=nonce,
                   root=trust["root"])


class TamperingTunnel(Tunnel):
    """A relay that, once armed, changes what it carries in one way."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.mutation = ""
        self.armed = False
        self.held: list[bytes] = []
        self.history: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.history.append(data)
        if not self.armed or self.mutation == "flip-incoming":
            super().write(data)
            return
        if self.mutation == "flip":
            mutated = bytearray(data)
            mutated[len(mutated) // 2] ^= 0x01
            super().write(bytes(mutated))
        elif self.mutation == "drop":
            self.mutation = "none"  # this write is lost; the next goes through
        elif self.mutation == "inject":
            super().write(os.urandom(64) + data)
        elif self.mutation == "replay":
            super().write(self.history[-2])  # an earlier record, again
            super().write(data)
        elif self.mutation == "reorder":
            if not self.held:
                self.held.append(data)
                return
            super().write(data)
            super().write(self.held.pop())
        else:
            super().write(data)

    def event(self, event: dict[str, Any]) -> None:
        if self.armed and self.mutation == "flip-incoming" and isinstance(event.get("data"),
                                                                          bytes):
            data = bytearray(event["data"])
            data[-1] ^= 0x80
            event = {**event, "data": bytes(data)}
        super().event(event)


@pytest.mark.parametrize("mutation", ["flip", "drop", "inject", "replay", "reorder",
                                      "flip-incoming"])
def test_a_tampering_relay_is_detected(tls_zone: BootedZone, trust: dict[str, Any],
                                       mutation: str) -> None:
    async def main() -> None:
        async with await Zone.connect(tls_zone.url, timeout=20) as zone:
            bystander = await zone.session(**trust)
            tunnel = await zone.tunnel(kind=TamperingTunnel)
            assert isinstance(tunnel, TamperingTunnel)
            victim = await zone.session(**trust, tunnel=tunnel)
            assert await victim.echo(b"before") == b"before"
            tunnel.mutation, tunnel.armed = mutation, True
            calls = [victim.echo(b"first"), victim.echo(b"second"), victim.echo(b"third")]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            failures = [o for o in outcomes if isinstance(o, BaseException)]
            assert failures, f"{mutation}: every call succeeded: {outcomes}"
            assert all(isinstance(f, SessionFailed) for f in failures), failures
            assert all(o in (b"first", b"second", b"third") for o in outcomes
                       if not isinstance(o, BaseException))
            with pytest.raises(SessionFailed):
                await victim.echo(b"after")
            await victim.close()
            # The zone forgot the broken session and serves the others, old and new.
            assert await bystander.echo(b"still here") == b"still here"
            async with await zone.session(**trust) as fresh:
                assert (await fresh.run("null", b"next"))["output"] == b"next"
            info = await zone.info()
            assert info["sessions"]["open"] == 1  # the bystander
            await bystander.close()

    run(main())


def test_the_client_refuses_what_it_should_not_trust(tls_zone: BootedZone, sez_home: SezHome,
                                                     trust: dict[str, Any],
                                                     tmp_path: Path) -> None:
    other_root = Factory(SezHome(tmp_path / "elsewhere")).init()
    measurements = dict(trust["reference"].measurements)
    measurements["firmware"] = bytes(48)

    async def main() -> None:
        async with await Zone.connect(tls_zone.url, timeout=20) as zone:
            with pytest.raises(VerificationError) as refused:
                await zone.session(root=other_root, reference=trust["reference"])
            assert refused.value.check == "tls-certificate"
            with pytest.raises(VerificationError) as refused:
                await zone.session(**trust, ueid=b"\x01" + bytes(16))
            assert refused.value.check == "device"
            with pytest.raises(VerificationError) as refused:
                await zone.session(root=trust["root"], reference=Reference(measurements))
            assert refused.value.check == "measurement.firmware"
            # none of those left a session open, and the next one is served
            assert (await zone.info())["sessions"]["open"] == 0
            async with await zone.session(**trust) as session:
                assert await session.echo(b"ok") == b"ok"

    run(main())


def test_a_session_keeps_its_bytes_in_its_tls(tls_zone: BootedZone, trust: dict[str, Any]) -> None:
    """The bulk window is the plain channel's: a session's request naming a span is refused,
    and its large fields travel inside the TLS (the window may carry the TLS records)."""
    big = os.urandom(bulk.WINDOW_MIN)
    window = Path(tls_zone.url.partition("?bulk=")[2])

    async def main() -> None:
        async with await Zone.connect(tls_zone.url) as zone:
            async with await zone.session(**trust) as session:
                with pytest.raises(BadArgs, match="TLS"):
                    await session.request("echo", {bulk.KEY: {"data": [0, 16]}})
                assert await session.echo(big) == big
        assert big[:64] not in window.read_bytes()

    run(main())


def test_a_debug_zone_is_refused_unless_allowed(sez_zone_factory: Callable[..., BootedZone],
                                                trust: dict[str, Any]) -> None:
    debug = sez_zone_factory("tls-debug-zone", debug=True)

    async def main() -> None:
        async with await Zone.connect(debug.url, timeout=20) as zone:
            with pytest.raises(VerificationError) as refused:
                await zone.session(**trust)
            assert refused.value.check == "debug"
            async with await zone.session(**trust, allow_debug=True) as session:
                assert session.attestation is not None and session.attestation.debug

    run(main())


def test_sessions_are_bounded_and_end_with_their_host(tls_zone: BootedZone) -> None:
    async def main() -> None:
        async with await Zone.connect(tls_zone.url, timeout=20) as zone:
            tunnels = [await zone.tunnel() for _ in range(MAX_SESSIONS)]
            with pytest.raises(TooManySessions):
                await zone.tunnel()
            tunnels.pop().close()
            await zone.echo(b"")  # the close went first
            tunnels.append(await zone.tunnel())
            with pytest.raises(NoSuchSession):
                await zone.request(Op.SESSION_DATA, {"session": 10**6, "data": b"x"})
        # a new host session (hello) ends the old host's sessions
        async with await Zone.connect(tls_zone.url, timeout=20) as zone:
            assert (await zone.info())["sessions"]["open"] == 0
            with pytest.raises(NoSuchSession):
                await zone.request(Op.SESSION_DATA, {"session": tunnels[0].number,
                                                     "data": b"x"})

    run(main())


def test_cli_run_private(tls_zone: BootedZone, tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.write_bytes(b"private via the CLI")
    out = subprocess.run([sys.executable, "-m", "host_driver.cli", "run", tls_zone.name, "null",
                          "--input", str(data), "--private", "-o", str(tmp_path / "out"),
                          "--receipt", str(tmp_path / "receipt")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out").read_bytes() == b"private via the CLI"
    verified = subprocess.run([sys.executable, "-m", "host_driver.cli", "verify-receipt",
                               str(tmp_path / "receipt"), "--input", str(data), "--output",
                               str(tmp_path / "out"), "--nonce", ""],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr


def test_a_client_that_skips_the_appraisal_cannot_provision(tls_zone: BootedZone,
                                                            trust: dict[str, Any]) -> None:
    """TLS alone (what a bare TLS client has) is not enough to hand the zone a secret: the
    zone wants the client to have asked for evidence in that session first."""
    async def main() -> None:
        async with await Zone.connect(tls_zone.url, timeout=20) as zone:
            tunnel = await zone.tunnel()
            bare = Zone(tunnel.url, timeout=20, heartbeat=None,
                        tls=(tunnel, client_context(trust["root"])))
            async with bare:
                with pytest.raises(NeedsSession, match="not attested yet"):
                    await bare.secret_put("skipped", b"value", applet="null")
                await bare.attest(os.urandom(16))
                put = await bare.secret_put("skipped", b"value", applet="null")
                assert put["name"] == "skipped"
            assert "skipped" in [s["name"] for s in await zone.secret_list()]

    run(main())
