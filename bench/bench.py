"""`make bench`: the channel's speed, as medians of several runs.

Figures:
  boot       cold boot-to-hello (QEMU launch until the zone answers hello), seconds
  rtt        null request round trip (echo of b""), p50 and p99, milliseconds
  h2z / z2h  throughput host-to-zone (op sink) and zone-to-host (op source), MB/s
  attest     attestation round trip (evidence for a fresh nonce), milliseconds
  verify     appraising that evidence on the host (chain, COSE, claims), milliseconds
  load       loading a signed 100 KiB applet (signature, format, BBRAM commit), milliseconds
  jobs/s     null applet jobs (with receipts), one at a time and 4 in flight
  job/echo   a null job's round trip over a null request's (what isolation + receipt cost)
  warm       the same for the null applet served by a warm worker (manifest warm = true)
  batched    null inputs per second as batch jobs (run_batch: BATCH inputs, one receipt)
  steps      where a null job's time goes in the zone (the monitor's stats: job_phases_ms)
  detached   detached null jobs per second (submitted pipelined, until all are done)
  backlog    seconds to fetch and acknowledge a backlog of finished results after reconnect
  tamper     a trip of the tamper line on a zone with state: the zone's milliseconds from
             reading it to zeroised, the host's from writing it to the answer, and the
             hardware's wipe of fuses and BBRAM disk (fresh devices, one trip each)
  session    an attested session: the TLS 1.3 handshake (+ hello) into the zone; opening one
             whole (+ evidence and its appraisal); a null request and a null job inside one,
             against the same on the plain channel (ratio)

Baseline, measured in the same run: the very same monitor code and client, with the monitor
running natively on the host behind a PTY pair instead of inside QEMU. The ratio zone/native
is what the emulated hardware (TCG, virtio-serial, QEMU's chardev) costs.
Results are printed and written to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from emulator.factory import Factory
from emulator.image import load_image
from emulator.paths import SezHome
from firmware.abi.jobs import FINAL, JobState
from host_driver import Zone
from host_driver.lifecycle import booted
from host_driver.owner import build_applet, generate_owner_key, owner_spki
from host_driver.relay.tls import client_context
from host_driver.verifier import Reference, verify_evidence

MB = 1_000_000
CHUNK = 4 << 20
#: Inputs in one batch job.
BATCH = 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def attest_figures(url: str, root: Any, reference: Reference,
                         runs: int) -> dict[str, float]:
    async with await Zone.connect(url, timeout=60) as zone:
        await zone.attest(os.urandom(32))  # warm up (and wait for layer 0)
        attest_ms, verify_ms = [], []
        for _ in range(runs):
            nonce = os.urandom(32)
            t = time.perf_counter()
            evidence = await zone.attest(nonce)
            attest_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            verify_evidence(evidence, nonce=nonce, root=root, reference=reference)
            verify_ms.append((time.perf_counter() - t) * 1000)
    return {"attest_ms": statistics.median(attest_ms), "verify_ms": statistics.median(verify_ms)}


async def applet_figures(url: str, tmp: Path, runs: int, jobs: int) -> dict[str, Any]:
    key = generate_owner_key(tmp / "owner.pem")
    null = Path(__file__).parent.parent / "tests" / "applets" / "null"
    big = tmp / "big"
    shutil.copytree(null, big)
    (big / "data.bin").write_bytes(os.urandom(100 * 1024))
    async with await Zone.connect(url, timeout=120) as zone:
        await zone.enroll(owner_spki(key))
        await zone.load(build_applet(null, key))
        load_ms = []
        for version in range(1, runs + 1):
            manifest = (null / "manifest.toml").read_text().replace("version = 1",
                                                                   f"version = {version}")
            (big / "manifest.toml").write_text(manifest.replace('name = "null"', 'name = "big"'))
            signed = build_applet(big, key)
            t = time.perf_counter()
            await zone.load(signed)
            load_ms.append((time.perf_counter() - t) * 1000)
        warm = tmp / "null-warm"  # the same applet, served by a warm worker
        shutil.copytree(null, warm)
        (warm / "manifest.toml").write_text((null / "manifest.toml").read_text().replace(
            'name = "null"', 'name = "null-warm"') + "warm = true\n")
        await zone.load(build_applet(warm, key))
        rates: dict[str, tuple[float, float]] = {}
        for applet in ("null", "null-warm"):
            for _ in range(5):  # warm up
                await zone.run(applet, b"")
            t = time.perf_counter()
            for _ in range(jobs):
                await zone.run(applet, b"")
            sequential = jobs / (time.perf_counter() - t)
            if applet == "null":
                phases = (await zone.stats())["job_phases_ms"]  # the jobs just run
            t = time.perf_counter()
            await asyncio.gather(*(zone.run(applet, b"") for _ in range(jobs)))
            rates[applet] = (sequential, jobs / (time.perf_counter() - t))
        (sequential, concurrent), (warm_sequential, warm_concurrent) = rates.values()
        batched = {}
        for applet in ("null", "null-warm"):  # BATCH inputs a request, one receipt for them
            t = time.perf_counter()
            for _ in range(5):
                await zone.run_batch(applet, [b""] * BATCH)
            batched[applet] = 5 * BATCH / (time.perf_counter() - t)
        job_ms = 1000 / sequential
        t = time.perf_counter()
        for _ in range(200):
            await zone.request("echo", {"data": b""})
        echo_ms = (time.perf_counter() - t) * 1000 / 200
    return {"load_100k_ms": statistics.median(load_ms), "jobs_per_s_sequential": sequential,
            "jobs_per_s_concurrent": concurrent, "job_over_echo": job_ms / echo_ms,
            "warm_jobs_per_s_sequential": warm_sequential,
            "warm_jobs_per_s_concurrent": warm_concurrent,
            "warm_job_over_echo": 1000 / warm_sequential / echo_ms, "job_phases_ms": phases,
            "batched_inputs_per_s": batched["null"],
            "warm_batched_inputs_per_s": batched["null-warm"]}


async def session_figures(url: str, root: Any, reference: Reference, runs: int,
                          jobs: int) -> dict[str, float]:
    """What an attested session costs: opening one, and a request or a job inside it."""
    async with await Zone.connect(url, timeout=60) as zone:
        await (await zone.session(root=root, reference=reference)).close()  # warm up
        handshake_ms, open_ms = [], []
        for _ in range(runs):
            tunnel = await zone.tunnel()
            bare = Zone(tunnel.url, timeout=60, heartbeat=None, tls=(tunnel, client_context(root)))
            t = time.perf_counter()
            await bare.open()
            handshake_ms.append((time.perf_counter() - t) * 1000)
            await bare.close()
            t = time.perf_counter()
            session = await zone.session(root=root, reference=reference)
            open_ms.append((time.perf_counter() - t) * 1000)
            await session.close()
        async with await zone.session(root=root, reference=reference) as session:
            figures = {}
            for name, client in (("plain", zone), ("session", session)):
                for _ in range(5):  # warm up
                    await client.run("null", b"")
                t = time.perf_counter()
                for _ in range(200):
                    await client.echo(b"")
                figures[f"{name}_echo_ms"] = (time.perf_counter() - t) * 1000 / 200
                t = time.perf_counter()
                for _ in range(jobs):
                    await client.run("null", b"")
                figures[f"{name}_job_ms"] = (time.perf_counter() - t) * 1000 / jobs
    return {"handshake_ms": statistics.median(handshake_ms),
            "open_ms": statistics.median(open_ms), **figures,
            "echo_session_over_plain": figures["session_echo_ms"] / figures["plain_echo_ms"],
            "job_session_over_plain": figures["session_job_ms"] / figures["plain_job_ms"]}


async def outbox_figures(url: str, tmp: Path, backlog: int) -> dict[str, float]:
    """Detached-job throughput, then the delivery of a backlog to a host that comes back."""
    async with await Zone.connect(url, timeout=600) as zone:
        t = time.perf_counter()
        submitted = await asyncio.gather(*(zone.submit("null", b"") for _ in range(backlog)))
        jobs = [s["job"] for s in submitted]
        for job in jobs:
            while (await zone.result(job, wait=60))["state"] not in FINAL:
                pass
        detached = backlog / (time.perf_counter() - t)
    # The host was away; it comes back to a backlog of finished results.
    async with await Zone.connect(url, timeout=600) as zone:
        t = time.perf_counter()

        async def deliver(job: str) -> None:
            answer = await zone.result(job)
            assert answer["state"] == JobState.DONE, answer
            await zone.ack(job)

        await asyncio.gather(*(deliver(job) for job in jobs))
        delivered = time.perf_counter() - t
        assert await zone.jobs() == []
    return {"detached_jobs_per_s": detached, "backlog": backlog, "backlog_delivery_s": delivered}


async def channel_figures(url: str, requests: int, volume: int, runs: int) -> dict[str, float]:
    async with await Zone.connect(url, timeout=60) as zone:
        payload = os.urandom(CHUNK)
        for _ in range(200):  # warm up (under TCG, code runs faster once it is translated)
            await zone.request("echo", {"data": b""})
        for _ in range(2):
            await zone.request("sink", {"data": payload}, timeout=120)
            await zone.request("source", {"size": CHUNK}, timeout=120)
        rtts = []
        for _ in range(requests):
            t = time.perf_counter()
            await zone.request("echo", {"data": b""})
            rtts.append((time.perf_counter() - t) * 1000)
        h2z, z2h = [], []
        for _ in range(runs):
            t = time.perf_counter()
            for _ in range(volume // CHUNK):
                await zone.request("sink", {"data": payload}, timeout=120)
            h2z.append(volume / (time.perf_counter() - t) / MB)
            t = time.perf_counter()
            for _ in range(volume // CHUNK):
                await zone.request("source", {"size": CHUNK}, timeout=120)
            z2h.append(volume / (time.perf_counter() - t) / MB)
    return {
        "rtt_p50_ms": statistics.median(rtts),
        "rtt_p99_ms": percentile(rtts, 0.99),
        "h2z_MBps": statistics.median(h2z),
        "z2h_MBps": statistics.median(z2h),
    }


def native_figures(requests: int, volume: int, runs: int) -> dict[str, float]:
    """The baseline: the monitor on the host, serving the master side of a PTY pair."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import firmware.monitor.server as m, firmware.pid1.hardware as h; "
         f"m.main(h.Hardware(), fd={master}, keeper_socket='/nonexistent')"],
        pass_fds=(master,), stderr=subprocess.DEVNULL)
    os.close(master)
    try:
        return asyncio.run(channel_figures(os.ttyname(slave), requests, volume, runs))
    finally:
        proc.kill()
        proc.wait()
        os.close(slave)


def tamper_figures(home: SezHome, runs: int) -> dict[str, Any]:
    """Trip the tamper line of ``runs`` fresh zones, each with an owner and a loaded applet."""
    zone_ms, ack_ms, wipe_ms = [], [], []
    null = Path(__file__).parent.parent / "tests" / "applets" / "null"
    key = generate_owner_key(home.root / "tamper-owner.pem")
    for i in range(runs):
        Factory(home).provision(f"tamper-{i}")
        with booted(f"tamper-{i}", home=home) as zone:
            async def own() -> None:
                async with await Zone.connect(zone.url, timeout=60) as client:
                    await client.enroll(owner_spki(key))
                    await client.load(build_applet(null, key))
            asyncio.run(own())
            report = zone.machine.tamper("bench")
            assert report.zone_ms is not None and report.ack_ms is not None, report
            zone_ms.append(report.zone_ms)
            ack_ms.append(report.ack_ms)
            wipe_ms.append(report.wipe_ms)
    return {"zone_ms": statistics.median(zone_ms), "ack_ms": statistics.median(ack_ms),
            "wipe_ms": statistics.median(wipe_ms), "runs": runs,
            "zone_ms_range": [min(zone_ms), max(zone_ms)], "ack_ms_range": [min(ack_ms), max(ack_ms)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--boots", type=int, default=3, help="cold boots to time")
    ap.add_argument("--requests", type=int, default=2000, help="null requests to time")
    ap.add_argument("--mib", type=int, default=16, help="MiB moved each way per run")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs")
    ap.add_argument("--attests", type=int, default=20, help="attestations to time")
    ap.add_argument("--loads", type=int, default=5, help="100 KiB applet loads to time")
    ap.add_argument("--jobs", type=int, default=40, help="null jobs per throughput figure")
    ap.add_argument("--sessions", type=int, default=10, help="attested sessions to open")
    ap.add_argument("--tampers", type=int, default=3, help="fresh zones to trip the tamper line of")
    ap.add_argument("--backlog", type=int, default=1000, help="finished results to deliver")
    args = ap.parse_args()
    volume = args.mib << 20

    with tempfile.TemporaryDirectory(prefix="sez-bench-") as tmp:
        home = SezHome(Path(tmp))
        os.environ["SEZ_HOME"] = tmp
        Factory(home).init()
        Factory(home).provision("bench")
        boots = []
        for i in range(args.boots):
            with booted("bench", home=home) as bench:  # killed at the end of each block
                boots.append(bench.boot_seconds)
                print(f"boot {i + 1}: {bench.boot_seconds:.2f} s", file=sys.stderr)
                if i < args.boots - 1:
                    continue
                # The last boot stays up for the figures.
                zone = asyncio.run(channel_figures(bench.url, args.requests, volume, args.runs))
                identity = asyncio.run(attest_figures(
                    bench.url, Factory(home).root_cert(),
                    Reference.from_manifest(load_image().directory / "manifest.json"),
                    args.attests))
                applet = asyncio.run(applet_figures(bench.url, Path(tmp), args.loads,
                                                    args.jobs))
                sessions = asyncio.run(session_figures(
                    bench.url, Factory(home).root_cert(),
                    Reference.from_manifest(load_image().directory / "manifest.json"),
                    args.sessions, args.jobs))
                outbox = asyncio.run(outbox_figures(bench.url, Path(tmp), args.backlog))
        tamper = tamper_figures(home, args.tampers)
    native = native_figures(args.requests, volume, args.runs)

    results: dict[str, Any] = {
        "boot_to_hello_s": {"median": statistics.median(boots), "runs": boots},
        "zone": zone,
        "native": native,
        "ratio_zone_over_native": {k: zone[k] / native[k] for k in zone},
        "attestation": identity,
        "applets": applet,
        "outbox": outbox,
        "sessions": sessions,
        "tamper": tamper,
    }
    print(f"cold boot to hello   median {statistics.median(boots):6.2f} s   "
          f"(runs: {', '.join(f'{b:.2f}' for b in boots)})")
    print(f"{'':20} {'zone (TCG)':>12} {'native':>12} {'zone/native':>12}")
    for key, label in (("rtt_p50_ms", "round trip p50 ms"), ("rtt_p99_ms", "round trip p99 ms"),
                       ("h2z_MBps", "host->zone MB/s"), ("z2h_MBps", "zone->host MB/s")):
        print(f"{label:20} {zone[key]:12.3f} {native[key]:12.3f} {zone[key] / native[key]:12.2f}")
    print(f"attest round trip    median {identity['attest_ms']:8.1f} ms   (evidence signed in the zone)")
    print(f"verify evidence      median {identity['verify_ms']:8.1f} ms   (on the host)")
    print(f"load 100 KiB applet  median {applet['load_100k_ms']:8.1f} ms")
    print(f"null jobs            {applet['jobs_per_s_sequential']:8.1f} /s one at a time, "
          f"{applet['jobs_per_s_concurrent']:.1f} /s with {args.jobs} in flight")
    print(f"null job / echo      {applet['job_over_echo']:8.1f} x (round trip ratio)")
    print(f"warm null jobs       {applet['warm_jobs_per_s_sequential']:8.1f} /s one at a time, "
          f"{applet['warm_jobs_per_s_concurrent']:.1f} /s with {args.jobs} in flight; "
          f"{applet['warm_job_over_echo']:.1f} x a null request")
    print(f"batched null jobs    {applet['batched_inputs_per_s']:8.1f} inputs/s cold, "
          f"{applet['warm_batched_inputs_per_s']:.1f} warm ({BATCH} inputs a request, "
          "one receipt a request)")
    steps = applet["job_phases_ms"]
    print("null job's steps     " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()
                                              if k != "jobs") + " ms (zone medians)")
    print(f"TLS 1.3 handshake    median {sessions['handshake_ms']:8.1f} ms   (+ hello, into the zone)")
    print(f"attested session     median {sessions['open_ms']:8.1f} ms   (handshake, evidence, appraisal)")
    print(f"null request         {sessions['session_echo_ms']:8.2f} ms in a session, "
          f"{sessions['plain_echo_ms']:.2f} ms plain: {sessions['echo_session_over_plain']:.2f} x")
    print(f"null job             {sessions['session_job_ms']:8.1f} ms in a session, "
          f"{sessions['plain_job_ms']:.1f} ms plain: {sessions['job_session_over_plain']:.2f} x")
    print(f"tamper to zeroised   median {tamper['zone_ms']:8.1f} ms in the zone "
          f"({tamper['zone_ms_range'][0]:.1f}-{tamper['zone_ms_range'][1]:.1f}), "
          f"{tamper['ack_ms']:.1f} ms trip to answer, {tamper['wipe_ms']:.1f} ms to wipe the "
          f"fuses and BBRAM disk ({tamper['runs']} zones)")
    print(f"detached null jobs    {outbox['detached_jobs_per_s']:7.1f} /s")
    print(f"deliver a backlog    {outbox['backlog_delivery_s']:8.1f} s for {outbox['backlog']} "
          "results (result + ack each, after reconnect)")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
