"""Benchmark: ``qualiclip-score --backend`` torch vs OpenVINO vs ONNX Runtime vs the official loop, fp32 and bf16.

Every run is a fresh ``qualiclip-score`` process timed from the outside, as ``bench_score.py`` times them (its
runner and photo helpers are reused): **first row** (launch until the first row; includes the backend's ONNX
conversion and compilation), **wall**, **rows/s** after the first row, **peak RSS**, and the **largest score
difference** to torch fp32 (CSV scores, 6 decimals) with the **SRCC** of the runner's scores against torch fp32's.

Sets: ``A × 224²`` and ``B × 1024×768`` JPEGs, and a mixed folder of ``C`` photos at 12 sizes (256x192 to
1024x768, both orientations) in four kinds: clean, Gaussian-blurred, noisy and JPEG quality 10, so bf16's agreement
is measured on degraded photos too. The checkpoint is a full-size RN50 with random weights (``tests/helpers.py``).

``torch fp32, glibc's malloc`` is the torch path with ``QUALICLIP_INFER_MALLOC=system``: as it ran before the
commands kept freed memory (``qualiclip_infer/allocator.py``), the baseline of that change.

``--steady`` measures the same runners' image tower + head in one process instead (``score_tensor`` on a prepared
batch, runners interleaved, median of 5 calls): 224² in batches of 8 and 1024×768 one at a time, free of start-up
and decoding, and much less disturbed by other load than whole runs are. It runs alone (no folder sets).

``--shapes`` adds an in-process comparison on the mixed sizes of the two ways to compile for varying sizes with
OpenVINO: one model with dynamic height and width (what the backend does) against a fixed-shape model compiled per
size; it reports the compile time, the first image of each size and the steady state.

Usage::

    python benchmarks/bench_backends.py --counts 500 20 60 --shapes > report.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))
sys.path.insert(0, str(REPO))
import bench_score  # noqa: E402  (its runner, photo writer and official loop)

from qualiclip_infer.allocator import keep_freed_memory  # noqa: E402
from qualiclip_infer.cpu_features import bf16_summary, has_native_bf16  # noqa: E402
from qualiclip_infer.metrics import srcc  # noqa: E402

MIXED_SIZES = [(256, 192), (320, 240), (384, 288), (448, 336), (512, 384), (640, 480), (768, 576), (1024, 768),
               (192, 256), (240, 320), (384, 512), (480, 640)]
RUNNERS = {  # name: extra qualiclip-score options, or None for the official loop
    "official": None,
    "torch fp32, glibc's malloc": ["--backend", "torch"],
    "torch fp32": ["--backend", "torch"],
    "openvino fp32": ["--backend", "openvino"],
    "onnxruntime fp32": ["--backend", "onnxruntime"],
    "torch bf16": ["--backend", "torch", "--precision", "bf16"],
    "openvino bf16": ["--backend", "openvino", "--precision", "bf16"],
}
BASELINE = "torch fp32"
# Runners whose process runs with these environment variables: the torch path as it was before the commands kept
# freed memory (qualiclip_infer/allocator.py).
ENVIRONMENTS = {"torch fp32, glibc's malloc": {"QUALICLIP_INFER_MALLOC": "system"}}


def main() -> None:
    args = _parse_args()
    load = os.getloadavg()
    checkpoint, config = bench_score._checkpoint(Path(args.workdir) / "rn50.pth")
    if args.steady:
        print(_steady_report(_steady(checkpoint, args.threads), args, load))
        return
    counts = dict(zip(("fixed224", "fixed1024", "mixed"), args.counts))
    sets = {
        f"{counts['fixed224']} × 224²": bench_score._photos(Path(args.workdir) / f"224_{counts['fixed224']}", 224,
                                                            224, counts["fixed224"]),
        f"{counts['fixed1024']} × 1024×768": bench_score._photos(Path(args.workdir) / f"1024_{counts['fixed1024']}",
                                                                 1024, 768, counts["fixed1024"]),
        f"{counts['mixed']} mixed sizes and degradations": _mixed_photos(Path(args.workdir) / f"mixed_{counts['mixed']}",
                                                                         counts["mixed"]),
    }
    runners = [name for name in RUNNERS if args.bf16 or "bf16" not in name or has_native_bf16()]
    # The backends convert each network to ONNX once and keep it on disk: timed runs find it there, as every run
    # after a user's first does. The cold cost is measured once, here.
    cache = Path(args.workdir) / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["QUALICLIP_INFER_CACHE"] = str(cache)
    first = bench_score._photos(Path(args.workdir) / "224_1", 224, 224, 1)
    cold = {runner: bench_score._run(_command(runner, first, checkpoint, config), REPO, 1)["first_row_s"]
            for runner in runners if "fp32" in runner}
    results: Dict[str, Dict[str, List[dict]]] = {name: {runner: [] for runner in runners} for name in sets}
    for name, folder in sets.items():
        total = len(list(folder.iterdir()))
        for _ in range(args.repeats):
            for runner in runners:  # alternating, so a change in load touches every runner alike
                print(f"{name}: {runner}", file=sys.stderr)
                results[name][runner].append(bench_score._run(_command(runner, folder, checkpoint, config),
                                                              REPO, total))
    shapes = _compare_shape_strategies(checkpoint, args.threads) if args.shapes else None
    print(_report(results, shapes, cold, args, load))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs=3, default=(500, 20, 60), metavar=("N224", "N1024", "NMIXED"),
                        help="photos in the 224², 1024×768 and mixed sets")
    parser.add_argument("--repeats", type=int, default=1, help="runs per runner and set; medians are reported")
    parser.add_argument("--bf16", action="store_true", help="run the bf16 runners even without native bf16")
    parser.add_argument("--steady", action="store_true", help="only the in-process steady-state comparison")
    parser.add_argument("--shapes", action="store_true", help="also compare dynamic vs per-size OpenVINO models")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the --shapes comparison")
    parser.add_argument("--workdir", default="/tmp/qualiclip-bench", help="checkpoint and photos")
    return parser.parse_args()


def _command(runner: str, folder: Path, checkpoint: Path, config: dict) -> List[str]:
    if RUNNERS[runner] is None:
        return bench_score._command("official", None, folder, checkpoint, config)
    variables = [f"{name}={value}" for name, value in ENVIRONMENTS.get(runner, {}).items()]
    return ["env", *variables] * bool(variables) + bench_score._command("ours", None, folder, checkpoint,
                                                                        config) + RUNNERS[runner]


def _mixed_photos(folder: Path, count: int) -> Path:
    """``count`` photos cycling through :data:`MIXED_SIZES` and four kinds: clean, blurred, noisy, JPEG quality 10."""
    from PIL import Image, ImageFilter

    helpers = bench_score._test_helpers()
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        width, height = MIXED_SIZES[index % len(MIXED_SIZES)]
        kind = ("clean", "blur", "noise", "jpeg10")[index // len(MIXED_SIZES) % 4]
        path = folder / f"photo{index:03d}_{kind}_{width}x{height}.jpg"
        if path.exists():
            continue
        array = helpers.natural_image(width, height, seed=1000 + index)
        if kind == "noise":
            noise = np.random.default_rng(index).normal(0, 25, array.shape)
            array = np.clip(array + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
        if kind == "blur":
            image = image.filter(ImageFilter.GaussianBlur(3))
        image.save(path, quality=10 if kind == "jpeg10" else 90)
    return folder


def _compare_shape_strategies(checkpoint: Path, threads: int) -> List[Tuple[str, float, float, float, float]]:
    """OpenVINO on the mixed sizes: ``(size, dynamic first, dynamic steady, static compile, static steady)`` s."""
    import openvino
    import torch

    from qualiclip_infer import QualityScorer
    from qualiclip_infer.backends import openvino_options
    from qualiclip_infer.onnx_graph import ImageTower, onnx_bytes

    torch.set_num_threads(threads)
    scorer = QualityScorer(checkpoint, device="cpu")
    graph = onnx_bytes(ImageTower(scorer.model), "normalized", "features")
    core = openvino.Core()
    options = openvino_options("f32", threads)
    started = time.perf_counter()
    dynamic = core.compile_model(core.read_model(graph, b""), "CPU", options)
    rows = [("compile once (dynamic)", time.perf_counter() - started, 0.0, 0.0, 0.0)]
    for width, height in MIXED_SIZES:
        image = np.random.default_rng(width).random((1, 3, height, width), dtype=np.float32)
        first, steady = _timed(dynamic, image)
        model = core.read_model(graph, b"")
        model.reshape([1, 3, height, width])
        started = time.perf_counter()
        fixed = core.compile_model(model, "CPU", options)
        compile_s = time.perf_counter() - started
        _, fixed_steady = _timed(fixed, image)
        rows.append((f"{width}x{height}", first, steady, compile_s, fixed_steady))
    return rows


def _steady(checkpoint: Path, threads: int) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """``{batch: {runner: (s per image, largest difference to torch fp32)}}``, runners interleaved call by call."""
    import torch

    from qualiclip_infer import QualityScorer

    torch.set_num_threads(threads)
    keep_freed_memory()  # as the commands do; one process cannot also show glibc's default (the whole runs do)
    os.environ.setdefault("QUALICLIP_INFER_CACHE", str(Path(checkpoint).parent / "cache"))
    scorers = {}
    for runner, options in RUNNERS.items():
        if options is not None and runner not in ENVIRONMENTS and ("bf16" not in runner or has_native_bf16()):
            backend, precision = options[1], options[3] if len(options) > 3 else "fp32"
            scorers[runner] = QualityScorer(checkpoint, device="cpu", backend=backend, precision=precision)
    helpers = bench_score._test_helpers()
    batches = {"224² × 8": (224, 224, 8), "1024×768 × 1": (1024, 768, 1)}
    results: Dict[str, Dict[str, Tuple[float, float]]] = {}
    for name, (width, height, count) in batches.items():
        images = torch.stack([torch.from_numpy(helpers.natural_image(width, height, seed=i)).permute(2, 0, 1)
                              for i in range(count)]).float() / 255
        expected = scorers[BASELINE].score_tensor(images)
        times: Dict[str, List[float]] = {runner: [] for runner in scorers}
        differences = {runner: float((scorer.score_tensor(images) - expected).abs().max())  # also the warm-up
                       for runner, scorer in scorers.items()}
        for _ in range(5):
            for runner, scorer in scorers.items():
                started = time.perf_counter()
                scorer.score_tensor(images)
                times[runner].append((time.perf_counter() - started) / count)
        results[name] = {runner: (statistics.median(times[runner]), differences[runner]) for runner in scorers}
    return results


def _steady_report(results: Dict[str, Dict[str, Tuple[float, float]]], args: argparse.Namespace, load) -> str:
    lines = _header(args, load, "medians of 5 calls") + [
        "", "| batch | runner | s/image | speed-up over torch fp32 | largest difference to torch fp32 |",
        "|---|---|---:|---:|---:|"]
    for name, by_runner in results.items():
        base = by_runner[BASELINE][0]
        for runner, (seconds, difference) in by_runner.items():
            lines.append(f"| {name} | {runner} | {seconds:.3f} | {base / seconds:.2f}× | {difference:.1e} |")
    lines.append(f"\nLoad average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    return "\n".join(lines)


def _header(args: argparse.Namespace, load, how: str) -> List[str]:
    import openvino
    import onnxruntime
    import torch

    return [
        "## Inference-runtime backends and bf16 (issue 21, `benchmarks/bench_backends.py`)",
        "",
        f"- Machine: {bench_score._cpu_model()}, {os.cpu_count()} logical CPUs; {bf16_summary()}",
        f"- Date: {datetime.date.today().isoformat()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"OpenVINO {openvino.__version__}, ONNX Runtime {onnxruntime.__version__}",
        f"- Command: `python benchmarks/bench_backends.py {' '.join(sys.argv[1:])}`; {how}, runners alternating; "
        f"load average at the start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
    ]


def _timed(compiled, image: np.ndarray) -> Tuple[float, float]:
    """The first call's time and the median of three more."""
    started = time.perf_counter()
    compiled(image)
    first = time.perf_counter() - started
    again = []
    for _ in range(3):
        started = time.perf_counter()
        compiled(image)
        again.append(time.perf_counter() - started)
    return first, statistics.median(again)


def _report(results: Dict[str, Dict[str, List[dict]]], shapes, cold: Dict[str, float], args: argparse.Namespace,
            load) -> str:
    median = bench_score._median
    lines = _header(args, load, f"medians of {args.repeats} run(s)") + [
        "",
        "| photos | runner | first row s | wall s | rows/s after the first | speed-up over torch fp32 (rows/s) | "
        "wall vs torch fp32 | peak RSS MB | largest difference to torch fp32 | SRCC vs torch fp32 | "
        "each run: wall s (others' load, cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, by_runner in results.items():
        base = by_runner[BASELINE]
        base_scores = base[-1]["scores"]
        for runner, runs in by_runner.items():
            scores = runs[-1]["scores"]
            keys = sorted(base_scores)
            difference = bench_score._max_difference(scores, base_scores)
            agreement = srcc([scores[k] for k in keys], [base_scores[k] for k in keys]) if len(keys) > 2 else float("nan")
            lines.append(
                f"| {name} | {runner} | {median(runs, 'first_row_s'):.2f} | {median(runs, 'wall_s'):.2f} | "
                f"{median(runs, 'rows_per_s'):.2f} | {median(runs, 'rows_per_s') / median(base, 'rows_per_s'):.2f}× | "
                f"{median(base, 'wall_s') / median(runs, 'wall_s'):.2f}× | {median(runs, 'peak_rss_mb'):.0f} | "
                f"{difference:.1e} | {agreement:.5f} | {bench_score._each_run(runs)} |")
    lines += ["", "First row of one 224² photo, cold (before the backend's ONNX graph is cached): "
              + ", ".join(f"{runner} {seconds:.2f} s" for runner, seconds in cold.items()) + "."]
    if shapes:
        lines += ["", f"OpenVINO on the mixed sizes, in one process ({args.threads} threads), one image at a time:",
                  "", "| size | dynamic model: first image s | dynamic: steady s | fixed-shape model: compile s | "
                      "fixed-shape: steady s |", "|---|---:|---:|---:|---:|"]
        for size, first, steady, compile_s, fixed in shapes:
            if steady == 0.0:
                lines.append(f"| {size} | compile {first:.2f} | | | |")
            else:
                lines.append(f"| {size} | {first:.3f} | {steady:.3f} | {compile_s:.3f} | {fixed:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
