"""Warm applets (manifest ``warm = true``) on a real zone: a long-lived worker serves the
applet's jobs, with receipts as usual; what it gives up (jobs of the applet share memory);
limits still end a job, whose worker is then replaced; jobs in flight get workers of their
own; a cold applet never shares a warm one's process. Batch jobs (``run_batch``), warm and
cold: one job over many inputs, one receipt over all."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.factory import Factory
from emulator.paths import SezHome
from firmware.abi import cose
from firmware.abi.errors import AppletFailed, BadArgs
from firmware.abi.receipt import BATCH_MAX
from firmware.runner.runner import WARM_UID_BASE
from host_driver import SyncZone
from host_driver.lifecycle import BootedZone
from host_driver.owner import build_applet, generate_owner_key, owner_spki
from host_driver.verifier import VerificationError, verify_receipt

pytestmark = pytest.mark.e2e
APPLETS = Path(__file__).parent.parent / "applets"


@pytest.fixture(scope="module")
def booted(sez_zone_factory: Callable[..., BootedZone],
           tmp_path_factory: pytest.TempPathFactory) -> BootedZone:
    """The zone, its owner enrolled and the applets loaded; no driver holds its channel."""
    owner: ec.EllipticCurvePrivateKey = generate_owner_key(
        tmp_path_factory.mktemp("owner") / "owner.pem")
    zone = sez_zone_factory("warm-zone")
    with SyncZone(zone.url, timeout=60) as client:
        client.enroll(owner_spki(owner))
        for applet in ("warm", "slow"):
            client.load(build_applet(APPLETS / applet, owner))
    return zone


@pytest.fixture
def zone(booted: BootedZone) -> Iterator[SyncZone]:
    with SyncZone(booted.url, timeout=60) as client:
        yield client


def count(zone: SyncZone) -> dict[str, Any]:
    return dict(json.loads(zone.run("warm", b"count")["output"]))


def test_one_worker_serves_the_jobs_with_receipts(zone: SyncZone, sez_home: SezHome) -> None:
    first = count(zone)
    answers = [zone.run("warm", b"count", nonce=bytes([i])) for i in range(3)]
    seen = [json.loads(a["output"]) for a in answers]
    assert {s["pid"] for s in seen} == {first["pid"]}
    assert first["uid"] >= WARM_UID_BASE  # never a cold job's uid (20000-29999)
    assert [s["count"] for s in seen] == [first["count"] + i for i in (1, 2, 3)]
    root = Factory(sez_home).root_cert()
    for i, answer in enumerate(answers):
        verify_receipt(answer["receipt"], input=b"count", output=answer["output"],
                       nonce=bytes([i]), root=root)
    assert len(zone.run("warm", b"sign")["output"]) > 64  # the applet's key, as in a cold job


def test_what_a_warm_applet_gives_up_its_jobs_share_memory(zone: SyncZone) -> None:
    zone.run("warm", b"remember:the previous job's input")
    assert zone.run("warm", b"recall")["output"] == b"the previous job's input"


def test_a_failing_job_leaves_its_worker_serving(zone: SyncZone) -> None:
    before = count(zone)
    with pytest.raises(AppletFailed, match="asked to fail"):
        zone.run("warm", b"raise")
    after = count(zone)
    assert after["pid"] == before["pid"] and after["count"] == before["count"] + 2


@pytest.mark.parametrize("behaviour, says", [("spin", "CPU time"),
                                             ("sleep", "wall_seconds")])
def test_a_limit_ends_the_job_and_a_new_worker_takes_over(zone: SyncZone, behaviour: str,
                                                         says: str) -> None:
    before = count(zone)
    with pytest.raises(AppletFailed, match=says):
        zone.run("warm", behaviour.encode(), timeout=60)
    after = count(zone)
    assert after["pid"] != before["pid"] and after["count"] == 1
    assert zone.run("warm", b"recall")["output"] == b""  # nothing kept across workers


def test_jobs_in_flight_get_workers_of_their_own_and_cold_jobs_stay_apart(
        zone: SyncZone) -> None:
    jobs = [zone.submit("warm", b"count")["job"] for _ in range(8)]
    slow = zone.submit("slow", b"0:cold")["job"]
    results = [zone.result(job, wait=60) for job in jobs]
    assert all(r["state"] == "done" for r in results), results
    pids = {json.loads(r["output"])["pid"] for r in results}
    assert 1 <= len(pids) <= 4  # the monitor runs at most 4 jobs at once
    assert zone.result(slow, wait=60)["state"] == "done"
    for job in [*jobs, slow]:
        zone.ack(job)
    assert zone.info()["jobs"]["active"] == 0


def test_receipts_of_jobs_that_finish_together_share_one_signature(zone: SyncZone,
                                                                   sez_home: SezHome) -> None:
    """Layer 0 signs the receipts of the jobs that finish while it signs in one tree
    (abi.receipt): every receipt verifies alone, each signature's tree holds exactly the
    receipts that carry it, and the zone counts one signature for each."""
    before = zone.info()["receipt_signatures"]
    jobs = [zone.submit("warm", b"count")["job"] for _ in range(24)]
    results = [zone.result(job, wait=60) for job in jobs]
    root = Factory(sez_home).root_cert()
    trees: dict[bytes, list[int]] = collections.defaultdict(list)
    for result in results:
        checked = verify_receipt(result["receipt"], input=b"count", output=result["output"],
                                 nonce=b"", root=root)
        trees[cose.decode_sign1(result["receipt"]).signature].append(checked.signed_together)
    assert all(sizes == [len(sizes)] * len(sizes) for sizes in trees.values()), trees
    assert zone.info()["receipt_signatures"] - before == len(trees)
    for job in jobs:
        zone.ack(job)


@pytest.mark.parametrize("applet", ["warm", "slow"])
def test_a_batch_job_runs_every_input_under_one_receipt(zone: SyncZone, sez_home: SezHome,
                                                        applet: str) -> None:
    """A batch (warm or cold applet): one job, the outputs in order, one receipt over the
    lists, which fails for one input, another order, or another count."""
    inputs = [b"0:%d" % i for i in range(20)] if applet == "slow" else [b"a", b"count", b"c"]
    answer = zone.run_batch(applet, inputs, nonce=b"batch")
    outputs = [bytes(o) for o in answer["outputs"]]
    assert len(outputs) == len(inputs)
    if applet == "slow":
        assert outputs == inputs
    else:  # one process ran the three in turn
        assert outputs[0] == b"a" and outputs[2] == b"c"
        assert json.loads(outputs[1])["pid"] == count(zone)["pid"]
    root = Factory(sez_home).root_cert()
    result = verify_receipt(answer["receipt"], input=inputs, output=outputs, nonce=b"batch",
                            root=root)
    assert result.batch == len(inputs)
    for wrong_input, wrong_output, check in ((inputs[0], outputs[0], "input"),
                                             (inputs[::-1], outputs, "input"),
                                             (inputs, outputs[:-1], "output")):
        with pytest.raises(VerificationError) as failure:
            verify_receipt(answer["receipt"], input=wrong_input, output=wrong_output,
                           nonce=b"batch", root=root)
        assert failure.value.check == check


def test_a_single_jobs_receipt_is_not_a_batchs(zone: SyncZone, sez_home: SezHome) -> None:
    answer = zone.run("warm", b"a")
    with pytest.raises(VerificationError) as failure:
        verify_receipt(answer["receipt"], input=[b"a"], output=[b"a"], nonce=b"",
                       root=Factory(sez_home).root_cert())
    assert failure.value.check == "input"


def test_bad_batches_are_refused_and_a_failing_input_fails_the_batch(zone: SyncZone) -> None:
    for inputs in ([], ["text"], [b"x"] * (BATCH_MAX + 1)):
        with pytest.raises(BadArgs):
            zone.run_batch("warm", inputs)
    with pytest.raises(AppletFailed, match="asked to fail"):
        zone.run_batch("warm", [b"a", b"raise", b"c"])
    assert [bytes(o) for o in zone.run_batch("warm", [b"ok"])["outputs"]] == [b"ok"]


def test_the_cli_runs_and_verifies_a_batch(booted: BootedZone, tmp_path: Path) -> None:
    """``sez run`` with --input given twice: one batch job, outputs in -o DIR as 1, 2;
    ``sez verify-receipt`` with both lists accepts its receipt, and refuses the wrong order."""
    inputs = []
    for number, data in enumerate((b"first", b"second"), 1):
        inputs.append(tmp_path / f"in{number}")
        inputs[-1].write_bytes(data)
    out, receipt = tmp_path / "out", tmp_path / "receipt"
    ran = sez("run", booted.name, "warm", "--input", str(inputs[0]), "--input", str(inputs[1]),
              "--nonce", "ab", "-o", str(out), "--receipt", str(receipt))
    assert ran.returncode == 0, ran.stderr
    assert [(out / n).read_bytes() for n in ("1", "2")] == [b"first", b"second"]
    pairs = ["--input", str(inputs[0]), "--output", str(out / "1"),
             "--input", str(inputs[1]), "--output", str(out / "2")]
    verified = sez("verify-receipt", str(receipt), *pairs, "--nonce", "ab")
    assert verified.returncode == 0 and "receipt verified" in verified.stdout, verified.stderr
    swapped = sez("verify-receipt", str(receipt), *pairs[4:], *pairs[:4], "--nonce", "ab")
    assert swapped.returncode != 0 and "input" in swapped.stderr
    detached = sez("run", booted.name, "warm", "--input", str(inputs[0]), "--input",
                   str(inputs[1]), "--detach")
    assert detached.returncode == 2 and "drop --detach" in detached.stderr


def sez(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_driver.cli", *args], capture_output=True,
                          text=True, timeout=180)
