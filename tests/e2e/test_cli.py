"""The `sez` command's lifecycle against real QEMU: boot, status, ping, stop, failures."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import pytest

from emulator.paths import SezHome
from host_driver import ChannelClosed, Zone
from host_driver.pytest_plugin import qemu_processes

pytestmark = pytest.mark.e2e


def sez(*args: str, env: dict[str, str] | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_driver.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sez: error: ")
    return lines[0]


def test_full_lifecycle(sez_home: SezHome) -> None:
    assert sez("device", "new", "cli-zone").returncode == 0
    boot = sez("boot", "cli-zone", "--json")
    assert boot.returncode == 0, boot.stderr
    booted = json.loads(boot.stdout)
    assert booted["running"] is True and booted["channel"].startswith("/dev/pts/")
    assert booted["hello"]["boot_counter"] == 1
    try:
        again = sez("boot", "cli-zone")
        assert "already running" in one_line_error(again)

        status = json.loads(sez("status", "cli-zone", "--json").stdout)
        assert status["running"] is True and status["pid"] == booted["pid"]
        assert status["qemu_status"] == "running"
        assert status["queue"] == {"active": 0, "queued": 0, "outbox": 0, "schedules": 0,
                                   "audit": 0}
        assert "0 in the outbox" in sez("status", "cli-zone").stdout

        ping = sez("ping", "cli-zone", "--count", "20", "--json")
        assert ping.returncode == 0, ping.stderr
        measured = json.loads(ping.stdout)
        assert measured["rtt_ms"]["count"] == 20
        assert measured["info"]["boot_counter"] == 1

        console = sez("console", "cli-zone")
        assert "zone ready" in console.stdout

        stop = sez("stop", "cli-zone")
        assert stop.returncode == 0 and "powered off" in stop.stdout
        assert qemu_processes(sez_home.run_dir("cli-zone")) == []
        assert "power button pressed" in sez("console", "cli-zone").stdout
        assert "was not running" in sez("stop", "cli-zone").stdout  # idempotent

        down = sez("ping", "cli-zone")
        assert "not running" in one_line_error(down)
        assert json.loads(sez("status", "cli-zone", "--json").stdout)["running"] is False

        rebooted = json.loads(sez("boot", "cli-zone", "--json").stdout)
        assert rebooted["hello"]["boot_counter"] == 2
    finally:
        sez("stop", "cli-zone", "--kill")
    assert qemu_processes(sez_home.run_dir("cli-zone")) == []


def test_pulling_the_plug_fails_a_pending_request(sez_home: SezHome) -> None:
    assert sez("device", "new", "plug-zone").returncode == 0
    booted = json.loads(sez("boot", "plug-zone", "--json").stdout)

    async def pending_echo() -> None:
        async with await Zone.connect(booted["channel"]) as zone:
            request = asyncio.ensure_future(zone.echo(b"q" * (8 << 20), timeout=120))
            await asyncio.sleep(0.2)
            killed = await asyncio.to_thread(sez, "stop", "plug-zone", "--kill")
            assert killed.returncode == 0 and "plug pulled" in killed.stdout
            with pytest.raises(ChannelClosed):
                await asyncio.wait_for(request, 10)

    try:
        asyncio.run(pending_echo())
    finally:
        sez("stop", "plug-zone", "--kill")
    assert qemu_processes(sez_home.run_dir("plug-zone")) == []


def test_debug_zone_says_so(sez_home: SezHome) -> None:
    assert sez("device", "new", "debug-zone").returncode == 0
    try:
        boot = sez("boot", "debug-zone", "--debug", "--json")
        assert boot.returncode == 0, boot.stderr
        assert json.loads(boot.stdout)["hello"]["debug"] is True
    finally:
        sez("stop", "debug-zone", "--kill")


def test_unknown_device_is_one_line(sez_home: SezHome) -> None:
    for command in (["boot", "nosuch"], ["stop", "nosuch"], ["status", "nosuch"],
                    ["ping", "nosuch"], ["console", "nosuch"]):
        assert "no device 'nosuch'" in one_line_error(sez(*command, timeout=30))


def test_invalid_device_name_is_one_line(sez_home: SezHome) -> None:
    assert "invalid device name" in one_line_error(sez("device", "new", "../escape"))


def test_missing_image_is_one_line(sez_home: SezHome, tmp_path: Path) -> None:
    assert sez("device", "new", "imageless").returncode == 0
    proc = sez("boot", "imageless", env={"SEZ_IMAGE": str(tmp_path / "none")}, timeout=30)
    assert "no guest image" in one_line_error(proc)
    assert qemu_processes(sez_home.run_dir("imageless")) == []


def test_missing_qemu_is_one_line(sez_home: SezHome) -> None:
    assert sez("device", "new", "qemuless").returncode == 0
    proc = sez("boot", "qemuless", env={"SEZ_QEMU": "qemu-system-none"}, timeout=30)
    assert "qemu-system-none not found" in one_line_error(proc)


EXAMPLES = Path(__file__).parent.parent.parent / "docs" / "examples"


def test_trusted_code_cli(sez_home: SezHome, tmp_path: Path) -> None:
    name = "cli-applet-zone"
    assert sez("device", "new", name).returncode == 0
    assert sez("boot", name).returncode == 0
    try:
        key = tmp_path / "owner.pem"
        assert sez("owner", "keygen", "-o", str(key)).returncode == 0
        assert "refusing to overwrite" in one_line_error(sez("owner", "keygen", "-o", str(key)))
        for _ in range(2):  # enrolling the same owner again changes nothing
            enrolled = sez("owner", "enroll", name, "--key", str(key), "--json")
            assert enrolled.returncode == 0, enrolled.stderr
            assert json.loads(enrolled.stdout)["epoch"] == 1
        other = tmp_path / "other.pem"
        sez("owner", "keygen", "-o", str(other))
        assert "--authorize" in one_line_error(sez("owner", "enroll", name, "--key", str(other)))
        package = tmp_path / "aggregate.sez"
        built = sez("applet", "build", str(EXAMPLES / "aggregate"), "--key", str(key),
                    "-o", str(package), "--json")
        assert built.returncode == 0, built.stderr
        loaded = sez("load", name, str(package), "--json")
        assert loaded.returncode == 0, loaded.stderr
        assert json.loads(loaded.stdout)["measurement"] == json.loads(built.stdout)["measurement"]
        listed = sez("applets", name, "--json")
        assert [a["name"] for a in json.loads(listed.stdout)] == ["aggregate"]
        records = tmp_path / "records.jsonl"
        records.write_text("".join(json.dumps({"group": "g", "value": v}) + "\n"
                                   for v in (1, 2, 3)))
        out, receipt = tmp_path / "out.json", tmp_path / "receipt.cbor"
        ran = sez("run", name, json.loads(built.stdout)["id"], "--input", str(records),
                  "--nonce", "c0ffee", "-o", str(out), "--receipt", str(receipt))
        assert ran.returncode == 0, ran.stderr
        assert json.loads(out.read_text())["overall"]["sum"] == 6
        ok = sez("verify-receipt", str(receipt), "--input", str(records), "--output", str(out),
                 "--nonce", "c0ffee", "--json")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["applet"]["name"] == "aggregate"
        out.write_text(out.read_text().replace("6", "7"))
        bad = sez("verify-receipt", str(receipt), "--input", str(records), "--output", str(out),
                  "--nonce", "c0ffee")
        assert "verification failed: output" in one_line_error(bad)
        assert one_line_error(sez("run", name, "nosuch", "--input", str(records))) == \
            "sez: error: [no-such-applet] no loaded applet 'nosuch'"
        stranger = tmp_path / "stranger.sez"
        sez("applet", "build", str(EXAMPLES / "aggregate"), "--key", str(other), "-o",
            str(stranger))
        assert "not-owner" in one_line_error(sez("load", name, str(stranger)))
        scheduled_cli(name, key, other, records, tmp_path)
    finally:
        sez("stop", name, "--kill")


def scheduled_cli(name: str, key: Path, other: Path, records: Path, tmp_path: Path) -> None:
    """sez schedule / schedules / audit / verify-audit / unschedule on a zone with aggregate."""
    assert "not-owner" in one_line_error(sez("schedule", name, "sums", "aggregate", "--every",
                                             "1", "--input", str(records), "--key", str(other)))
    made = sez("schedule", name, "sums", "aggregate", "--every", "1", "--input", str(records),
               "--key", str(key), "--json")
    assert made.returncode == 0, made.stderr
    deadline = time.monotonic() + 60
    while True:  # the zone's clock drives the runs; poll its own count, with a deadline
        listed = json.loads(sez("schedules", name, "--json").stdout)["schedules"]
        if listed[0]["runs"] >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert listed[0]["name"] == "sums" and listed[0]["runs"] >= 3, listed
    log, anchor = tmp_path / "audit.cbor", tmp_path / "anchor.json"
    fetched = sez("audit", name, "-o", str(log), "--anchor", str(anchor), "--json")
    assert fetched.returncode == 0, fetched.stderr
    events = [e["event"] for e in json.loads(fetched.stdout)["entries"]]
    assert [e["kind"] for e in events[:3]] == ["enroll", "load", "schedule"]
    assert [e["run"] for e in events if e["kind"] == "run"][:3] == [1, 2, 3]
    assert sez("verify-audit", str(log)).returncode == 0
    saved = cbor2.loads(log.read_bytes())
    del saved["entries"][1]  # a relaying host drops the load entry
    log.write_bytes(cbor2.dumps(saved))
    assert "verification failed: sequence" in one_line_error(sez("verify-audit", str(log)))
    again = sez("audit", name, "--anchor", str(anchor), "--ack", "--json")
    assert again.returncode == 0, again.stderr
    seqs = [e["seq"] for e in json.loads(again.stdout)["entries"]]
    assert not seqs or seqs[0] == json.loads(fetched.stdout)["anchor"]["seq"] + 1
    gone = sez("unschedule", name, "sums", "--key", str(key))
    assert gone.returncode == 0, gone.stderr
    assert sez("schedules", name).stdout.strip() == "no schedules"
    jobs = sez("jobs", name).stdout
    assert "(schedule sums#1)" in jobs
