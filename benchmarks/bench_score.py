"""Benchmark: ``qualiclip-score`` against a baseline that scores the way the official QualiCLIP README does.

For a folder of 224x224 and one of 1024x768 JPEG photos it reports, per runner: start-up (process start until the
weights are loaded and the model is ready), throughput after that (decoding included), peak RSS and the wall time
of the whole process. Each run is a fresh child process; ``--repeats`` runs alternate between the runners and the
best run of each is reported, since a shared machine only ever makes a run slower.

The baseline, written here: one image at a time, ``ToTensor`` + ``Normalize``, the whole CLIP RN50 built and loaded
with a plain (not memory-mapped) ``torch.load`` of the whole file, and an attention pool computing full multi-head
attention over all tokens without the positional embedding, output at the mean token.

The checkpoint is a full-size RN50 with random weights (``tests/conftest.py``'s ``write_checkpoint``, ~400 MB),
kept with the photos under ``--workdir``.

Usage::

    python benchmarks/bench_score.py [--device cpu|cuda] [--precision fp32|fp16] > benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
SETS = {"224x224": (224, 224, 64), "1024x768": (1024, 768, 24)}
RUNNERS = ("qualiclip-score", "baseline")
# Targets: ours over baseline images/s, per set; start-up and peak RSS must simply be lower.
SPEEDUP_TARGETS = {"224x224": 1.3, "1024x768": 1.0}


def main() -> None:
    args = _parse_args()
    if args.child:
        config = json.loads(args.child)
        result = (_child_cli if config["runner"] == "qualiclip-score" else _child_baseline)(config)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result.update(peak_rss_mb=usage.ru_maxrss / 1024, cpu_s=usage.ru_utime + usage.ru_stime)
        print(json.dumps(result))
        return
    workdir = Path(args.workdir)
    checkpoint, rn50_config = _checkpoint(workdir / "rn50-random.pth")
    results: Dict[str, Dict[str, dict]] = {}
    for name, (width, height, count) in SETS.items():
        folder = _photos(workdir / name, width, height, count)
        runs: Dict[str, List[dict]] = {runner: [] for runner in RUNNERS}
        for _ in range(args.repeats):
            for runner in RUNNERS:
                config = dict(runner=runner, folder=str(folder), weights=str(checkpoint), device=args.device,
                              precision=args.precision, clip_config=rn50_config, out=str(workdir / f"{runner}.csv"),
                              extra=args.cli_args)
                runs[runner].append(_measure(config))
                print(f"{name} {runner}: {runs[runner][-1]}", file=sys.stderr)
        results[name] = {runner: _best(runner_runs) for runner, runner_runs in runs.items()}
        results[name]["max_score_difference"] = _max_difference(workdir / "qualiclip-score.csv",
                                                                workdir / "baseline.csv")
    print(_report(results, args))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="fp16: CUDA autocast for both runners, as the official example does")
    parser.add_argument("--repeats", type=int, default=2, help="runs per runner and set; the best is kept")
    parser.add_argument("--workdir", default="/tmp/qualiclip-bench", help="checkpoint, photos and outputs")
    parser.add_argument("--cli-args", nargs=argparse.REMAINDER, default=[],
                        help="extra qualiclip-score options, e.g. --cli-args --batch-size 8 (must come last)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def _test_helpers() -> types.ModuleType:
    """``tests/conftest.py``: the checkpoint writer and the photo generator of the test suite."""
    sys.path.insert(0, str(REPO / "tests"))
    import conftest

    return conftest


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


def _measure(config: dict) -> dict:
    """Runs one child process; start-up and throughput come from its clock stamps."""
    busy_before = _busy_cpu_seconds()
    spawned = time.time()
    child = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)], capture_output=True,
                           text=True, cwd=REPO, env=os.environ.copy())
    exited = time.time()
    busy = _busy_cpu_seconds() - busy_before
    if child.returncode != 0:
        raise SystemExit(f"{config['runner']} failed ({child.returncode}):\n{child.stderr}")
    stamps = json.loads(child.stdout.strip().splitlines()[-1])
    return dict(startup_s=stamps["ready"] - spawned, images_per_s=stamps["images"] / (stamps["end"] - stamps["ready"]),
                peak_rss_mb=stamps["peak_rss_mb"], wall_s=exited - spawned, images=stamps["images"],
                other_cores=max(0.0, busy - stamps["cpu_s"]) / (exited - spawned))


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot (Linux; 0 elsewhere): shows when others shared the CPUs.

    On a busy machine a run is not just slower by the CPU share it loses: torch's threads wait for each other at
    every layer, so one-image-at-a-time scoring can slow down tenfold. The report shows each run's other load.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _best(runs: List[dict]) -> dict:
    return dict(startup_s=min(r["startup_s"] for r in runs), images_per_s=max(r["images_per_s"] for r in runs),
                peak_rss_mb=min(r["peak_rss_mb"] for r in runs), wall_s=min(r["wall_s"] for r in runs),
                images=runs[0]["images"], every_run=[(r["images_per_s"], r["other_cores"]) for r in runs])


def _child_cli(config: dict) -> dict:
    """Runs the CLI's ``main`` in this process, stamping the moment its model is loaded."""
    from qualiclip_infer import cli

    stamps = {}
    load = cli._load_scorer

    def load_and_stamp(*args, **kwargs):
        scorer = load(*args, **kwargs)
        stamps["ready"] = time.time()
        return scorer

    cli._load_scorer = load_and_stamp
    argv = [config["folder"], "--weights", config["weights"], "--device", config["device"], "--precision",
            config["precision"], "--format", "csv", "-q", "-o", config["out"], *config["extra"]]
    if cli.main(argv) != 0:
        raise SystemExit("qualiclip-score failed")
    stamps["end"] = time.time()
    with open(config["out"], newline="") as f:
        stamps["images"] = sum(1 for _ in csv.DictReader(f))
    return stamps


def _child_baseline(config: dict) -> dict:
    """Scores one image at a time, as the official README does."""
    import torch
    import torch.nn.functional as F
    from open_clip import CLIP
    from PIL import Image
    from torchvision.transforms import Normalize, ToTensor

    from qualiclip_infer.model import CLIP_MEAN, CLIP_STD

    device = torch.device(config["device"])
    state = torch.load(config["weights"], map_location="cpu", weights_only=True)
    clip = CLIP(**config["clip_config"])
    clip.load_state_dict({k[len("clip_model."):]: v for k, v in state.items() if k.startswith("clip_model.")})
    clip.visual.attnpool.forward = types.MethodType(_full_attention_pool, clip.visual.attnpool)
    clip.eval().to(device)
    prompts = state["prompts_features"].float().to(device)  # used as stored, like the official model
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=config["precision"] == "fp16")
    stamps = {"ready": time.time()}

    transform = Normalize(CLIP_MEAN, CLIP_STD)
    rows = []
    for path in sorted(Path(config["folder"]).iterdir()):
        image = transform(ToTensor()(Image.open(path).convert("RGB"))).unsqueeze(0).to(device)
        with torch.no_grad(), autocast:
            features = F.normalize(clip.encode_image(image).float(), dim=-1)
            score = (100 * features @ prompts.T).view(1, -1, 2).softmax(dim=-1)[..., 0].mean()
        rows.append((str(path), score.item()))
    stamps["end"] = time.time()
    stamps["images"] = len(rows)
    with open(config["out"], "w", newline="") as f:
        csv.writer(f).writerows([("path", "score"), *rows])
    return stamps


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


def _max_difference(ours: Path, baseline: Path) -> float:
    """Largest score difference between the runners' last runs: the two models must agree."""
    def scores(path: Path) -> Dict[str, float]:
        with open(path, newline="") as f:
            return {os.path.abspath(row["path"]): float(row["score"]) for row in csv.DictReader(f)}

    a, b = scores(ours), scores(baseline)
    if a.keys() != b.keys():
        raise SystemExit("the runners scored different images")
    return max(abs(a[key] - b[key]) for key in a)


# ---------------------------------------------------------------------------------------------------------------
# Report


def _report(results: Dict[str, Dict[str, dict]], args: argparse.Namespace) -> str:
    import torch

    lines = [
        "# qualiclip-score benchmark",
        "",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} logical CPUs; device {args.device}, {args.precision}",
        f"- Date: {datetime.date.today().isoformat()}; Python {platform.python_version()}, torch {torch.__version__}",
        f"- Command: `python benchmarks/bench_score.py {' '.join(sys.argv[1:])}`; best of {args.repeats} runs",
        "",
        "| photos | runner | start-up s | images/s | peak RSS MB | process wall s | each run: images/s (other "
        "processes' load, cores) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, by_runner in results.items():
        for runner in RUNNERS:
            r = by_runner[runner]
            lines.append(f"| {name} ×{r['images']} | {runner} | {r['startup_s']:.2f} | {r['images_per_s']:.2f} | "
                         f"{r['peak_rss_mb']:.0f} | {r['wall_s']:.1f} | "
                         f"{', '.join(f'{speed:.2f} ({load:.2f})' for speed, load in r['every_run'])} |")
    lines += ["", "| target | result | met |", "|---|---|---|"]
    for name, by_runner in results.items():
        ours, base = by_runner["qualiclip-score"], by_runner["baseline"]
        speedup = ours["images_per_s"] / base["images_per_s"]
        lines.append(f"| {name}: images/s ≥ {SPEEDUP_TARGETS[name]}× baseline | {speedup:.2f}× | "
                     f"{_yes(speedup >= SPEEDUP_TARGETS[name])} |")
        lines.append(f"| {name}: start-up below baseline | {ours['startup_s']:.2f} s vs {base['startup_s']:.2f} s | "
                     f"{_yes(ours['startup_s'] < base['startup_s'])} |")
        lines.append(f"| {name}: peak RSS below baseline | {ours['peak_rss_mb']:.0f} MB vs "
                     f"{base['peak_rss_mb']:.0f} MB | {_yes(ours['peak_rss_mb'] < base['peak_rss_mb'])} |")
        lines.append(f"| {name}: same scores as baseline | max difference {by_runner['max_score_difference']:.1e} | "
                     f"{_yes(by_runner['max_score_difference'] < 1e-3)} |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown CPU")


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


if __name__ == "__main__":
    main()
