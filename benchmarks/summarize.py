"""Side-by-side tables from ``fastcnn bench --json`` files: fastcnn beside the peer on one
row, the ratio, and the geometric mean of the ratios per op and direction.

    fastcnn bench --suite resnet50 --json resnet50.json
    python benchmarks/summarize.py resnet50.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json
import math


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
        geomean = math.exp(sum(map(math.log, values)) / len(values))
        lines.append(f"- {op} {direction} on {name}: geomean torch/ours {geomean:.2f} "
                     f"over {len(values)} cases")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="fastcnn bench --json outputs")
    for path in parser.parse_args().files:
        with open(path) as file:
            print(summarize(json.load(file)))


if __name__ == "__main__":
    main()
