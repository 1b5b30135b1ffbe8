"""Benchmark: building the HTML report of a scored folder against scoring it, side by side in one run.

- ``score``: ``QualityScorer.iter_scores`` over the photos (the model loaded before the clock starts), as
  ``qualiclip-score`` runs it.
- ``report``: ``build_report`` of those rows with no pictures yet: each photo decoded once, its view and thumbnail
  written, then the page; what ``--report`` adds to a run.
- ``report again``: the same with every picture up to date (only the page is written), as when a report is rebuilt.

Wall time and the process's CPU time are reported, with other processes' load in cores beside each (a shared
machine only makes a run slower). The checkpoint is a full-size RN50 with random weights (``bench_score.py``'s
helper writes it once to ``--workdir``); the photos are ``tests/helpers.py`` ``natural_image`` JPEGs.

Usage (prints a Markdown section to append to ``benchmarks/RESULTS.md``)::

    python benchmarks/bench_report.py [--count 500] [--size 448x336] [--threads N] >> benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score import _busy_cpu_seconds, _checkpoint, _cpu_model, _photos  # noqa: E402


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(work: Callable[[], object]) -> Tuple[object, Dict[str, float]]:
    wall, cpu, busy = time.perf_counter(), _cpu_seconds(), _busy_cpu_seconds()
    result = work()
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    other = max(0.0, _busy_cpu_seconds() - busy - cpu) / wall
    return result, {"wall": wall, "cpu": cpu, "other": other}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", default="448x336", help="WIDTHxHEIGHT of the photos")
    parser.add_argument("--workdir", default="/tmp/qualiclip-bench", help="where the checkpoint and photos are kept")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from qualiclip_infer import QualityScorer
    from qualiclip_infer.report import build_report, rows_from_results

    load_before = os.getloadavg()[0]
    workdir = Path(args.workdir)
    checkpoint, _ = _checkpoint(workdir / "rn50-random.pth")
    folder = _photos(workdir / f"report-photos-{width}x{height}", width, height, args.count)
    paths = sorted(str(path) for path in folder.glob("photo*.jpg"))[: args.count]
    scorer = QualityScorer(checkpoint, device="cpu")
    results, score = _timed(lambda: list(scorer.iter_scores(paths)))
    rows = rows_from_results(results)
    target = workdir / "report-out"
    shutil.rmtree(target, ignore_errors=True)
    page = str(target / "report.html")
    _, report = _timed(lambda: build_report(rows, page))
    _, again = _timed(lambda: build_report(rows, page))
    pictures = sum(path.stat().st_size for path in (target / "report_files").rglob("*.jpg"))

    print(f"\n## HTML report against scoring (issue 20, `benchmarks/bench_report.py`, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
    print(f"- Machine: {_cpu_model()} (lscpu), {os.cpu_count()} logical CPUs; load average {load_before:.2f} before "
          f"the run, {os.getloadavg()[0]:.2f} after; Python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; device cpu, fp32")
    print(f"- {len(paths)} JPEG photos of {width}x{height}; full-size RN50 (random weights); one run of each, in "
          f"this order; the report's pictures: {pictures / 2**20:.1f} MiB ({pictures / len(paths) / 1024:.0f} KiB "
          f"a photo: a view and a thumbnail)\n")
    print("| step | wall s | CPU s | other processes' load (cores) | wall, relative to scoring |")
    print("|---|---:|---:|---:|---:|")
    for name, figures in (("score (iter_scores)", score), ("report, pictures made", report),
                          ("report again, pictures up to date", again)):
        print(f"| {name} | {figures['wall']:.2f} | {figures['cpu']:.2f} | {figures['other']:.2f} | "
              f"{figures['wall'] / score['wall']:.3f}x |")


if __name__ == "__main__":
    main()
