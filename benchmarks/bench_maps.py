"""Benchmark: quality maps on a 1024x768 photo, each against the baseline the issue sets, measured side by side.

- ``windows`` (defaults: 224-pixel windows every 112 pixels, 48 of them, plus the whole image's score) against
  scoring the same 48 crops one by one with ``scorer.score(crop)``; target: not slower.
- ``tokens`` (one forward pass) against a plain ``scorer.score(photo)``; target: at most 1.2x its time.

The four runners alternate within each repeat, after one warm-up round, and the best time of each is reported (a shared
machine only ever makes a run slower). The checkpoint is a full-size RN50 with random weights, written once to
``--workdir`` by ``bench_score.py``'s helper; the photo is ``conftest.natural_image``.

Usage (prints a Markdown section to append to ``benchmarks/RESULTS.md``)::

    python benchmarks/bench_maps.py [--device cpu|cuda] [--repeats 3] >> benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score import _busy_cpu_seconds, _checkpoint, _cpu_model, _test_helpers, _yes  # noqa: E402

WIDTH, HEIGHT = 1024, 768
TOKENS_TARGET = 1.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/qualiclip-bench", help="where the RN50 checkpoint is kept")
    args = parser.parse_args()

    import torch

    from qualiclip_infer import QualityScorer

    checkpoint, _ = _checkpoint(Path(args.workdir) / "rn50-random.pth")
    scorer = QualityScorer(checkpoint, device=args.device)
    photo = torch.from_numpy(_test_helpers().natural_image(WIDTH, HEIGHT, 0)).permute(2, 0, 1).float() / 255
    boxes = scorer.quality_map(photo).boxes.view(-1, 4).tolist()

    def one_by_one() -> None:
        for left, top, right, bottom in boxes:
            scorer.score(photo[:, top:bottom, left:right])

    runners: Dict[str, Callable[[], object]] = {
        "windows map": lambda: scorer.quality_map(photo),
        "48 crops one by one": one_by_one,
        "tokens map": lambda: scorer.quality_map(photo, method="tokens"),
        "plain score": lambda: scorer.score(photo),
    }
    times: Dict[str, List[float]] = {name: [] for name in runners}
    load: Dict[str, List[float]] = {name: [] for name in runners}
    for repeat in range(args.repeats + 1):
        for name, run in runners.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            busy, own, start = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
            run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if repeat:  # the first round warms up allocators and kernels
                times[name].append(elapsed)
                others = _busy_cpu_seconds() - busy - (_own_cpu_seconds() - own)
                load[name].append(max(0.0, others) / elapsed)
    print(_report(times, load, len(boxes), scorer, args))


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _report(times: Dict[str, List[float]], load: Dict[str, List[float]], windows: int, scorer, args) -> str:
    import torch

    best = {name: min(values) for name, values in times.items()}
    windows_ratio = best["windows map"] / best["48 crops one by one"]
    tokens_ratio = best["tokens map"] / best["plain score"]
    lines = [
        "",
        "## Quality maps (`benchmarks/bench_maps.py`)",
        "",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} logical CPUs; device {args.device}, fp32, "
        f"{torch.get_num_threads()} torch threads",
        f"- Date: {datetime.date.today().isoformat()}; Python {platform.python_version()}, torch {torch.__version__}",
        f"- Command: `python benchmarks/bench_maps.py --device {args.device} --repeats {args.repeats}`; full-size RN50 "
        f"(random weights), one {WIDTH}x{HEIGHT} photo, {windows} windows; batch size {scorer.batch_size}, at most "
        f"{scorer.max_batch_pixels / 2**20:g} Mpx per batch; best of {args.repeats} after a warm-up round",
        "",
        "| runner | best s | each run: s (other processes' load, cores) |",
        "|---|---:|---|",
    ]
    for name, values in times.items():
        runs = ", ".join(f"{value:.2f} ({busy:.2f})" for value, busy in zip(values, load[name]))
        lines.append(f"| {name} | {best[name]:.2f} | {runs} |")
    lines += [
        "",
        "| target | result | met |",
        "|---|---|---|",
        f"| windows map not slower than its {windows} crops one by one | {windows_ratio:.2f}x their time | "
        f"{_yes(windows_ratio <= 1)} |",
        f"| tokens map at most {TOKENS_TARGET}x a plain score | {tokens_ratio:.2f}x | "
        f"{_yes(tokens_ratio <= TOKENS_TARGET)} |",
        "",
        "The windows map also scores the whole image once (for its `score`); the crops one by one do not.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
