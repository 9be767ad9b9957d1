"""The `sez` command's lifecycle against real QEMU: boot, status, ping, stop, failures."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import cbor2
import pytest

from emulator.machine import Machine
from emulator.paths import SezHome
from host_driver import ChannelClosed, Zone
from host_driver.lifecycle import qemu_processes

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
    assert booted["running"] is True and booted["channel"].startswith("unix:")
    assert booted["hello"]["boot_counter"] == 1
    try:
        again = sez("boot", "cli-zone")
        assert "already running" in one_line_error(again)

        status = json.loads(sez("status", "cli-zone", "--json").stdout)
        assert status["running"] is True and status["pid"] == booted["pid"]
        assert status["qemu_status"] == "running" and status["template"] is None  # cold
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
            # The machine paused: the request stays unanswered, however fast the channel.
            await asyncio.to_thread(Machine("plug-zone", sez_home).qmp, "stop")
            request = asyncio.ensure_future(zone.echo(b"q" * 4096, timeout=120))
            await asyncio.sleep(0.2)
            assert not request.done()
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
    assert sez("device", "new", "cli-debug-zone").returncode == 0
    try:
        boot = sez("boot", "cli-debug-zone", "--debug", "--json")
        assert boot.returncode == 0, boot.stderr
        assert json.loads(boot.stdout)["hello"]["debug"] is True
    finally:
        sez("stop", "cli-debug-zone", "--kill")


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


APPLETS = Path(__file__).parent.parent / "applets"


@pytest.fixture(scope="module")
def owned_zone(sez_home: SezHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A zone booted with the CLI, owned, with the null applet loaded (audit entries 1, 2)."""
    name, tmp = "cli-wait-zone", tmp_path_factory.mktemp("cli-wait")
    assert sez("device", "new", name).returncode == 0
    booted = sez("boot", name)
    assert booted.returncode == 0, booted.stderr
    try:
        key, package = tmp / "owner.pem", tmp / "null.sez"
        assert sez("owner", "keygen", "-o", str(key)).returncode == 0
        assert sez("owner", "enroll", name, "--key", str(key)).returncode == 0
        assert sez("applet", "build", str(APPLETS / "null"), "--key", str(key), "-o",
                   str(package)).returncode == 0
        loaded = sez("load", name, str(package))
        assert loaded.returncode == 0, loaded.stderr
        yield name
    finally:
        sez("stop", name, "--kill")
    assert qemu_processes(sez_home.run_dir(name)) == []


def detached(name: str, data: bytes, tmp_path: Path) -> str:
    source = tmp_path / "input.bin"
    source.write_bytes(data)
    queued = sez("run", name, "null", "--input", str(source), "--detach")
    assert queued.returncode == 0, queued.stderr
    return queued.stdout.strip()


def test_result_waits_longer_than_the_zone_limit(owned_zone: str, tmp_path: Path) -> None:
    job = detached(owned_zone, b"fast", tmp_path)
    out = tmp_path / "out.bin"
    started = time.monotonic()
    fetched = sez("result", owned_zone, job, "--wait", "90", "-o", str(out))
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_bytes() == b"fast"
    assert time.monotonic() - started < 60  # it returned once the job was final
    assert "no job" in one_line_error(sez("result", owned_zone, job))  # acknowledged
    helped = " ".join(sez("result", "--help").stdout.split())
    assert "--wait SECONDS wait up to this long for the job to finish" in helped


def test_audit_without_anchor_after_ack_starts_at_the_head(owned_zone: str) -> None:
    first = sez("audit", owned_zone, "--ack", "--json")
    assert first.returncode == 0, first.stderr
    seqs = [e["seq"] for e in json.loads(first.stdout)["entries"]]
    assert seqs[:2] == [1, 2]  # the enrolment and the load
    again = sez("audit", owned_zone)
    assert again.returncode == 0, again.stderr
    assert (f"no anchor: starting at entry {seqs[-1]} that the evidence names; earlier "
            "entries were acknowledged before and cannot be checked") in again.stdout
    listed = json.loads(sez("audit", owned_zone, "--json").stdout)
    assert (listed["entries"], listed["start"], listed["anchor"]["seq"]) == ([], seqs[-1],
                                                                            seqs[-1])


def test_unwritable_output_is_one_line(owned_zone: str, tmp_path: Path) -> None:
    for command in (["attest", owned_zone, "--nonce", "00" * 16, "-o", "/nonexistent-dir/x"],
                    ["owner", "keygen", "-o", "/proc/x"]):
        failed = sez(*command)
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
        assert one_line_error(failed).endswith(": No such file or directory")
    # a result that cannot be written is not acknowledged: it stays in the zone
    job = detached(owned_zone, b"kept", tmp_path)
    failed = sez("result", owned_zone, job, "--wait", "30", "-o", "/nonexistent-dir/out")
    assert one_line_error(failed) == \
        "sez: error: /nonexistent-dir/out: No such file or directory"
    assert sez("result", owned_zone, job, "-o", str(tmp_path / "out")).returncode == 0
    assert (tmp_path / "out").read_bytes() == b"kept"


def test_a_frozen_zone_is_one_line_with_qemu_state_and_recovery(owned_zone: str,
                                                                 sez_home: SezHome) -> None:
    machine = Machine(owned_zone, sez_home)
    machine.qmp("stop")
    try:
        line = one_line_error(sez("ping", owned_zone, "--timeout", "3", timeout=60))
    finally:
        machine.qmp("cont")
    assert f"zone {owned_zone!r} did not answer" in line
    assert "QEMU: paused" in line and "last console line: " in line
    assert line.endswith(f"to recover: sez stop {owned_zone} --kill, then sez boot "
                         f"{owned_zone} (the zone keeps its state)")
    assert sez("ping", owned_zone).returncode == 0  # and it goes on once QEMU runs again


def test_a_boot_that_never_answers_is_one_line_with_qemu_state(sez_home: SezHome) -> None:
    assert sez("device", "new", "paused-zone").returncode == 0
    try:  # QEMU -S: the machine exists but its CPUs never start
        line = one_line_error(sez("boot", "paused-zone", "--timeout", "5",
                                  env={"SEZ_QEMU_ARGS": "-S"}, timeout=120))
    finally:
        sez("stop", "paused-zone", "--kill")
    assert "did not answer hello within 5 s (QEMU: prelaunch)" in line
    assert "killed it: sez boot paused-zone starts it again" in line
    assert qemu_processes(sez_home.run_dir("paused-zone")) == []
