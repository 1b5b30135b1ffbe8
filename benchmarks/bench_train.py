"""Benchmark: ``qualiclip-train fit`` on 10 photos with a tiny CLIP, old code against new, side by side.

The run of issue 12: ``qualiclip-train fit --images pristine/ --out model.pth --init tiny.pth --steps 200 --lr 3e-4
--device cpu --seed 0`` with every other option at its default, and the control ``--batch-size 4 --val-every 0``.
Each runs as a fresh child process against each code tree (``--old``: e.g. a checkout of main before the change;
``--new``: this tree), one after the other, with a wall-clock cap (a run that hits it is reported with the steps it
reached). Reported: wall time, CPU time of the process and its loader workers, steps reached, held-out level SRCC
before and after, and the load average when it started (the machine may be shared).

``--costs`` instead measures what the default validation interval rests on (``qualiclip_infer.train.schedule``): CPU
time per crop-level of a training step (degradation, forward, backward, AdamW) and of a validation (degradation,
forward), for the tiny CLIP and for a full-size RN50, single-threaded, at 224 pixels, on the run's own crops.

The photos are ``tests/helpers.py``'s ``natural_image`` at 320x256, JPEG quality 90; the run's tiny CLIP is its
``untrained_clip`` (the one the issue trained, and the ten-photo test's), the cost checkpoints its ``write_checkpoint``
(random weights).

Usage::

    python benchmarks/bench_train.py --old /path/to/old/checkout [--cap-min 30]
    python benchmarks/bench_train.py --costs
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
ISSUE_COMMAND = ["--steps", "200", "--lr", "3e-4", "--device", "cpu", "--seed", "0"]
VARIANTS = {"defaults": [], "control": ["--batch-size", "4", "--val-every", "0"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, help="root of the old code tree (the package under it is imported)")
    parser.add_argument("--old-label", help="how the report names the old tree (default: its git commit)")
    parser.add_argument("--new", type=Path, default=REPO, help="root of the new code tree (default: this one)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qualiclip-bench-train"))
    parser.add_argument("--cap-min", type=float, default=30.0, help="wall-clock cap per run, minutes (default 30)")
    parser.add_argument("--costs", action="store_true", help="measure training and validation cost per crop-level")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    if args.costs:
        _costs(args.workdir)
        return
    folder, checkpoint = _inputs(args.workdir)
    trees = {"old": args.old, "new": args.new} if args.old else {"new": args.new}
    results = []
    for variant, extra in VARIANTS.items():
        for label, tree in trees.items():
            out = args.workdir / f"{label}-{variant}.pth"
            command = [sys.executable, "-m", "qualiclip_infer.train", "fit", "--images", str(folder), "--out",
                       str(out), "--init", str(checkpoint), *ISSUE_COMMAND, *extra]
            results.append(dict(tree=label, variant=variant, **_run(command, tree, args.cap_min * 60)))
            print(f"{label} {variant}: {results[-1]}", file=sys.stderr)
    labels = {label: (args.old_label if label == "old" and args.old_label else _commit(tree))
              for label, tree in trees.items()}
    print(_report(results, labels, args.cap_min))


def _inputs(workdir: Path):
    from helpers import TINY_CONFIG, natural_image, save_image, untrained_clip, write_checkpoint

    folder = workdir / "pristine"
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(10):
        save_image(folder / f"photo{seed:02d}.jpg", natural_image(320, 256, seed=seed), quality=90)
    return folder, write_checkpoint(workdir / "tiny.pth", TINY_CONFIG, seed=0, build=untrained_clip)


def _run(command: List[str], tree: Path, cap_s: float) -> Dict[str, object]:
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env=environment, cwd=tree)
    lines: List[str] = []
    try:
        _, err = process.communicate(timeout=cap_s)
        lines = err.splitlines()
        finished = process.returncode == 0
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        lines = err.splitlines()
        finished = False
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    history = [(int(m.group(1)), float(m.group(2))) for m in
               (re.search(r"step (\d+) .*level_srcc (-?[\d.e-]+)", line) for line in lines) if m]
    return dict(finished=finished, wall_s=wall, cpu_s=(after.ru_utime + after.ru_stime)
                - (before.ru_utime + before.ru_stime), steps=max((step for step, _ in history), default=0),
                validations=len(history), srcc_before=history[0][1] if history else None,
                srcc_after=history[-1][1] if history else None, load=load,
                last_line=lines[-1] if lines else "")


def _commit(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or str(tree)


def _report(results: List[dict], labels: Dict[str, str], cap_min: float) -> str:
    rows = ["| variant | code | finished | wall s | CPU s | steps | validations | level SRCC before → after | "
            "load avg at start |", "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for r in results:
        srcc = (f"{r['srcc_before']:.3f} → {r['srcc_after']:.3f}" if r["srcc_before"] is not None else "–")
        rows.append(f"| {r['variant']} | {r['tree']} ({labels[r['tree']]}) | "
                    f"{'yes' if r['finished'] else f'no (cap {cap_min:g} min)'} | {r['wall_s']:.0f} | "
                    f"{r['cpu_s']:.0f} | {r['steps']} | {r['validations']} | {srcc} | {r['load']:.1f} |")
    header = [f"- Machine: {_cpu_name()}, {os.cpu_count()} logical CPUs; {platform.python_version()}",
              f"- Date: {datetime.date.today().isoformat()}",
              f"- Command: `python benchmarks/bench_train.py --old OLD --cap-min {cap_min:g}`"]
    return "\n".join(header + [""] + rows)


def _cpu_name() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def _costs(workdir: Path) -> None:
    """CPU seconds per crop-level: a training step against a validation, tiny CLIP and RN50, at 224 pixels.

    Both sides run on the run's own data: training steps on the loader's batches of the 10 photos (each sample a
    random distortion type), validation on its held-out crops.
    """
    import torch
    from helpers import RN50_CONFIG, TINY_CONFIG, write_checkpoint

    from qualiclip_infer.train.loop import TrainConfig, Trainer

    torch.set_num_threads(1)
    folder, _ = _inputs(workdir)
    print("| model | batch | val crops | train CPU ms per crop-level | validation CPU ms per crop-level | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, config, batch, val_crops, steps in (("tiny", TINY_CONFIG, 16, 240, 8), ("RN50", RN50_CONFIG, 2, 16, 8)):
        checkpoint = write_checkpoint(workdir / f"{name}.pth", config, seed=0)
        trainer = Trainer(TrainConfig(images=folder, out=workdir / "costs.pth", init=checkpoint, device="cpu",
                                      batch_size=batch, val_crops=val_crops, workers=0, steps=steps))
        levels = len(trainer.levels)
        trainer.evaluate()  # warm-up; cuts the held-out crops once, as a run does
        batches = list(trainer._train_loader())  # decoded and cropped up front: the loader workers' share
        started = time.process_time()
        for micro_batch in batches:
            trainer._forward_backward(micro_batch)
            trainer.micro_batch += 1
            trainer._optimizer_step()
        train = (time.process_time() - started) / (len(batches) * batch * 2 * levels)
        val = _cpu_per_call(trainer.evaluate) / (val_crops * levels)
        print(f"| {name} | {batch} | {val_crops} | {train * 1000:.2f} | {val * 1000:.2f} | {train / val:.2f} |",
              flush=True)


def _cpu_per_call(function, repeats: int = 3) -> float:
    """Least CPU time of ``repeats`` calls (contention only ever adds to it)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        function()
        best = min(best, time.process_time() - started)
    return best


if __name__ == "__main__":
    main()
