"""The chart of a `make bench` run: bench/results.json (bench/bench.py) drawn as a PNG.

    python bench/report.py bench/results.json -o bench/results.png

re-draws it from the JSON alone, running nothing. Bars are medians, error bars the min and
max of the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

Figure = dict[str, Any]
ZONE, NATIVE, OTHER = "tab:blue", "tab:orange", "tab:green"


def spread(figs: Sequence[Figure]) -> list[list[float]]:
    """Error bars (below, above the median) reaching from each figure's min to its max."""
    return [[f["median"] - f["min"] for f in figs], [f["max"] - f["median"] for f in figs]]


def bars(ax: Axes, groups: Sequence[str], series: dict[str, tuple[list[Figure | None], str]],
         *, title: str, unit: str, horizontal: bool = False, log: bool = False) -> None:
    """Side-by-side bars: for each group, one bar a series ({label: (figures, colour)}; None:
    no bar), each with its min-max error bar and its median written beside it; ``unit``
    labels the values' axis (``log``: a log scale). Horizontal bars run top to bottom."""
    width = 0.8 / len(series)
    for i, (label, (figs, colour)) in enumerate(series.items()):
        shown = [(g + (i - (len(series) - 1) / 2) * width, f)
                 for g, f in enumerate(figs) if f is not None]
        where, values = [p for p, _ in shown], [f for _, f in shown]
        medians = [f["median"] for f in values]
        if horizontal:
            drawn = ax.barh(where, medians, width, xerr=spread(values), label=label,
                            color=colour, capsize=3)
        else:
            drawn = ax.bar(where, medians, width, yerr=spread(values), label=label,
                           color=colour, capsize=3)
        ax.bar_label(drawn, labels=[f"{m:.3g}" for m in medians], fontsize=7, padding=2)
    if horizontal:
        ax.set_yticks(range(len(groups)), groups, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.set_xscale("log" if log else "linear")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a short log axis labels its minor ticks
    else:
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel(unit)
        ax.set_yscale("log" if log else "linear")
        ax.yaxis.set_minor_formatter(NullFormatter())
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title)


def boot_panel(ax: Axes, results: dict[str, Any]) -> None:
    figs = [results["boot_to_hello_s"]]
    groups = ["cold boot\nto hello"]
    if "resume" in results:  # results from before templates have none
        figs += [results["resume"]["to_hello_s"], results["resume"]["to_evidence_s"]]
        groups += ["resumed\nto hello", "resumed to\nevidence"]
    bars(ax, groups, {"zone": (figs, ZONE)}, title="Boot (QEMU launch to hello; dots: the runs)",
         unit="seconds")
    for i, fig in enumerate(figs):
        ax.plot([i] * len(fig["runs"]), fig["runs"], "k.", alpha=0.6)


def rtt_panel(ax: Axes, results: dict[str, Any]) -> None:
    for name, colour in (("zone", ZONE), ("native", NATIVE)):
        samples = sorted(results["rtt_samples_ms"][name])
        share = [(i + 1) / len(samples) for i in range(len(samples))]
        figs = results[name]
        ax.plot(samples, share, color=colour,
                label=f"{name}: p50 {figs['rtt_p50_ms']['median']:.2f}, "
                      f"p90 {figs['rtt_p90_ms']['median']:.2f}, "
                      f"p99 {figs['rtt_p99_ms']['median']:.2f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("null request round trip, ms (one run)")
    ax.set_ylabel("share of requests (CDF)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("Round-trip distribution")


def throughput_panel(ax: Axes, results: dict[str, Any]) -> None:
    lanes = ("h2z_MBps", "z2h_MBps", "window_h2z_MBps", "window_z2h_MBps")
    bars(ax, ["port\nhost → zone", "port\nzone → host", "window\nhost → zone",
              "window\nzone → host"],
         {name: ([results[name][k] for k in lanes], colour)
          for name, colour in (("zone", ZONE), ("native", NATIVE))},
         title="Throughput per lane", unit="MB/s", log=True)


def jobs_panel(ax: Axes, results: dict[str, Any]) -> None:
    applets = results["applets"]
    keys = ("jobs_per_s_sequential", "jobs_per_s_concurrent", "batched_inputs_per_s")
    batch = results["meta"].get("batch", "?")
    bars(ax, ["single", "pipelined", f"batched ({batch} inputs a job)"],
         {"cold": ([applets[k] for k in keys], ZONE),
          "warm": ([applets["warm_" + k] for k in keys], OTHER)},
         title="Null jobs per second (batched: inputs/s)", unit="null jobs/s", log=True)


def fill_panel(ax: Axes, results: dict[str, Any]) -> None:
    outbox = results["outbox"]
    rates = outbox["detached_rate_by_fill"]
    step = outbox["backlog"] / len(rates)
    ax.bar([i * step for i in range(len(rates))], rates, step * 0.8, align="edge", color=ZONE,
           label="per 100 jobs")
    overall = outbox["detached_jobs_per_s"]
    ax.axhline(overall["median"], color="k", lw=1, label=f"runs: {overall['median']:.1f}/s")
    ax.axhspan(overall["min"], overall["max"], color="k", alpha=0.1)
    ax.set_ylim(0, max(rates + [overall["max"]]) * 1.3)
    ax.set_xlabel("results already in the outbox")
    ax.set_ylabel("detached null jobs/s")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Detached jobs as the outbox fills")


def ratio(zone: Figure, native: Figure) -> Figure:
    """zone/native: the median's ratio, from the least to the most the runs allow."""
    return {"median": zone["median"] / native["median"], "min": zone["min"] / native["max"],
            "max": zone["max"] / native["min"]}


def crypto_panel(ax: Axes, results: dict[str, Any]) -> None:
    crypto = results["crypto"]
    ops = [op for op in crypto["zone"] if op in crypto["native"]]
    series: dict[str, tuple[list[Figure | None], str]] = {
        "zone / native": ([ratio(crypto["zone"][op], crypto["native"][op]) for op in ops], ZONE)}
    if "native_same_build" in crypto:
        same = crypto["native_same_build"]
        series["zone / native, guest's build"] = (
            [ratio(crypto["zone"][op], same[op]) if op in same else None for op in ops], OTHER)
    labels = [f"{op}\n({crypto['zone'][op]['median']:.3g} ms in zone)" for op in ops]
    if "zone_sign_over_p384_sign" in crypto:
        labels.append("zone.sign /\nraw P-384 in zone")
        for figs, _ in series.values():
            figs.append(None)
        series["applet key / raw"] = ([None] * len(ops) + [crypto["zone_sign_over_p384_sign"]],
                                      NATIVE)
    bars(ax, labels, series, title="In-zone crypto against host-native (ratios)",
         unit="ratio (× slower)", horizontal=True, log=True)


def latency_panel(ax: Axes, results: dict[str, Any]) -> None:
    sessions, tamper = results["sessions"], results["tamper"]
    rows = {"attest": results["attestation"]["attest_ms"],
            "verify (host)": results["attestation"]["verify_ms"],
            "load 100 KiB": results["applets"]["load_100k_ms"],
            "TLS handshake": sessions["handshake_ms"], "attested session": sessions["open_ms"],
            "null job": sessions["plain_job_ms"], "null job in session": sessions["session_job_ms"],
            "tamper to zeroised": tamper["zone_ms"], "tamper trip to answer": tamper["ack_ms"]}
    bars(ax, list(rows), {"zone": (list(rows.values()), ZONE)}, title="Operations",
         unit="milliseconds", horizontal=True, log=True)


def steps_panel(ax: Axes, results: dict[str, Any]) -> None:
    steps = {k: v for k, v in results["applets"]["job_phases_ms"].items() if k != "total"}
    total = results["applets"]["job_phases_ms"].get("total")
    bars(ax, list(steps), {"zone": (list(steps.values()), ZONE)},
         title="A cold null job's steps" + (f" (total {total['median']:.0f} ms)" if total else ""),
         unit="milliseconds (zone medians)", horizontal=True)


PANELS = (boot_panel, rtt_panel, throughput_panel, jobs_panel, fill_panel, crypto_panel,
          latency_panel, steps_panel)


def render(results: dict[str, Any], path: Path) -> None:
    """Draw ``results`` (bench.py's JSON) into the PNG ``path``."""
    fig, axes = plt.subplots(2, 4, figsize=(22, 10))
    for panel, ax in zip(PANELS, axes.flat):
        panel(ax, results)
    meta = results.get("meta", {})
    fig.suptitle(f"make bench at {meta.get('commit', '?')}, {meta.get('date', '?')}: medians "
                 f"of {meta.get('options', {}).get('repeat', '?')} runs, error bars min-max "
                 "(zone: QEMU TCG; native: the same monitor on the host behind a unix socket)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("results", type=Path, help="bench.py's JSON")
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "results.png")
    args = ap.parse_args()
    render(json.loads(args.results.read_text()), args.output)
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
