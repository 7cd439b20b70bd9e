#!/usr/bin/env python
"""The README's table of the Larq zoo configs (configs/zoo/), from what `bnn check`
reports for each of them: parameters, model size and MACs by precision.

    python scripts/zoo_table.py             # check every config, print the table
    python scripts/zoo_table.py --reference tests/data/zoo_reference.json

``--reference`` renders the same table from the zoo's own figures instead (which
tests/test_zoo.py asserts `bnn check` reproduces), in a second rather than a minute.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

ZOO_CONFIGS = {
    "BinaryAlexNet": "binary_alexnet.yaml",
    "XNORNet": "xnornet.yaml",
    "DoReFaNet": "dorefanet.yaml",
    "BiRealNet": "birealnet.yaml",
    "BinaryResNetE18": "binary_resnet_e18.yaml",
    "BinaryDenseNet28": "binary_densenet28.yaml",
    "BinaryDenseNet37": "binary_densenet37.yaml",
    "BinaryDenseNet37Dilated": "binary_densenet37_dilated.yaml",
    "BinaryDenseNet45": "binary_densenet45.yaml",
    "MeliusNet22": "meliusnet22.yaml",
    "RealToBinaryNet": "real_to_binary_net.yaml",
    "QuickNetSmall": "quicknet_small.yaml",
    "QuickNet": "quicknet.yaml",
    "QuickNetLarge": "quicknet_large.yaml",
}
"""Each Larq zoo model with its config in configs/zoo/, in the zoo's order."""


def config_figures(name: str) -> dict[str, Any]:
    """The reference.json figures of a zoo config, as `bnn check` computes them."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from bnn_cli.assemble.report import check_config

    return check_config(ROOT / "configs" / "zoo" / ZOO_CONFIGS[name], []) \
        .summary.reference_figures()


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def _macs(figures: dict[str, Any], binary: bool) -> int:
    macs = figures["macs_by_precision"]
    return sum(n for bits, n in macs.items() if (bits == "1") == binary)


def table(figures: dict[str, dict[str, Any]]) -> str:
    """A Markdown table, one row per zoo model, in :data:`ZOO_CONFIGS` order."""
    rows = ["| config | zoo model | parameters | binary parameters | model size "
            "| binary MACs | other MACs |",
            "|---|---|--:|--:|--:|--:|--:|"]
    for name, file in ZOO_CONFIGS.items():
        f = figures[name]
        rows.append(
            f"| `configs/zoo/{file}` | {name} | {f['count_params']:,} "
            f"| {f['summary_params_by_bitwidth'].get('1', 0):,} "
            f"| {f['memory_bits'] / 8 / 2**20:.2f} MiB "
            f"| {_millions(_macs(f, True))} | {_millions(_macs(f, False))} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="render from this reference.json")
    args = parser.parse_args()
    if args.reference:
        figures = json.loads(args.reference.read_text())
    else:
        figures = {name: config_figures(name) for name in ZOO_CONFIGS}
    print(table(figures))


if __name__ == "__main__":
    main()
