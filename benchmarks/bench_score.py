"""Benchmark: ``qualiclip-score`` end to end (start-up included) against a loop that scores as the official README does.

Every run is a fresh process, timed from the outside as a user would see it: **first row** (launch until the first
output row arrives), **wall** (launch until exit), **rows/s** after the first row, the process's **CPU** seconds
(user + system) and **peak RSS**. Runners:

- ``ours``: ``python -m qualiclip_infer FOLDER --weights W --format csv`` (all else default) from this checkout.
- ``before``: the same command from another source tree (``--before``, e.g. the main branch's checkout), so a change
  is measured side by side with the code it replaces.
- ``official``: written here, the way the official QualiCLIP README scores: ``import open_clip`` and torchvision's
  transforms, the whole CLIP RN50 built and loaded with a plain (not memory-mapped) ``torch.load``, one image at a
  time, ``ToTensor`` + ``Normalize``, an attention pool computing full multi-head attention over all tokens without
  the positional embedding, output at the mean token. It prints each row as it is scored.

Photo sets: 1, 60 and 500 JPEGs of 224x224 and 8 of 1024x768 (``tests/helpers.py`` ``natural_image``, quality 90). The checkpoint
is a full-size RN50 with random weights (``tests/helpers.py`` ``write_checkpoint``, ~400 MB). Both are kept under ``--workdir``.

Runs alternate between runners, ``--repeats`` times per set, and every figure is the median. On a shared machine
other processes slow a run down far more than their CPU share (torch's threads wait for each other at every layer),
so each run also records the load others put on the CPUs while it ran (from ``/proc/stat``, in cores), and the CPU
seconds, which load hardly changes.

Usage::

    python benchmarks/bench_score.py --before /work/main --repeats 3 > report.md
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SETS = {  # name: (width, height, count)
    "1 × 224²": (224, 224, 1),
    "60 × 224²": (224, 224, 60),
    "500 × 224²": (224, 224, 500),
    "8 × 1024×768": (1024, 768, 8),
}
STARTUP_SET = "1 × 224²"
STARTUP_TARGET_S = 2.5  # launch to first row for one 224x224 image (issue 7)


def main() -> None:
    args = _parse_args()
    if args.official_loop:
        _official_loop(json.loads(args.official_loop))
        return
    workdir = Path(args.workdir)
    checkpoint, rn50_config = _checkpoint(workdir / "rn50-random.pth")
    runners = {"ours": REPO}
    if args.before:
        runners["before"] = Path(args.before).resolve()
    runners["official"] = None
    chosen = {name: SETS[name] for name in SETS if not args.sets or any(s in name for s in args.sets)}
    load_at_start = os.getloadavg()
    results: Dict[str, Dict[str, List[dict]]] = {}
    for name, (width, height, count) in chosen.items():
        folder = _photos(workdir / f"{width}x{height}x{count}", width, height, count)
        results[name] = {runner: [] for runner in runners}
        for _ in range(args.repeats):
            for runner, tree in runners.items():
                run = _run(_command(runner, tree, folder, checkpoint, rn50_config), tree or REPO, count)
                results[name][runner].append(run)
                print(f"{name} {runner}: first row {run['first_row_s']:.2f} s, wall {run['wall_s']:.2f} s, "
                      f"{run['rows_per_s']:.1f} rows/s, cpu {run['cpu_s']:.2f} s, {run['peak_rss_mb']:.0f} MB, "
                      f"other load {run['other_cores']:.2f}", file=sys.stderr)
    print(_report(results, args, load_at_start))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="source tree whose qualiclip_infer is measured as 'before' (optional)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per runner and set; medians are reported")
    parser.add_argument("--sets", nargs="*", help="only the sets whose names contain one of these strings")
    parser.add_argument("--workdir", default="/tmp/qualiclip-bench", help="checkpoint and photos")
    parser.add_argument("--official-loop", help=argparse.SUPPRESS)
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def _test_helpers() -> types.ModuleType:
    """``tests/helpers.py``: the checkpoint writer and the photo generator of the test suite."""
    sys.path.insert(0, str(REPO / "tests"))
    import helpers

    return helpers


def _checkpoint(path: Path):
    helpers = _test_helpers()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing a random RN50 checkpoint to {path}", file=sys.stderr)
        helpers.write_checkpoint(path, helpers.RN50_CONFIG, seed=1)
    return path, helpers.RN50_CONFIG


def _photos(folder: Path, width: int, height: int, count: int) -> Path:
    helpers = _test_helpers()
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / f"photo{index:03d}.jpg"
        if not path.exists():
            helpers.save_image(path, helpers.natural_image(width, height, seed=index), quality=90)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Measuring


def _command(runner: str, tree: Optional[Path], folder: Path, checkpoint: Path, rn50_config: dict) -> List[str]:
    if runner == "official":
        config = dict(folder=str(folder), weights=str(checkpoint), clip_config=rn50_config)
        return [sys.executable, str(Path(__file__).resolve()), "--official-loop", json.dumps(config)]
    return [sys.executable, "-m", "qualiclip_infer", str(folder), "--weights", str(checkpoint), "--format", "csv"]


def _run(command: List[str], tree: Path, expected_rows: int) -> dict:
    """Runs one process in ``tree`` (``python -m`` looks there first) and with it on the path; times its output rows."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(tree)
    busy_before = _busy_cpu_seconds()
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=tree)
        rows, arrivals = [], []
        header = process.stdout.readline()
        for line in process.stdout:
            arrivals.append(time.perf_counter() - started)
            rows.append(line)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0 or len(rows) != expected_rows:
            stderr.seek(0)
            raise SystemExit(f"{' '.join(command)} failed ({process.returncode}, {len(rows)} rows):\n"
                             f"{stderr.read().decode(errors='replace')}")
    cpu = usage.ru_utime + usage.ru_stime
    busy = _busy_cpu_seconds() - busy_before
    table = csv.DictReader(io.StringIO((header + b"".join(rows)).decode()))
    after_first = (len(rows) - 1) / (arrivals[-1] - arrivals[0]) if arrivals[-1] > arrivals[0] else float("nan")
    return dict(first_row_s=arrivals[0], wall_s=wall, rows_per_s=after_first, cpu_s=cpu,
                peak_rss_mb=usage.ru_maxrss / 1024, other_cores=max(0.0, busy - cpu) / wall,
                scores={os.path.abspath(row["path"]): float(row["score"]) for row in table})


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot (Linux; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _official_loop(config: dict) -> None:
    """Scores one image at a time, as the official README does, printing each row as soon as it has it."""
    import torch
    import torch.nn.functional as F
    from open_clip import CLIP
    from PIL import Image
    from torchvision.transforms import Normalize, ToTensor

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    state = torch.load(config["weights"], map_location="cpu", weights_only=True)
    clip = CLIP(**config["clip_config"])
    clip.load_state_dict({k[len("clip_model."):]: v for k, v in state.items() if k.startswith("clip_model.")})
    clip.visual.attnpool.forward = types.MethodType(_full_attention_pool, clip.visual.attnpool)
    clip.eval()
    prompts = state["prompts_features"].float()  # used as stored, like the official model
    transform = Normalize(mean, std)
    out = csv.writer(sys.stdout)
    out.writerow(("path", "score"))
    sys.stdout.flush()
    for path in sorted(Path(config["folder"]).iterdir()):
        image = transform(ToTensor()(Image.open(path).convert("RGB"))).unsqueeze(0)
        with torch.no_grad():
            features = F.normalize(clip.encode_image(image).float(), dim=-1)
            score = (100 * features @ prompts.T).view(1, -1, 2).softmax(dim=-1)[..., 0].mean()
        out.writerow((str(path), f"{score.item():.8f}"))
        sys.stdout.flush()


def _full_attention_pool(self, x):
    """CLIP's attention pool over all ``1 + HW`` tokens, every token attending, without positional embedding."""
    import torch
    import torch.nn.functional as F

    tokens = x.flatten(2).permute(2, 0, 1)  # HW, N, C
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    pooled, _ = F.multi_head_attention_forward(
        query=tokens, key=tokens, value=tokens, embed_dim_to_check=tokens.shape[-1], num_heads=self.num_heads,
        q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self.c_proj.weight,
        out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False)
    return pooled[0]


# ---------------------------------------------------------------------------------------------------------------
# Report


def _median(runs: List[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _each_run(runs: List[dict]) -> str:
    return ", ".join(f"{run['wall_s']:.1f} ({run['other_cores']:.1f})" for run in runs)


def _max_difference(a: Dict[str, float], b: Dict[str, float]) -> float:
    if a.keys() != b.keys():
        raise SystemExit("the runners scored different images")
    return max(abs(a[key] - b[key]) for key in a)


def _report(results: Dict[str, Dict[str, List[dict]]], args: argparse.Namespace, load_at_start) -> str:
    import torch

    lines = [
        "## qualiclip-score end to end: start-up, throughput, memory",
        "",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} logical CPUs; CPU, fp32, default options",
        f"- Date: {datetime.date.today().isoformat()}; Python {platform.python_version()}, torch {torch.__version__}",
        f"- Command: `python benchmarks/bench_score.py {' '.join(sys.argv[1:])}`; medians of {args.repeats} runs; "
        f"load average at the start {load_at_start[0]:.1f}",
        "",
        "| photos | runner | first row s | wall s | rows/s after the first | CPU s | peak RSS MB | "
        "each run: wall s (others' load, cores) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, by_runner in results.items():
        for runner, runs in by_runner.items():
            rate = _median(runs, "rows_per_s")
            lines.append(
                f"| {name} | {runner} | {_median(runs, 'first_row_s'):.2f} | {_median(runs, 'wall_s'):.2f} | "
                f"{'—' if rate != rate else f'{rate:.1f}'} | {_median(runs, 'cpu_s'):.2f} | "
                f"{_median(runs, 'peak_rss_mb'):.0f} | "
                f"{_each_run(runs)} |")
    lines += ["", "| photos | end-to-end speed-up over official (wall) | ours vs before (wall) | "
                  "largest score difference to official |", "|---|---:|---:|---:|"]
    for name, by_runner in results.items():
        ours = _median(by_runner["ours"], "wall_s")
        versus_before = (f"{_median(by_runner['before'], 'wall_s') / ours:.2f}×" if "before" in by_runner else "—")
        difference = _max_difference(by_runner["ours"][-1]["scores"], by_runner["official"][-1]["scores"])
        lines.append(f"| {name} | {_median(by_runner['official'], 'wall_s') / ours:.2f}× | {versus_before} | "
                     f"{difference:.1e} |")
    if STARTUP_SET in results:
        first_row = _median(results[STARTUP_SET]["ours"], "first_row_s")
        lines += ["", f"Start-up target (launch to first row, one 224² image, ≤ {STARTUP_TARGET_S} s): "
                      f"{first_row:.2f} s, {'met' if first_row <= STARTUP_TARGET_S else '**not met**'}."]
    return "\n".join(lines)


def _cpu_model() -> str:
    """The CPU's model name, with its family and model numbers where Linux gives them (one name covers several
    generations: ``AMD EPYC`` is Zen 4 at family 25 and Zen 5 at family 26)."""
    from qualiclip_infer.cpu_features import cpu_model, cpuinfo_field

    name = cpu_model() or platform.processor() or "unknown CPU"
    family, model = cpuinfo_field(("cpu family",)), cpuinfo_field(("model",))
    return f"{name} (family {family}, model {model})" if family and model else name


if __name__ == "__main__":
    main()
