"""Benchmark: quality maps on a 1024x768 photo, each against the baseline the issue sets, measured side by side.

- ``windows`` (defaults: 224-pixel windows every 112 pixels, 48 of them, plus the whole image's score) against
  scoring the same 48 crops one by one with ``scorer.score(crop)``; target: not slower.
- ``tokens`` (one forward pass) against a plain ``scorer.score(photo)``; target: at most 1.2x its time.

Both wall time and the process's own CPU time are reported. A target is about time, as a user waits for it: it
counts as met when the wall-time ratio meets it and no run had more than a quarter of a core of other load (a
shared machine stretches wall times unevenly, and then the verdict says so instead). The CPU-time ratio tells
how much of a gain comes from keeping more cores busy.

The four runners alternate within each repeat, after one warm-up round, and the best time of each is reported (a shared
machine only ever makes a run slower). The checkpoint is a full-size RN50 with random weights, written once to
``--workdir`` by ``bench_score.py``'s helper; the photo is ``tests/helpers.py`` ``natural_image``.

Usage (prints a Markdown section to append to ``benchmarks/RESULTS.md``)::

    python benchmarks/bench_maps.py [--device cpu|cuda] [--repeats 3] [--threads N] [--max-batch-pixels N] \\
        >> benchmarks/RESULTS.md
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
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score import _busy_cpu_seconds, _checkpoint, _cpu_model, _test_helpers  # noqa: E402

WIDTH, HEIGHT = 1024, 768
TOKENS_TARGET = 1.2
QUIET_LOAD = 0.25  # cores of other processes' load above which wall times are not judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/qualiclip-bench", help="where the RN50 checkpoint is kept")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--max-batch-pixels", type=int, help="the scorer's pixel cap per batch (default: its own)")
    parser.add_argument("--crop-batches", metavar="N,N,...",
                        help="instead: time score_tensor on the 48 crops in batches of each size (e.g. 1,4,8,16,48)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from qualiclip_infer import QualityScorer

    checkpoint, _ = _checkpoint(Path(args.workdir) / "rn50-random.pth")
    scorer = QualityScorer(checkpoint, device=args.device, max_batch_pixels=args.max_batch_pixels)
    photo = torch.from_numpy(_test_helpers().natural_image(WIDTH, HEIGHT, 0)).permute(2, 0, 1).float() / 255
    boxes = scorer.quality_map(photo).boxes.view(-1, 4).tolist()

    def one_by_one() -> None:
        for left, top, right, bottom in boxes:
            scorer.score(photo[:, top:bottom, left:right])

    if args.crop_batches:
        crops = torch.stack([photo[:, top:bottom, left:right] for left, top, right, bottom in boxes])
        sizes = [int(size) for size in args.crop_batches.split(",")]
        runs: Dict[int, List[Tuple[float, float]]] = {size: [] for size in sizes}
        for repeat in range(args.repeats + 1):
            for size in sizes:
                own, start = _own_cpu_seconds(), time.perf_counter()
                for chunk in crops.split(size):
                    scorer.score_tensor(chunk)
                if repeat:
                    runs[size].append((time.perf_counter() - start, _own_cpu_seconds() - own))
        print(f"\n{len(boxes)} crops of 224x224 through `score_tensor`, {torch.get_num_threads()} torch threads, "
              f"best of {args.repeats}:\n\n| batch | best wall s | best CPU s |\n|---:|---:|---:|")
        for size, values in runs.items():
            print(f"| {size} | {min(v[0] for v in values):.2f} | {min(v[1] for v in values):.2f} |")
        return

    runners: Dict[str, Callable[[], object]] = {
        "windows map": lambda: scorer.quality_map(photo),
        "48 crops one by one": one_by_one,
        "tokens map": lambda: scorer.quality_map(photo, method="tokens"),
        "plain score": lambda: scorer.score(photo),
    }
    times: Dict[str, List[float]] = {name: [] for name in runners}
    cpu: Dict[str, List[float]] = {name: [] for name in runners}
    load: Dict[str, List[float]] = {name: [] for name in runners}
    for repeat in range(args.repeats + 1):
        for name, run in runners.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            busy, own, start = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
            run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed, used = time.perf_counter() - start, _own_cpu_seconds() - own
            if repeat:  # the first round warms up allocators and kernels
                times[name].append(elapsed)
                cpu[name].append(used)
                load[name].append(max(0.0, _busy_cpu_seconds() - busy - used) / elapsed)
    print(_report(times, cpu, load, len(boxes), scorer, args))


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _report(times: Dict[str, List[float]], cpu: Dict[str, List[float]], load: Dict[str, List[float]], windows: int,
            scorer, args) -> str:
    import torch

    best = {name: min(values) for name, values in times.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    targets = [(f"windows map not slower than its {windows} crops one by one", "windows map", "48 crops one by one",
                1.0),
               (f"tokens map at most {TOKENS_TARGET}x a plain score", "tokens map", "plain score", TOKENS_TARGET)]
    lines = [
        "",
        "## Quality maps (`benchmarks/bench_maps.py`)",
        "",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} logical CPUs; device {args.device}, fp32, "
        f"{torch.get_num_threads()} torch threads",
        f"- Date: {datetime.date.today().isoformat()}; Python {platform.python_version()}, torch {torch.__version__}",
        f"- Command: `python benchmarks/bench_maps.py --device {args.device} --repeats {args.repeats}"
        f"{f' --threads {args.threads}' if args.threads else ''}"
        f"{f' --max-batch-pixels {args.max_batch_pixels}' if args.max_batch_pixels else ''}`; full-size RN50 "
        f"(random weights), one {WIDTH}x{HEIGHT} photo, {windows} windows; batch size {scorer.batch_size}, at most "
        f"{scorer.max_batch_pixels / 2**20:g} Mpx per batch; best of {args.repeats} after a warm-up round",
        "",
        "| runner | best wall s | best CPU s | each run: wall s (other processes' load, cores) |",
        "|---|---:|---:|---|",
    ]
    for name, values in times.items():
        runs = ", ".join(f"{value:.2f} ({busy:.2f})" for value, busy in zip(values, load[name]))
        lines.append(f"| {name} | {best[name]:.2f} | {best_cpu[name]:.2f} | {runs} |")
    lines += ["", "| target | wall-time ratio | CPU-time ratio | met |", "|---|---:|---:|---|"]
    quiet = max(value for values in load.values() for value in values) <= QUIET_LOAD
    for label, ours, baseline, limit in targets:
        wall, used = best[ours] / best[baseline], best_cpu[ours] / best_cpu[baseline]
        verdict = _yes(wall <= limit) if quiet else "not judged: other load over a quarter core"
        lines.append(f"| {label} | {wall:.2f}x | {used:.2f}x | {verdict} |")
    lines += [
        "",
        "The windows map also scores the whole image once (for its `score`); the crops one by one do not. CPU time is",
        "this process's own (user + system): on a machine shared with other work it moves far less than wall time.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
