"""Benchmark: how long each command's ``--help`` takes, as a fresh process (what a user waits for at a prompt).

Every command parses its arguments before it imports torch, so ``--help`` and usage errors are instant. Each command
is run ``--repeats`` times, alternating with the same commands from another source tree (``--before``) when one is
given; the figures are medians of wall seconds, with the load average beside them.

Usage::

    python benchmarks/bench_startup.py --before /path/to/old/checkout --repeats 7
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_score import _cpu_model  # noqa: E402
COMMANDS = {  # name: module run with -m; a tree that lacks one is reported as such
    "qualiclip-score": "qualiclip_infer",
    "qualiclip-eval": "qualiclip_infer.eval",
    "qualiclip-train": "qualiclip_infer.train",
    "qualiclip-report": "qualiclip_infer.report",
    "qualiclip-export": "qualiclip_infer.export_cli",
    "qualiclip-filter": "qualiclip_infer.filter_cli",
}


def help_seconds(tree: Path, module: str) -> Optional[float]:
    """Wall seconds of ``python -m MODULE --help`` with ``tree`` first on the path; ``None`` where the tree has no
    such module (the installed package's would be found instead) or it fails there."""
    parts = module.split(".")
    if not ((tree.joinpath(*parts).with_suffix(".py")).is_file() or (tree.joinpath(*parts) / "__main__.py").is_file()):
        return None
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    # From inside the tree: `python -m` puts the working folder first on the path, before PYTHONPATH.
    result = subprocess.run([sys.executable, "-m", module, "--help"], env=environment, capture_output=True, cwd=tree)
    elapsed = time.perf_counter() - start
    return elapsed if result.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="another source tree, measured side by side")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    trees = {"ours": REPO, **({"before": Path(args.before).resolve()} if args.before else {})}
    times: Dict[str, Dict[str, List[float]]] = {name: {tree: [] for tree in trees} for name in COMMANDS}
    load = os.getloadavg()
    for _ in range(args.repeats):
        for name, module in COMMANDS.items():
            for tree_name, tree in trees.items():
                seconds = help_seconds(tree, module)
                if seconds is not None:
                    times[name][tree_name].append(seconds)
    print(f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {_cpu_model()}, "
          f"{os.cpu_count()} logical CPUs; Python {platform.python_version()}; load average "
          f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after; medians of {args.repeats} runs")
    score = statistics.median(times["qualiclip-score"]["ours"])
    header = "| command | --help, s | vs qualiclip-score --help |" + (" before, s |" if args.before else "")
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in COMMANDS:
        ours = times[name]["ours"]
        row = f"| `{name}` | {statistics.median(ours):.3f} | {statistics.median(ours) / score:.2f}x |"
        if args.before:
            before = times[name]["before"]
            row += f" {statistics.median(before):.3f} |" if before else " (no such command) |"
        print(row)


if __name__ == "__main__":
    main()
