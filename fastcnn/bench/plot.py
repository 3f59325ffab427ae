"""``--plot FILE.png``: a roofline chart and per-case bars of % of the ceiling.

matplotlib is an optional extra ("bench"); it is imported here only, with the Agg
backend, so the command works without a display.
"""

from __future__ import annotations

import numpy as np

from fastcnn.bench.cases import PEER


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise PlotUnavailableError(
            "--plot needs matplotlib: pip install 'fastcnn[bench]' (or pip install matplotlib)"
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _label(result: dict) -> str:
    return f"{result['op']} {result['case']} N{result['batch']} {result['direction']}"


def write_plot(document: dict, path: str) -> None:
    """Save the roofline with every case labelled (left) and fastcnn's speed-up over the
    peer per case (right) to ``path``."""
    pyplot = _pyplot()
    results = [r for r in document["results"] if r["status"] == "ok" and "flops_per_s" in r]
    ours = [r for r in results if r["library"] != PEER]
    compared = [r for r in ours if r.get("speedup_vs_peer")]
    cpu = document["ceilings"].get("cpu")
    settings = document.get("settings", {})
    figure, (roof_axes, bar_axes) = pyplot.subplots(
        1,
        2,
        figsize=(16, max(6.0, 0.3 * max(len(compared), len(ours) / 2) + 2)),
        gridspec_kw={"width_ratios": [1.1, 1]},
    )
    figure.suptitle(
        f"fastcnn bench: suite {settings.get('suite', '?')}, {settings.get('dtype', '?')}, "
        f"{settings.get('threads', '?')} threads, {document['machine'].get('cpu', '')}"
    )
    variants = sorted({r["variant"] for r in results}, key=lambda v: (v == PEER, v))
    colours = {v: pyplot.cm.tab10(i % 10) for i, v in enumerate(variants)}

    if cpu:
        peak = cpu["roofline"]["peak_flops"]
        bandwidth = cpu["roofline"]["bandwidth_bytes_per_s"]
        intensities = [r["intensity"] for r in results if r["intensity"] > 0] or [1.0]
        low = min(min(intensities) / 4, peak / bandwidth / 10)
        high = max(max(intensities) * 4, peak / bandwidth * 10)
        x = np.geomspace(low, high, 200)
        roof_axes.loglog(x, np.minimum(peak, x * bandwidth) / 1e9, "k-", label="roofline")
        gemm = cpu["peak_flops"]["gemm"].get(str(cpu["threads"]))
        if gemm:
            roof_axes.axhline(gemm / 1e9, color="grey", ls="--", lw=1, label="BLAS GEMM")
    for variant in variants:
        chosen = [r for r in results if r["variant"] == variant]
        roof_axes.scatter(
            [r["intensity"] for r in chosen],
            [r["flops_per_s"] / 1e9 for r in chosen],
            color=colours[variant],
            label=variant,
            marker="s" if variant == PEER else "o",
            zorder=3,
        )
    for result in ours:  # each of fastcnn's points names its case
        roof_axes.annotate(
            _label(result),
            (result["intensity"], result["flops_per_s"] / 1e9),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    roof_axes.set_xlabel("arithmetic intensity (FLOP / byte)")
    roof_axes.set_ylabel("GFLOP/s")
    roof_axes.set_title("roofline (circles: fastcnn, squares: the peer)")
    roof_axes.grid(True, which="both", alpha=0.3)
    roof_axes.legend(fontsize="small", loc="lower right")

    if compared:
        speedups = [r["speedup_vs_peer"] for r in compared]
        positions = np.arange(len(compared))
        # Bars grow from 1 (as fast as the peer): right when faster, left when slower.
        bar_axes.barh(
            positions,
            [value - 1 for value in speedups],
            left=1,
            color=[colours[r["variant"]] for r in compared],
        )
        for position, value in zip(positions, speedups, strict=True):
            bar_axes.text(value, position, f" {value:.2f}", va="center", fontsize=7)
        bar_axes.axvline(1.0, color="k", lw=1)
        bar_axes.set_xscale("log")
        from matplotlib.ticker import FuncFormatter

        bar_axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        bar_axes.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        labels = [f"{_label(r)} [{r['variant']}]" for r in compared]
        bar_axes.set_yticks(positions, labels, fontsize="small")
        bar_axes.invert_yaxis()
        bar_axes.set_xlabel(f"speed-up over {PEER} (its time / fastcnn's; > 1: fastcnn faster)")
        bar_axes.set_title("per case")
        bar_axes.grid(True, axis="x", which="both", alpha=0.3)
    else:
        bar_axes.text(0.5, 0.5, "no peer timed (--vs none)", ha="center", va="center")
        bar_axes.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
