"""`make bench`: the channel's speed, as medians of several runs.

Every figure is measured in --repeat independent runs (default 5) and kept as
{"median", "min", "max", "runs"}; printed as median (min-max). The zone boots --boots times
(cold boots, each a run); the last boot stays up for the runs of every other figure but the
tamper trips, which take fresh zones. A run is a separately timed set of operations:

  boot       cold boot-to-hello (QEMU launch until the zone answers hello), seconds
  resume     the same for a machine resumed from the image's template (emulator.template),
             seconds; and the seconds it took to make the template (one boot to READY)
  rtt        null request round trip (echo of b""), p50, p90 and p99 of a run's --requests,
             milliseconds; every sample of the last run is kept (the chart's distribution)
  h2z / z2h  throughput host-to-zone (op sink) and zone-to-host (op source) of CHUNK-byte
             fields, MB/s: through the control port, and through the bulk window (window_*;
             firmware.abi.bulk). The native baseline has a window too: a file in /dev/shm
  attest     attestation round trip (evidence for a fresh nonce), milliseconds
  verify     appraising that evidence on the host (chain, COSE, claims), milliseconds
  load       loading a signed 100 KiB applet (signature, format, BBRAM commit), milliseconds
  jobs/s     null applet jobs (with receipts), one at a time and --jobs in flight
  job/echo   a null job's round trip over a null request's (what isolation + receipt cost)
  warm       the same for the null applet served by a warm worker (manifest warm = true)
  batched    null inputs per second as batch jobs (run_batch: BATCH inputs, one receipt)
  steps      where a null job's time goes in the zone (the monitor's stats: job_phases_ms)
  crypto     raw P-384, P-256 and Ed25519 signatures, AES-256-GCM of 64 KiB and SHA-384 of
             1 MiB timed inside a job (bench/applets/crypto), against the same code run
             natively; and zone.sign (the applet's own key, through layer 0) over the raw
             P-384 signature in the zone
  detached   detached null jobs per second: --backlog jobs in --repeat runs, submitted
             pipelined, nothing acknowledged, so the outbox fills from run to run; and the
             rate per 100 jobs by how full the outbox was (detached_rate_by_fill; the first
             100 of a run also carry the run's submissions)
  backlog    seconds to fetch and acknowledge a backlog of --backlog finished results after
             reconnect (the first backlog is the detached jobs'; later runs refill the
             outbox with detached jobs of the warm null applet: quicker, the same results)
  tamper     a trip of the tamper line on a zone with state: the zone's milliseconds from
             reading it to zeroised, the host's from writing it to the answer, and the
             hardware's wipe of fuses and BBRAM disk (--tampers fresh devices, one trip each)
  session    an attested session: the TLS 1.3 handshake (+ hello) into the zone; opening one
             whole (+ evidence and its appraisal); a null request and a null job inside one,
             against the same on the plain channel (ratio)

Baseline, measured in the same run: the very same monitor code and client, with the monitor
running natively on the host behind a unix socket (as QEMU's chardev is) instead of inside
QEMU. The ratio zone/native
(of medians) is what the emulated hardware (TCG, virtio-serial, QEMU's chardev) costs. The
crypto baseline is the applet's code run by this Python (its `cryptography` and OpenSSL are
not the guest's), and also by --same-build-python when that has the guest's `cryptography`.
Results are printed and written to bench/results.json; bench/report.py draws
bench/results.png from it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from emulator.factory import Factory
from emulator.image import load_image
from emulator.paths import SezHome
from emulator.template import template_for
from firmware.abi.bulk import WINDOW_SIZE
from firmware.abi.jobs import TIMED_JOBS, JobState
from host_driver import SyncZone, Zone
from host_driver.lifecycle import booted
from host_driver.owner import build_applet, generate_owner_key, owner_spki
from host_driver.relay.tls import client_context
from host_driver.verifier import Reference, verify_evidence

import report

HERE = Path(__file__).parent
NULL = HERE.parent / "tests" / "applets" / "null"
CRYPTO = HERE / "applets" / "crypto"
MB = 1_000_000
CHUNK = 4 << 20
#: Inputs in one batch job, and batch jobs a run.
BATCH, BATCHES = 100, 5
#: Null requests a run of the job figures (job/echo) and of the session figures.
ECHOES = 200
#: Detached jobs a point of detached_rate_by_fill.
FILL_STEP = 100
#: A Python with the guest's `cryptography` (Debian's python3-cryptography), if installed.
SAME_BUILD_PYTHON = "/usr/bin/python3"

Figure = dict[str, Any]
Run = dict[str, float]
T = TypeVar("T")


def figure(runs: list[float]) -> Figure:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def figures(runs: list[Run]) -> dict[str, Figure]:
    """Each key of the runs' dicts as a figure."""
    return {key: figure([run[key] for run in runs]) for key in runs[0]}


async def repeated(times: int, measure: Callable[[], Awaitable[Run]]) -> dict[str, Figure]:
    return figures([await measure() for _ in range(times)])


async def clocked(work: Awaitable[Any]) -> float:
    """Seconds ``work`` takes (a coroutine does nothing until it is awaited)."""
    t = time.perf_counter()
    await work
    return time.perf_counter() - t


async def mean_ms(times: int, work: Callable[[], Awaitable[Any]]) -> float:
    """Mean milliseconds of ``times`` calls of ``work``, one after another."""
    return 1000 * sum([await clocked(work()) for _ in range(times)]) / times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ratios(zone: dict[str, Figure], native: dict[str, Figure]) -> dict[str, float]:
    return {k: zone[k]["median"] / native[k]["median"] for k in zone if k in native}


async def attest_figures(url: str, root: Any, reference: Reference, attests: int,
                         repeat: int) -> dict[str, Figure]:
    async with await Zone.connect(url, timeout=60) as zone:
        await zone.attest(os.urandom(32))  # warm up (and wait for layer 0)

        async def run() -> Run:
            attest_ms, verify_ms = [], []
            for _ in range(attests):
                nonce = os.urandom(32)
                t = time.perf_counter()
                evidence = await zone.attest(nonce)
                attest_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                verify_evidence(evidence, nonce=nonce, root=root, reference=reference)
                verify_ms.append((time.perf_counter() - t) * 1000)
            return {"attest_ms": statistics.median(attest_ms),
                    "verify_ms": statistics.median(verify_ms)}

        return await repeated(repeat, run)


def variant(tmp: Path, name: str, extra: str = "") -> Path:
    """A copy of the null applet named ``name`` (+ ``extra`` manifest lines), in ``tmp``."""
    applet = tmp / name
    shutil.copytree(NULL, applet)
    manifest = (NULL / "manifest.toml").read_text().replace('name = "null"', f'name = "{name}"')
    (applet / "manifest.toml").write_text(manifest + extra)
    return applet


async def install(url: str, key: Any, tmp: Path) -> None:
    """Enroll the owner ``key``; load null, null-warm (a warm worker serves it) and the crypto
    applet."""
    async with await Zone.connect(url, timeout=120) as zone:
        await zone.enroll(owner_spki(key))
        for applet in (NULL, variant(tmp, "null-warm", "warm = true\n"), CRYPTO):
            await zone.load(build_applet(applet, key), timeout=120)


async def applet_figures(url: str, key: Any, tmp: Path, loads: int, jobs: int,
                         repeat: int) -> dict[str, Any]:
    big = variant(tmp, "big")
    (big / "data.bin").write_bytes(os.urandom(100 * 1024))
    manifest = (big / "manifest.toml").read_text()
    versions = iter(range(1, loads * repeat + 1))
    phases: list[Run] = []
    async with await Zone.connect(url, timeout=120) as zone:
        async def load() -> float:
            (big / "manifest.toml").write_text(
                manifest.replace("version = 1", f"version = {next(versions)}"))
            return await clocked(zone.load(build_applet(big, key)))

        async def rates(applet: str, warm_up: int) -> tuple[float, float]:
            """Jobs/s one at a time and ``jobs`` in flight."""
            for _ in range(warm_up):
                await zone.run(applet, b"")
            t = time.perf_counter()
            for _ in range(jobs):
                await zone.run(applet, b"")
            sequential = jobs / (time.perf_counter() - t)
            if applet == NULL.name:  # the TIMED_JOBS jobs just run, one at a time
                phases.append((await zone.stats())["job_phases_ms"])
            concurrent = jobs / await clocked(asyncio.gather(
                *(zone.run(applet, b"") for _ in range(jobs))))
            return sequential, concurrent

        async def batched(applet: str) -> float:
            """Inputs/s in BATCH-input batch jobs, one receipt each."""
            seconds = 0.0
            for _ in range(BATCHES):
                seconds += await clocked(zone.run_batch(applet, [b""] * BATCH))
            return BATCHES * BATCH / seconds

        async def run() -> Run:
            load_ms = statistics.median([await load() for _ in range(loads)]) * 1000
            # Enough cold jobs one at a time that the zone's phase medians are theirs alone.
            sequential, concurrent = await rates(NULL.name, max(5, TIMED_JOBS - jobs))
            warm_sequential, warm_concurrent = await rates("null-warm", 5)
            echo_ms = await mean_ms(ECHOES, lambda: zone.echo(b""))
            return {"load_100k_ms": load_ms, "jobs_per_s_sequential": sequential,
                    "jobs_per_s_concurrent": concurrent,
                    "job_over_echo": 1000 / sequential / echo_ms,
                    "warm_jobs_per_s_sequential": warm_sequential,
                    "warm_jobs_per_s_concurrent": warm_concurrent,
                    "warm_job_over_echo": 1000 / warm_sequential / echo_ms,
                    "batched_inputs_per_s": await batched(NULL.name),
                    "warm_batched_inputs_per_s": await batched("null-warm")}

        results = await repeated(repeat, run)
    steps = [step for step in phases[0] if step != "jobs"]
    return {**results, "job_phases_ms": figures([{k: p[k] for k in steps} for p in phases])}


async def session_figures(url: str, root: Any, reference: Reference, sessions: int, jobs: int,
                          repeat: int) -> dict[str, Figure]:
    """What an attested session costs: opening one, and a request or a job inside it."""
    async with await Zone.connect(url, timeout=60) as zone:
        await (await zone.session(root=root, reference=reference)).close()  # warm up

        async def handshake() -> float:
            tunnel = await zone.tunnel()
            bare = Zone(tunnel.url, timeout=60, heartbeat=None, tls=(tunnel, client_context(root)))
            seconds = await clocked(bare.open())
            await bare.close()
            return seconds

        async def open_session() -> float:
            t = time.perf_counter()
            session = await zone.session(root=root, reference=reference)
            seconds = time.perf_counter() - t
            await session.close()
            return seconds

        async def run() -> Run:
            found = {"handshake_ms": statistics.median(
                         [await handshake() for _ in range(sessions)]) * 1000,
                     "open_ms": statistics.median(
                         [await open_session() for _ in range(sessions)]) * 1000}
            async with await zone.session(root=root, reference=reference) as session:
                for name, client in (("plain", zone), ("session", session)):
                    for _ in range(5):  # warm up
                        await client.run(NULL.name, b"")
                    found[f"{name}_echo_ms"] = await mean_ms(ECHOES, lambda: client.echo(b""))
                    found[f"{name}_job_ms"] = await mean_ms(jobs,
                                                            lambda: client.run(NULL.name, b""))
            found["echo_session_over_plain"] = found["session_echo_ms"] / found["plain_echo_ms"]
            found["job_session_over_plain"] = found["session_job_ms"] / found["plain_job_ms"]
            return found

        return await repeated(repeat, run)


async def crypto_figures(url: str, count: int, repeat: int) -> list[dict[str, Any]]:
    """The crypto applet's answers, one job a run."""
    request = json.dumps({"op": "all", "count": count}).encode()
    async with await Zone.connect(url, timeout=120) as zone:
        await zone.run("bench-crypto", json.dumps({"op": "all", "count": 1}).encode())  # warm up
        return [json.loads((await zone.run("bench-crypto", request))["output"])
                for _ in range(repeat)]


def native_crypto(python: str, count: int, repeat: int) -> list[dict[str, Any]]:
    """The crypto applet's code run by ``python`` on the host, one process a run."""
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('crypto', "
            "sys.argv[1]); m = u.module_from_spec(s); s.loader.exec_module(m); "
            "sys.stdout.buffer.write(m.run(sys.argv[2].encode(), None))")
    request = json.dumps({"op": "all", "count": count})
    return [json.loads(subprocess.run([python, "-c", code, str(CRYPTO / "main.py"), request],
                                      capture_output=True, check=True, timeout=300).stdout)
            for _ in range(repeat)]


def crypto_summary(answers: list[dict[str, Any]]) -> tuple[dict[str, Figure], dict[str, str]]:
    """Median milliseconds per op in each run, as figures; and the ops that failed (why)."""
    failed = {op: r["error"] for a in answers for op, r in a["ops"].items() if "error" in r}
    runs = [{op: statistics.median(r["ms"]) for op, r in a["ops"].items() if op not in failed}
            for a in answers]
    return figures(runs), failed


def crypto_results(zone_answers: list[dict[str, Any]], count: int, repeat: int,
                   same_build: str | None) -> dict[str, Any]:
    zone, failed = crypto_summary(zone_answers)
    guest = zone_answers[0]["versions"]
    results: dict[str, Any] = {"count": count, "zone": zone, "not_in_zone": failed,
                               "versions": {"zone": guest}}
    natives = {"native": sys.executable}
    if same_build and Path(same_build).exists():
        probe = subprocess.run([same_build, "-c", "import cryptography; "
                                "print(cryptography.__version__)"],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and probe.stdout.strip() == guest["cryptography"]:
            natives["native_same_build"] = same_build
    for name, python in natives.items():
        answers = native_crypto(python, count, repeat)
        results[name], _ = crypto_summary(answers)
        results["versions"][name] = {**answers[0]["versions"], "python": python}
        results[f"ratio_zone_over_{name}"] = ratios(zone, results[name])
    if "zone-sign" in zone and "p384-sign" in zone:
        results["zone_sign_over_p384_sign"] = figure(
            [s / raw for s, raw in zip(zone["zone-sign"]["runs"], zone["p384-sign"]["runs"])])
    return results


def fill_rates(waits: list[float], step: int) -> list[float]:
    """Jobs/s of each ``step`` jobs in the order they finished, from each one's wait: the
    seconds from the previous job of its run finishing (or the run's start) to its own."""
    return [len(waits[i:i + step]) / sum(waits[i:i + step]) for i in range(0, len(waits), step)]


async def detached_run(zone: Zone, applet: str, count: int) -> list[float]:
    """Submit ``count`` detached jobs at once; the seconds from the submission until each is
    done, as the host sees it (waiting on each in turn: they run in order)."""
    t = time.perf_counter()
    submitted = await asyncio.gather(*(zone.submit(applet, b"") for _ in range(count)))
    done = []
    for job in (s["job"] for s in submitted):
        answer = await zone.result(job, wait=600)
        assert answer["state"] == JobState.DONE, answer
        done.append(time.perf_counter() - t)
    return done


async def deliver(url: str) -> float:
    """Seconds to fetch and acknowledge every result in the outbox, on a new connection."""
    async with await Zone.connect(url, timeout=600) as zone:
        jobs = [job["job"] for job in await zone.jobs()]
        t = time.perf_counter()

        async def fetch(job: str) -> None:
            answer = await zone.result(job)
            assert answer["state"] == JobState.DONE, answer
            await zone.ack(job)

        await asyncio.gather(*(fetch(job) for job in jobs))
        seconds = time.perf_counter() - t
        assert await zone.jobs() == []
    return seconds


async def outbox_figures(url: str, backlog: int, repeat: int) -> dict[str, Any]:
    """Detached-job throughput as the outbox fills, then the delivery of a backlog to a host
    that comes back."""
    rates: list[float] = []
    finished: list[float] = []
    async with await Zone.connect(url, timeout=600) as zone:
        for i in range(repeat):
            count = backlog * (i + 1) // repeat - backlog * i // repeat
            done = await detached_run(zone, NULL.name, count)
            rates.append(count / done[-1])
            print(f"  detached run {i + 1}: {count} jobs, {rates[-1]:.1f}/s", file=sys.stderr)
            finished += [b - a for a, b in zip([0.0] + done, done)]
    # The host was away; it comes back to a backlog of finished results.
    delivered = [await deliver(url)]
    for _ in range(repeat - 1):
        async with await Zone.connect(url, timeout=600) as zone:
            refill = await detached_run(zone, "null-warm", backlog)
            print(f"  refilled the outbox at {backlog / refill[-1]:.1f}/s", file=sys.stderr)
        delivered.append(await deliver(url))
    return {"detached_jobs_per_s": figure(rates), "backlog": backlog,
            "detached_rate_by_fill": fill_rates(finished, FILL_STEP),
            "backlog_delivery_s": figure(delivered)}


async def channel_figures(url: str, requests: int, volume: int,
                          repeat: int) -> tuple[dict[str, Figure], list[float]]:
    """The channel's figures, and the round trips of the last run (ms)."""
    async with await Zone.connect(url, timeout=60) as zone:
        payload = os.urandom(CHUNK)
        for _ in range(200):  # warm up (under TCG, code runs faster once it is translated)
            await zone.request("echo", {"data": b""})
        for _ in range(2):
            await zone.request("sink", {"data": payload}, timeout=120)
            await zone.request("source", {"size": CHUNK}, timeout=120)
        rtts: list[float] = []

        async def moved(op: str, args: dict[str, Any], window: bool) -> float:
            seconds = 0.0
            for _ in range(volume // CHUNK):
                seconds += await clocked(zone.request(op, args, timeout=120, window=window))
            return volume / seconds / MB

        async def run() -> Run:
            rtts[:] = [1000 * await clocked(zone.request("echo", {"data": b""}))
                       for _ in range(requests)]
            return {"rtt_p50_ms": statistics.median(rtts), "rtt_p90_ms": percentile(rtts, 0.9),
                    "rtt_p99_ms": percentile(rtts, 0.99),
                    "h2z_MBps": await moved("sink", {"data": payload}, False),
                    "z2h_MBps": await moved("source", {"size": CHUNK}, False),
                    "window_h2z_MBps": await moved("sink", {"data": payload}, True),
                    "window_z2h_MBps": await moved("source", {"size": CHUNK}, True)}

        return await repeated(repeat, run), rtts


def native_figures(requests: int, volume: int,
                   repeat: int) -> tuple[dict[str, Figure], list[float]]:
    """The baseline: the monitor on the host, serving one connection of a unix socket and a
    bulk window in a file of /dev/shm."""
    with tempfile.TemporaryDirectory(prefix="sez-native-") as tmp, \
            tempfile.NamedTemporaryFile(prefix="sez-native-", suffix=".bulk",
                                        dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as window:
        window.truncate(WINDOW_SIZE)
        path = f"{tmp}/ctl.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        fd = listener.fileno()
        proc = subprocess.Popen(
            [sys.executable, "-c", "import socket, firmware.monitor.server as m, "
             "firmware.pid1.hardware as h; "
             f"c, _ = socket.socket(fileno={fd}).accept(); "
             f"m.main(h.Hardware(), fd=c.fileno(), keeper_socket='/nonexistent', window={window.name!r})"],
            pass_fds=(fd,), stderr=subprocess.DEVNULL)
        listener.close()
        try:
            return asyncio.run(channel_figures(f"unix:{path}?bulk={window.name}", requests, volume,
                                               repeat))
        finally:
            proc.kill()
            proc.wait()


def tamper_figures(home: SezHome, runs: int) -> dict[str, Figure]:
    """Trip the tamper line of ``runs`` fresh zones, each with an owner and a loaded applet."""
    trips = []
    key = generate_owner_key(home.root / "tamper-owner.pem")
    for i in range(runs):
        Factory(home).provision(f"tamper-{i}")
        with booted(f"tamper-{i}", home=home) as zone:
            async def own() -> None:
                async with await Zone.connect(zone.url, timeout=60) as client:
                    await client.enroll(owner_spki(key))
                    await client.load(build_applet(NULL, key))
            asyncio.run(own())
            trip = zone.machine.tamper("bench")
            assert trip.zone_ms is not None and trip.ack_ms is not None, trip
            trips.append({"zone_ms": trip.zone_ms, "ack_ms": trip.ack_ms, "wipe_ms": trip.wipe_ms})
    return figures(trips)


def stage(label: str, work: Callable[[], T]) -> T:
    """``work()``, saying on stderr how long it took."""
    t = time.perf_counter()
    result = work()
    print(f"{label}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return result


def commit() -> str:
    """The commit measured (``-dirty``: with uncommitted changes), or why there is none."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE,
                              capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc.__class__.__name__})"


def mm(fig: Figure, spec: str = ".1f") -> str:
    """A figure as median (min-max)."""
    return f"{fig['median']:{spec}} ({fig['min']:{spec}}-{fig['max']:{spec}})"


def show(results: dict[str, Any], args: argparse.Namespace) -> None:
    zone, native = results["zone"], results["native"]
    boot, identity, applet = results["boot_to_hello_s"], results["attestation"], results["applets"]
    print(f"cold boot to hello   {mm(boot, '.2f')} s   ({len(boot['runs'])} boots)")
    resume = results["resume"]
    print(f"resumed to hello     {mm(resume['to_hello_s'], '.3f')} s, to evidence "
          f"{mm(resume['to_evidence_s'], '.3f')} s (template made in "
          f"{resume['template_s']:.1f} s)")
    print(f"{'':20} {'zone (TCG)':>24} {'native':>24} {'zone/native':>12}")
    for key, label in (("rtt_p50_ms", "round trip p50 ms"), ("rtt_p90_ms", "round trip p90 ms"),
                       ("rtt_p99_ms", "round trip p99 ms"), ("h2z_MBps", "host->zone MB/s"),
                       ("z2h_MBps", "zone->host MB/s"), ("window_h2z_MBps", "window h->z MB/s"),
                       ("window_z2h_MBps", "window z->h MB/s")):
        print(f"{label:20} {mm(zone[key], '.3f'):>24} {mm(native[key], '.3f'):>24} "
              f"{results['ratio_zone_over_native'][key]:12.2f}")
    print(f"attest round trip    {mm(identity['attest_ms'])} ms   (evidence signed in the zone)")
    print(f"verify evidence      {mm(identity['verify_ms'])} ms   (on the host)")
    print(f"load 100 KiB applet  {mm(applet['load_100k_ms'])} ms")
    print(f"null jobs            {mm(applet['jobs_per_s_sequential'])} /s one at a time, "
          f"{mm(applet['jobs_per_s_concurrent'])} /s with {args.jobs} in flight")
    print(f"null job / echo      {mm(applet['job_over_echo'])} x (round trip ratio)")
    print(f"warm null jobs       {mm(applet['warm_jobs_per_s_sequential'])} /s one at a time, "
          f"{mm(applet['warm_jobs_per_s_concurrent'])} /s with {args.jobs} in flight; "
          f"{mm(applet['warm_job_over_echo'])} x a null request")
    print(f"batched null jobs    {mm(applet['batched_inputs_per_s'], '.0f')} inputs/s cold, "
          f"{mm(applet['warm_batched_inputs_per_s'], '.0f')} warm ({BATCH} inputs a request, "
          "one receipt a request)")
    print("null job's steps     " + ", ".join(f"{k} {mm(v)}" for k, v in
                                              applet["job_phases_ms"].items()) +
          " ms (zone medians)")
    show_crypto(results["crypto"])
    sessions = results["sessions"]
    print(f"TLS 1.3 handshake    {mm(sessions['handshake_ms'])} ms   (+ hello, into the zone)")
    print(f"attested session     {mm(sessions['open_ms'])} ms   (handshake, evidence, appraisal)")
    print(f"null request         {mm(sessions['session_echo_ms'], '.2f')} ms in a session, "
          f"{mm(sessions['plain_echo_ms'], '.2f')} ms plain: "
          f"{mm(sessions['echo_session_over_plain'], '.2f')} x")
    print(f"null job             {mm(sessions['session_job_ms'])} ms in a session, "
          f"{mm(sessions['plain_job_ms'])} ms plain: "
          f"{mm(sessions['job_session_over_plain'], '.2f')} x")
    tamper = results["tamper"]
    print(f"tamper to zeroised   {mm(tamper['zone_ms'])} ms in the zone, {mm(tamper['ack_ms'])} "
          f"ms trip to answer, {mm(tamper['wipe_ms'])} ms to wipe the fuses and BBRAM disk "
          f"({len(tamper['zone_ms']['runs'])} zones)")
    outbox = results["outbox"]
    print(f"detached null jobs   {mm(outbox['detached_jobs_per_s'])} /s "
          f"({outbox['backlog']} in {len(outbox['detached_jobs_per_s']['runs'])} runs)")
    print(f"  by outbox fill     " + " ".join(f"{r:.1f}" for r in
                                             outbox["detached_rate_by_fill"]) +
          f" /s (each {FILL_STEP} jobs, in the order they finished)")
    print(f"deliver a backlog    {mm(outbox['backlog_delivery_s'], '.2f')} s for "
          f"{outbox['backlog']} results (result + ack each, after reconnect)")


def show_crypto(crypto: dict[str, Any]) -> None:
    natives = [n for n in ("native", "native_same_build") if n in crypto]
    print(f"{'in-zone crypto, ms':20} {'zone (TCG)':>24}" +
          "".join(f" {n:>24} {'zone/' + n.replace('_same_build', ' (guest build)'):>12}"
                  for n in natives))
    for op, fig in crypto["zone"].items():
        print(f"{op:20} {mm(fig, '.3f'):>24}" + "".join(
            f" {mm(crypto[n][op], '.3f'):>24} {crypto[f'ratio_zone_over_{n}'][op]:12.2f}"
            if op in crypto[n] else "" for n in natives))
    for name, versions in crypto["versions"].items():
        print(f"  {name}: cryptography {versions['cryptography']}, {versions['openssl']}")
    if "zone_sign_over_p384_sign" in crypto:
        print(f"zone.sign / P-384    {mm(crypto['zone_sign_over_p384_sign'], '.2f')} x the raw "
              "P-384 signature in the zone (the applet's own key, through layer 0)")
    for op, why in crypto["not_in_zone"].items():
        print(f"not in the zone      {op}: {why}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="runs of each figure (at least 1)")
    ap.add_argument("--boots", type=int, help="cold boots to time (default: --repeat)")
    ap.add_argument("--requests", type=int, default=2000, help="null requests a run")
    ap.add_argument("--mib", type=int, default=16, help="MiB moved each way a run")
    ap.add_argument("--attests", type=int, default=20, help="attestations a run")
    ap.add_argument("--loads", type=int, default=5, help="100 KiB applet loads a run")
    ap.add_argument("--jobs", type=int, default=40, help="null jobs a run of a job figure")
    ap.add_argument("--sessions", type=int, default=10, help="attested sessions opened a run")
    ap.add_argument("--crypto-count", type=int, default=20, help="timed calls of each crypto op "
                    "a run")
    ap.add_argument("--same-build-python", default=SAME_BUILD_PYTHON,
                    help="a host Python to time the crypto with too, if its `cryptography` is "
                    "the guest's version (default %(default)s; '' for none)")
    ap.add_argument("--tampers", type=int, default=5, help="fresh zones to trip the tamper line of")
    ap.add_argument("--backlog", type=int, default=1000,
                    help="detached jobs over the runs, and finished results to deliver a run")
    ap.add_argument("-o", "--output", type=Path, default=HERE / "results.json")
    ap.add_argument("--chart", type=Path, default=HERE / "results.png")
    args = ap.parse_args()
    boots = args.boots or args.repeat
    if min(args.repeat, boots, args.tampers) < 1 or args.backlog < args.repeat:
        ap.error("--repeat, --boots and --tampers must be at least 1, --backlog at least --repeat")
    volume = args.mib << 20
    started, measured = time.perf_counter(), commit()  # the tree as the run begins
    image = hashlib.sha256((load_image().directory / "manifest.json").read_bytes()).hexdigest()

    with tempfile.TemporaryDirectory(prefix="sez-bench-") as tmp:
        home = SezHome(Path(tmp))
        os.environ["SEZ_HOME"] = tmp
        Factory(home).init()
        Factory(home).provision("bench")
        begun = time.perf_counter()
        template_for(load_image(), home=home)
        template_s = time.perf_counter() - begun
        resume_s, resume_attest_s = [], []
        for i in range(boots):
            with booted("bench", home=home, snapshot=True) as resumed:
                resume_s.append(resumed.boot_seconds)
                begun = time.perf_counter()
                with SyncZone(resumed.url, timeout=60) as client:
                    client.attest(os.urandom(16))  # layer 0 derives the identity first
                resume_attest_s.append(resumed.boot_seconds + time.perf_counter() - begun)
                print(f"resume {i + 1}: {resumed.boot_seconds:.3f} s to hello, "
                      f"{resume_attest_s[-1]:.3f} s to evidence", file=sys.stderr)
        boot_s = []
        for i in range(boots):
            with booted("bench", home=home) as bench:  # killed at the end of each block
                boot_s.append(bench.boot_seconds)
                print(f"boot {i + 1}: {bench.boot_seconds:.2f} s", file=sys.stderr)
                if i < boots - 1:
                    continue
                # The last boot stays up for the figures.
                root = Factory(home).root_cert()
                reference = Reference.from_manifest(load_image().directory / "manifest.json")
                url, tmp_path, repeat = bench.url, Path(tmp), args.repeat
                zone, zone_rtts = stage("channel", lambda: asyncio.run(channel_figures(
                    url, args.requests, volume, repeat)))
                identity = stage("attestation", lambda: asyncio.run(attest_figures(
                    url, root, reference, args.attests, repeat)))
                key = generate_owner_key(tmp_path / "owner.pem")
                asyncio.run(install(url, key, tmp_path))
                applet = stage("applets", lambda: asyncio.run(applet_figures(
                    url, key, tmp_path, args.loads, args.jobs, repeat)))
                crypto = stage("crypto", lambda: asyncio.run(crypto_figures(
                    url, args.crypto_count, repeat)))
                sessions = stage("sessions", lambda: asyncio.run(session_figures(
                    url, root, reference, args.sessions, args.jobs, repeat)))
                outbox = stage("outbox", lambda: asyncio.run(outbox_figures(
                    url, args.backlog, repeat)))
        tamper = stage("tamper", lambda: tamper_figures(home, args.tampers))
    native, native_rtts = stage("native", lambda: native_figures(args.requests, volume,
                                                                 args.repeat))

    results: dict[str, Any] = {
        "meta": {"commit": measured, "image_manifest_sha256": image[:16],
                 "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                 "options": {k: str(v) if isinstance(v, Path) else v
                             for k, v in vars(args).items()},
                 "cpus": os.cpu_count(), "batch": BATCH},
        "boot_to_hello_s": figure(boot_s),
        "resume": {"template_s": template_s, "to_hello_s": figure(resume_s),
                   "to_evidence_s": figure(resume_attest_s)},
        "zone": zone,
        "native": native,
        "ratio_zone_over_native": ratios(zone, native),
        "rtt_samples_ms": {"zone": zone_rtts, "native": native_rtts},
        "attestation": identity,
        "applets": applet,
        "crypto": stage("native crypto", lambda: crypto_results(
            crypto, args.crypto_count, args.repeat, args.same_build_python)),
        "outbox": outbox,
        "sessions": sessions,
        "tamper": tamper,
    }
    results["meta"]["wall_s"] = time.perf_counter() - started
    show(results, args)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    report.render(results, args.chart)
    print(f"wall time {results['meta']['wall_s']:.0f} s; written: {args.output}, {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
