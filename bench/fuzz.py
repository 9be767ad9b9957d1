"""`make fuzz`: at least 100,000 hostile frames against one live zone.

One zone (a throwaway device under a temporary $SEZ_HOME) is armed (an owner, four applets, a
provisioned secret and a sealed plaintext, each a random marker), then takes batches of
hostile cases (tests/hostile/generator.py: mutated, random, boundary, deep, huge, tags, ops),
three in four on the plain channel and one in four inside an attested session, until at least
``--cases`` cases (each one or more frames) have gone in. A quarter of the way through and at
the end, hostile hosts (flooding, slowloris, reconnects) and hostile applets. After every
batch the campaign's checkpoint (tests/hostile/campaign.py): a new host session answered, no
monitor restart, no reboot, the monitor's memory under the bound, every error typed, no
marker in any answer, error or console line. The first violation stops the run (exit 1).

Printed, and written to bench/results/fuzz.json: cases and frames per category, the error
codes each got, the time, monitor restarts, memory before, after and at most, and the
hostile hosts' figures. ``--seed`` replays a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the campaign is test code (tests/hostile), in this checkout

from emulator.factory import Factory  # noqa: E402
from emulator.image import load_image  # noqa: E402
from emulator.paths import SezHome  # noqa: E402
from firmware.abi.errors import SezError  # noqa: E402
from host_driver.lifecycle import booted  # noqa: E402
from host_driver.verifier import Reference  # noqa: E402
from tests.hostile import hosts  # noqa: E402
from tests.hostile.campaign import Campaign, Violation  # noqa: E402
from tests.hostile.generator import CATEGORIES  # noqa: E402

MIB = 1 << 20


async def campaign_run(campaign: Campaign, args: argparse.Namespace,
                       figures: dict[str, Any]) -> None:
    await campaign.connect()
    await campaign.arm(ec.generate_private_key(ec.SECP384R1()))
    started = time.monotonic()
    hosts_done = False
    turn = 0
    while campaign.totals()["cases"] < args.cases:
        category = CATEGORIES[turn % len(CATEGORIES)]
        session = turn // len(CATEGORIES) % 4 == 3  # every fourth round inside a session
        await campaign.batch(category, args.batch, session=session)
        turn += 1
        totals = campaign.totals()
        if turn % len(CATEGORIES) == 0:
            print(f"{totals['cases']:>7} cases {totals['frames']:>7} frames "
                  f"{time.monotonic() - started:7.0f} s  rss {campaign.rss[-1] / MIB:5.1f} MiB",
                  file=sys.stderr, flush=True)
        if not hosts_done and totals["cases"] >= args.cases // 4:
            await hostile_hosts(campaign, args, figures, "midway")
            hosts_done = True
    figures["fuzz_seconds"] = round(time.monotonic() - started, 1)
    await hostile_hosts(campaign, args, figures, "end")


async def hostile_hosts(campaign: Campaign, args: argparse.Namespace, figures: dict[str, Any],
                        when: str) -> None:
    print(f"hostile hosts and applets ({when})", file=sys.stderr, flush=True)
    figures[f"flood_{when}"] = await hosts.flood(campaign, args.flood_seconds)
    figures[f"slowloris_{when}"] = await hosts.slowloris(campaign)
    figures[f"applets_{when}"] = await hosts.hostile_applets(campaign)
    if when == "end":
        figures["new_host_sessions"] = await hosts.reconnects(campaign, args.reconnects,
                                                              reopen=False)
        figures["reopened_channels"] = await hosts.reconnects(campaign, args.reconnects,
                                                              reopen=True)
        figures["reopened_after_absence"] = await hosts.reconnects(
            campaign, args.away_reconnects, reopen=True, away=0.1)


def summary(report: dict[str, Any], figures: dict[str, Any]) -> str:
    lines = [f"{'category':18} {'cases':>7} {'frames':>7} {'MiB':>7} {'s':>6}  error codes"]
    for name, tally in report["categories"].items():
        codes = ", ".join(f"{code} {n}" for code, n in list(tally["codes"].items())[:6])
        lines.append(f"{name:18} {tally['cases']:7} {tally['frames']:7} "
                     f"{tally['bytes'] / MIB:7.1f} {tally['seconds']:6.0f}  {codes}")
    memory = report["memory"]
    lines += [
        f"{'total':18} {report['cases']:7} {report['frames']:7} {report['bytes'] / MIB:7.1f}",
        f"time: {figures.get('total_seconds')} s in all, {figures.get('fuzz_seconds')} s of "
        f"batches ({report['batches']}); new host sessions after batches: "
        f"{report['new_host_sessions']} ({report['reopened_channels']} on a reopened channel),"
        f" hello p50 {report['hello_seconds']['p50']:.3f} s, max "
        f"{report['hello_seconds']['max']:.3f} s",
        f"monitor restarts: {figures.get('monitor_restarts')}; reboots: "
        f"{figures.get('reboots')}; QEMU running at the end: "
        f"{figures.get('qemu_running_at_the_end')}; zone uptime {figures.get('zone_uptime_s')} s",
        f"monitor memory (RSS): before {memory['rss_before'] / MIB:.1f} MiB, after "
        f"{(memory['rss_after'] or 0) / MIB:.1f} MiB, at most {memory['rss_max'] / MIB:.1f} MiB "
        f"at a checkpoint, peak {memory['peak'] / MIB:.1f} MiB (bound "
        f"{memory['bound'] / MIB:.0f} MiB, address-space limit {memory['limit'] / MIB:.0f} MiB)",
        f"error codes in all: {report['codes']}",
    ]
    for key in ("flood_end", "slowloris_end", "new_host_sessions", "reopened_channels",
                "reopened_after_absence"):
        if key in figures:
            lines.append(f"{key}: {json.dumps(figures[key])}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000, help="hostile cases to send, at least")
    ap.add_argument("--batch", type=int, default=500, help="cases between checkpoints")
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    ap.add_argument("--flood-seconds", type=float, default=30.0)
    ap.add_argument("--reconnects", type=int, default=1000,
                    help="new hosts on the same channel, and on a reopened one, each")
    ap.add_argument("--away-reconnects", type=int, default=30,
                    help="reopened channels after 0.1 s away (~1 s each: QEMU's PTY poll)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    args = ap.parse_args()
    print(f"make fuzz: seed {args.seed}, at least {args.cases} cases", file=sys.stderr)
    figures: dict[str, Any] = {"seed": args.seed}
    started = time.monotonic()
    failure = None
    with tempfile.TemporaryDirectory(prefix="sez-fuzz-") as tmp:
        home = SezHome(Path(tmp))
        os.environ["SEZ_HOME"] = tmp
        Factory(home).init()
        Factory(home).provision("fuzz")
        trust = (Factory(home).root_cert(),
                 Reference.from_manifest(load_image().directory / "manifest.json"))
        with booted("fuzz", home=home) as zone:
            campaign = Campaign(zone.url, zone.machine.console_log, trust=trust,
                                seed=args.seed)
            try:
                asyncio.run(campaign_run(campaign, args, figures))
            except (Violation, SezError, OSError) as exc:  # an oracle, or the zone is gone
                failure = f"{type(exc).__name__}: {exc}"
            first, last = campaign.first, campaign.report()
            figures["qemu_running_at_the_end"] = zone.machine.is_running()
            info = campaign.last_info
            figures["monitor_restarts"] = info.get("monitor_restarts")
            figures["reboots"] = (info["boot_counter"] - first["boot_counter"]
                                  if info and first else None)
            figures["zone_uptime_s"] = info.get("uptime")
            console = zone.machine.console_log.read_bytes()
            figures["console_bytes"] = len(console)
            figures["markers_on_console"] = campaign.markers.found_in(console)
    figures["total_seconds"] = round(time.monotonic() - started, 1)
    report = {**last, "first": first, "hosts": figures, "failure": failure}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(summary(last, figures))
    if failure is not None:
        print(f"FAILED: {failure}\n(seed {args.seed}; the report so far: {args.out})")
        return 1
    print(f"0 zone crashes, {figures['monitor_restarts']} monitor restarts, "
          f"{figures['reboots']} reboots; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
