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


def write_plot(document: dict, path: str) -> None:
    """Save the roofline (left) and the % of ceiling per case and variant (right) to ``path``."""
    pyplot = _pyplot()
    results = [r for r in document["results"] if r["status"] == "ok" and "flops_per_s" in r]
    cpu = document["ceilings"].get("cpu")
    figure, (roof_axes, bar_axes) = pyplot.subplots(
        1,
        2,
        figsize=(15, max(5.0, 0.28 * len(results) + 2)),
        gridspec_kw={"width_ratios": [1, 1.2]},
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
    roof_axes.set_xlabel("arithmetic intensity (FLOP / byte)")
    roof_axes.set_ylabel("GFLOP/s")
    roof_axes.set_title(f"roofline, {document['machine'].get('cpu', '')}")
    roof_axes.grid(True, which="both", alpha=0.3)
    roof_axes.legend(fontsize="small")

    labels = [f"{r['op']} {r['case']} {r['direction']} [{r['variant']}]" for r in results]
    fractions = [100 * r["roofline_fraction"] for r in results]
    positions = np.arange(len(results))
    bar_axes.barh(positions, fractions, color=[colours[r["variant"]] for r in results])
    bar_axes.set_yticks(positions, labels, fontsize="small")
    bar_axes.invert_yaxis()
    bar_axes.set_xlabel("% of roofline ceiling")
    bar_axes.set_title("per case")
    bar_axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
