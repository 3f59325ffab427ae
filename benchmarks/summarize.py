"""Side-by-side tables from ``fastcnn bench --json`` files: fastcnn beside the peer on one
row, the ratio, and the geometric mean of the ratios per op and direction.

    fastcnn bench --suite resnet50 --json resnet50.json
    python benchmarks/summarize.py resnet50.json [more.json ...]

With ``--repeats``, the files are repeated runs of one command (the machines are noisy):
one table with each case's ratio in every run and their median, then the geometric
means of the median ratios per suite (the first word of the case names) and direction.

    python benchmarks/summarize.py --repeats run1.json run2.json run3.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics


def _rate(result: dict) -> str:
    if result["bound"] == "compute":
        return f"{result['flops_per_s'] / 1e9:.0f} GFLOP/s"
    return f"{result['bytes_per_s'] / 1e9:.1f} GB/s"


def summarize(document: dict) -> str:
    """A Markdown table of every fastcnn result with its peer, then the geomeans."""
    by_case: dict[tuple, dict[str, dict]] = {}
    for result in document["results"]:
        key = (result["op"], result["case"], result["direction"])
        name = "torch" if result["library"] == "torch" else result["backend"]
        if result.get("algo"):
            name += f":{result['algo']}"
        by_case.setdefault(key, {})[name] = result
    lines = [
        "| op | case | dir | backend | ms | rate | % roof | torch ms | torch rate | torch/ours |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios: dict[tuple[str, str, str], list[float]] = {}
    for (op, case, direction), results in by_case.items():
        peer = results.get("torch")
        for name, result in results.items():
            if name == "torch":
                continue
            if peer is None:
                lines.append(f"| {op} | {case} | {direction} | {name} | "
                             f"{result['median_s'] * 1e3:.3g} | {_rate(result)} | "
                             f"{100 * result['roofline_fraction']:.0f}% | | | |")  # fmt: skip
                continue
            ratio = peer["median_s"] / result["median_s"]
            ratios.setdefault((op, direction, name), []).append(ratio)
            lines.append(
                f"| {op} | {case} | {direction} | {name} | {result['median_s'] * 1e3:.3g} | "
                f"{_rate(result)} | {100 * result['roofline_fraction']:.0f}% | "
                f"{peer['median_s'] * 1e3:.3g} | {_rate(peer)} | **{ratio:.2f}** |"
            )
    lines.append("")
    for (op, direction, name), values in ratios.items():
        geomean = _geomean(values)
        lines.append(f"- {op} {direction} on {name}: geomean torch/ours {geomean:.2f} "
                     f"over {len(values)} cases")  # fmt: skip
    return "\n".join(lines)


def _geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def summarize_repeats(documents: list[dict]) -> str:
    """Per case: fastcnn's median run (its ms, rate and % of the roofline), the peer's
    median ms, every run's ratio and their median; then the geometric mean of the median
    ratios per suite and direction."""
    runs: dict[tuple, list[tuple[dict, dict]]] = {}
    for document in documents:
        peers = {
            (r["op"], r["case"], r["direction"]): r
            for r in document["results"]
            if r["library"] == "torch" and r["status"] == "ok"
        }
        for result in document["results"]:
            key = (result["op"], result["case"], result["direction"])
            if result["library"] == "torch" or result["status"] != "ok" or key not in peers:
                continue
            name = result["backend"] + (f":{result['algo']}" if result.get("algo") else "")
            runs.setdefault((*key, name), []).append((result, peers[key]))
    lines = [
        "| op | case | dir | backend | ms | rate | % roof | torch ms | torch/ours per run "
        "| median |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    suites: dict[tuple[str, str, str, str], list[float]] = {}
    for (op, case, direction, name), pairs in runs.items():
        ratios = [peer["median_s"] / ours["median_s"] for ours, peer in pairs]
        ours_runs = [ours for ours, _ in pairs]
        typical = sorted(ours_runs, key=lambda r: r["median_s"])[(len(ours_runs) - 1) // 2]
        peer_ms = statistics.median(peer["median_s"] for _, peer in pairs) * 1e3
        median = statistics.median(ratios)
        each = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        lines.append(f"| {op} | {case} | {direction} | {name} | "
                     f"{typical['median_s'] * 1e3:.3g} | {_rate(typical)} | "
                     f"{100 * typical['roofline_fraction']:.0f}% | {peer_ms:.3g} | {each} | "
                     f"**{median:.2f}** |")  # fmt: skip
        suites.setdefault((op, case.split()[0], direction, name), []).append(median)
    lines += ["", "| op | suite | dir | backend | cases | geomean of medians |"]
    lines.append("|---|---|---|---|---|---|")
    for (op, suite, direction, name), medians in suites.items():
        lines.append(f"| {op} | {suite} | {direction} | {name} | {len(medians)} | "
                     f"**{_geomean(medians):.2f}** |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="fastcnn bench --json outputs")
    parser.add_argument(
        "--repeats", action="store_true", help="the files are repeated runs: median ratios"
    )
    args = parser.parse_args()
    documents = []
    for path in args.files:
        with open(path) as file:
            documents.append(json.load(file))
    if args.repeats:
        print(summarize_repeats(documents))
        return
    for document in documents:
        print(summarize(document))


if __name__ == "__main__":
    main()
