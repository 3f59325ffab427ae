"""Turning a bench document into text: the results table, the ceilings, the GPU
section and the comparison with an earlier run (``--compare``)."""

from __future__ import annotations

import math

from fastcnn.bench.cases import PEER

#: A change smaller than this (or inside both runs' interquartile ranges) is noise.
COMPARE_THRESHOLD = 0.10

#: Columns of the results tables: the ratio first, the rate in the table's one unit.
TABLE_COLUMNS = (
    "case",
    "dir",
    "backend",
    "torch/ours",
    "ours ms",
    "± IQR",
    "torch ms",
    "{unit}",
    "% roof",
    "1st call ms",
)
#: A footnote for a % roof above 100 (the roofline assumes the data come from DRAM).
ABOVE_ROOF = (
    "* above 100%: the data stayed in cache, faster than the DRAM bandwidth the roofline assumes"
)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    milliseconds = seconds * 1e3
    return f"{milliseconds:.3g}" if milliseconds < 100 else f"{milliseconds:.0f}"


def _rate(result: dict) -> str:
    """GFLOP/s for a compute-bound case, GB/s for a memory-bound one (the table's unit)."""
    if "bound" not in result:
        return "—"
    if result["bound"] == "compute":
        return _significant(result["flops_per_s"] / 1e9)
    return _significant(result["bytes_per_s"] / 1e9)


def _significant(value: float) -> str:
    """Three significant digits, without an exponent for everyday sizes."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _suite(result: dict) -> str:
    """The suite a benchmark case belongs to (its first tag but "quick")."""
    tags = [t for t in result.get("tags", []) if t != "quick"]
    return tags[0] if tags else result["op"]


def _case_label(result: dict) -> str:
    return f"{result['op']} {result['case']} N{result['batch']}"


def table_rows(document: dict, bound: str | None = None) -> list[tuple[str, ...]]:
    """One row per fastcnn result (the peer's time beside it), of one ``bound``
    ("compute" or "memory"; None: all), in run order."""
    peer = {
        (r["case_key"], r.get("device", "cpu")): r
        for r in document["results"]
        if r["library"] == PEER and r["status"] == "ok"
    }
    rows = []
    for result in document["results"]:
        if result["library"] == PEER:
            continue
        if bound is not None and result.get("bound", "compute") != bound:
            continue
        variant = result["variant"]
        if result.get("ran") and result["ran"] != result.get("algo"):
            variant += f" ({result['ran']})"  # what "auto" ran
        head = (_case_label(result), result["direction"], variant)
        if result["status"] != "ok":
            rows.append((*head, "error: " + result.get("error", "")[:90], *[""] * 6))
            continue
        spread = (result["q3_s"] - result["q1_s"]) / 2 / result["median_s"]
        theirs = peer.get((result["case_key"], result.get("device", "cpu")))
        ratio = result.get("speedup_vs_peer")
        fraction = result.get("roofline_fraction")
        roof = "—" if fraction is None else f"{fraction:.0%}" + ("*" if fraction > 1 else "")
        rows.append(
            (
                *head,
                f"{ratio:.2f}" if ratio is not None else "—",
                _ms(result["median_s"]),
                f"{spread:.0%}",
                _ms(theirs["median_s"]) if theirs else "—",
                _rate(result),
                roof,
                _ms(result["first_call_s"]),
            )
        )
    return rows


def geomeans(document: dict, bound: str | None = None) -> list[tuple[str, str, str, float, int]]:
    """``(suite, direction, variant, geomean of torch/ours, cases)`` per group."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for result in document["results"]:
        ratio = result.get("speedup_vs_peer")
        if result["library"] == PEER or ratio is None or result["status"] != "ok":
            continue
        if bound is not None and result.get("bound", "compute") != bound:
            continue
        key = (_suite(result), result["direction"], result["variant"])
        groups.setdefault(key, []).append(ratio)
    return [
        (*key, math.exp(sum(map(math.log, ratios)) / len(ratios)), len(ratios))
        for key, ratios in groups.items()
    ]


def format_table(
    columns: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool = False
) -> str:
    """Aligned plain text, or a GitHub-flavoured Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in (columns, *rows)) for i in range(len(columns))]
    numeric = [i for i, name in enumerate(columns) if i >= 3]

    def line(row):
        cells = [
            str(cell).rjust(widths[i])
            if i in numeric and not str(cell).startswith("error")
            else str(cell).ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *[line(row) for row in rows]])


def ceilings_text(document: dict) -> str:
    """The ceilings in one or two lines."""
    lines = []
    cpu = document["ceilings"].get("cpu")
    if cpu:
        threads = str(cpu["threads"])
        fma, gemm = cpu["peak_flops"]["fma"], cpu["peak_flops"]["gemm"]
        copy = cpu["bandwidth_bytes_per_s"]["copy"]

        def pair(values: dict, scale: float) -> str:
            one = values.get("1")
            top = values.get(threads)
            if one is None or top is None:
                return "n/a"
            return f"{one / scale:.0f} (1 thread) / {top / scale:.0f} ({threads} threads)"

        lines.append(
            f"CPU ceilings, {cpu['dtype']}: FMA loop {pair(fma, 1e9)} GFLOP/s; "
            f"BLAS GEMM {pair(gemm, 1e9)} GFLOP/s; copy {pair(copy, 1e9)} GB/s (read + write)"
        )
        lines += [f"  ({error})" for error in cpu.get("errors", [])]
    gpu = document["ceilings"].get("gpu")
    if gpu:
        lines.append(
            f"GPU ceilings ({gpu.get('name', 'gpu')}), {gpu['dtype']}: GEMM "
            f"{gpu['roofline']['peak_flops'] / 1e12:.1f} TFLOP/s; copy "
            f"{gpu['roofline']['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s"
        )
    return "\n".join(lines)


def gpu_text(document: dict) -> str:
    """The CPU vs GPU section, or one line saying there is no GPU."""
    comparisons = document.get("gpu_vs_cpu")
    if document["machine"].get("gpu") is None:
        return "CPU vs GPU: no GPU here (CuPy with a CUDA device is needed); CPU only."
    if not comparisons:
        return f"CPU vs GPU: {document['machine']['gpu']} found, but no case ran on both."
    columns = ("case", "best CPU", "GPU/CPU speed", "with copies", "crossover batch")
    rows = [
        (
            c["case_key"],
            c["cpu_variant"],
            f"{c['gpu_speedup']:.2f}x",
            f"{c['gpu_speedup_with_copies']:.2f}x",
            str(c["crossover_batch"]) if c.get("crossover_batch") else "none",
        )
        for c in comparisons
    ]
    return f"CPU vs GPU ({document['machine']['gpu']}):\n" + format_table(columns, rows)


_TABLES = (("compute", "compute-bound", "GFLOP/s"), ("memory", "memory-bound", "GB/s"))


def _geomean_lines(means) -> list[str]:
    """One line per variant: each suite's forward and backward geomean of torch/ours."""
    by_variant: dict[str, dict[str, list[str]]] = {}
    for suite, direction, variant, mean, _ in means:
        by_variant.setdefault(variant, {}).setdefault(suite, []).append(f"{direction} {mean:.2f}")
    return [
        f"geomean torch/ours, {variant}: "
        + " · ".join(f"{suite} {' '.join(values)}" for suite, values in suites.items())
        for variant, suites in by_variant.items()
    ]


def report_text(document: dict, markdown: bool = False) -> str:
    """Everything the command prints after the run: ceilings, one table per bound with
    its geomeans under it, notes, the GPU line."""
    parts = [ceilings_text(document)]
    shown = False
    footnote = False
    for bound, title, unit in _TABLES:
        rows = table_rows(document, bound)
        if not rows:
            continue
        shown = True
        columns = tuple(c.format(unit=unit) for c in TABLE_COLUMNS)
        parts += ["", f"{title} ({unit}; torch/ours > 1: fastcnn is faster)"]
        parts.append(format_table(columns, rows, markdown))
        parts += _geomean_lines(geomeans(document, bound))
        footnote |= any(row[8].endswith("*") for row in rows if len(row) > 8)
    if not shown:
        parts += ["", "no results: no selected backend implements these ops (see notes)"]
    parts.append(
        "% roof: of min(peak FLOP/s, intensity x copy bandwidth) at the run's thread count"
        + (f"; {ABOVE_ROOF}" if footnote else "")
    )
    for note in document.get("notes", []):
        parts.append(f"note: {note}")
    parts.append(gpu_text(document))
    if document.get("interrupted"):
        parts.append("interrupted: the results above are what was measured before Ctrl-C")
    return "\n".join(parts)


def compare_documents(
    old: dict, new: dict, threshold: float = COMPARE_THRESHOLD
) -> tuple[list[tuple[str, ...]], list[str]]:
    """Rows ``(key, old ms, new ms, speed-up, verdict)`` for results in both runs, and notes.

    A change counts when the speed moved by more than ``threshold`` and the two runs'
    interquartile ranges do not overlap.
    """
    notes = []
    if old["machine"].get("cpu") != new["machine"].get("cpu"):
        notes.append(
            f"different machines: {old['machine'].get('cpu')} (old) vs "
            f"{new['machine'].get('cpu')} (new)"
        )
    if old.get("schema_version") != new.get("schema_version"):
        notes.append(
            f"schema versions differ: {old.get('schema_version')} vs {new.get('schema_version')}"
        )
    before = {r["key"]: r for r in old["results"] if r.get("status") == "ok"}
    rows = []
    for result in new["results"]:
        previous = before.get(result["key"])
        if result["status"] != "ok" or previous is None:
            continue
        speedup = previous["median_s"] / result["median_s"]
        separated = result["q3_s"] < previous["q1_s"] or result["q1_s"] > previous["q3_s"]
        if result["library"] == PEER:
            verdict = "(peer)"  # the peer's own variation: never fastcnn's regression
        elif speedup > 1 + threshold and separated:
            verdict = "faster"
        elif speedup < 1 / (1 + threshold) and separated:
            verdict = "REGRESSION"
        else:
            verdict = "same"
        rows.append(
            (
                result["key"],
                _ms(previous["median_s"]),
                _ms(result["median_s"]),
                f"{speedup:.2f}x",
                verdict,
            )
        )
    missing = len(set(before) - {r["key"] for r in new["results"]})
    if missing:
        notes.append(f"{missing} results of the old run have no match in this one")
    return rows, notes


def compare_text(old: dict, new: dict, markdown: bool = False) -> str:
    rows, notes = compare_documents(old, new)
    columns = ("key", "old ms", "new ms", "old/new", "verdict")
    if not rows:
        text = "compare: no result of this run matches the old run's keys"
    else:
        regressions = sum(row[-1] == "REGRESSION" for row in rows)
        faster = sum(row[-1] == "faster" for row in rows)
        ours = sum(row[-1] != "(peer)" for row in rows)
        text = (
            f"compared with {old.get('created', 'the old run')}: {faster} faster, "
            f"{regressions} regressions, {ours - faster - regressions} unchanged (a change "
            f"counts past {COMPARE_THRESHOLD:.0%} when the two runs' interquartile ranges "
            "do not overlap; the peer's rows are its own variation)\n"
            + format_table(columns, rows, markdown)
        )
    return "\n".join([text, *[f"note: {note}" for note in notes]])
