"""Benchmark: where the image tower's time goes at fp32, torch against OpenVINO, convolutions against the rest.

Both run the same network (the package's folded, channels-last RN50 tower; OpenVINO from its ONNX graph) on the same
normalised batch in one process, one after the other. torch's time is split with ``torch.profiler`` (self time
of ``aten::mkldnn_convolution`` against every other operator), OpenVINO's with its per-node performance counters
(``PERF_COUNT``; its convolutions carry the fused additions and ReLUs). The convolutions' arithmetic rate is their
floating-point operations (``torch.utils.flop_counter``, two per multiply-add) over their time.

The last line of each batch answers what issue 21's fp32 target needs: a runtime that runs the convolutions no
faster than OpenVINO does and everything else in no time can be at most ``torch's whole time / OpenVINO's
convolution time`` times faster than the torch path. For scale, the header gives the rate of one large 3x3
convolution alone (256 to 256 channels at 56², batch 8), near the best this CPU's oneDNN kernels reach.

Usage::

    python benchmarks/bench_kernels.py --workdir /tmp/qualiclip-bench
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import bench_score  # noqa: E402  (its checkpoint writer and photo generator)

from qualiclip_infer.allocator import keep_freed_memory  # noqa: E402
from qualiclip_infer.cpu_features import bf16_summary  # noqa: E402

BATCHES = {"224² × 8": (224, 224, 8), "1024×768 × 1": (1024, 768, 1)}
CALLS = 5


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workdir", default="/tmp/qualiclip-bench", help="checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the commands do
    load = os.getloadavg()
    checkpoint, _ = bench_score._checkpoint(Path(args.workdir) / "rn50.pth")
    from qualiclip_infer import QualityScorer

    scorer = QualityScorer(checkpoint, device="cpu")
    compiled = _openvino(scorer, args.threads)
    helpers = bench_score._test_helpers()
    lines = _header(args, load) + [f"- One large 3x3 convolution alone: {_single_convolution_rate():.0f} GFLOP/s"]
    for name, (width, height, count) in BATCHES.items():
        images = torch.stack([torch.from_numpy(helpers.natural_image(width, height, seed=i)).permute(2, 0, 1)
                              for i in range(count)]).float() / 255
        batch = scorer.model.normalize(images).contiguous(memory_format=torch.channels_last)
        lines += _rows(name, scorer.model.visual, batch, compiled)
    lines.append(f"\nLoad average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    print("\n".join(lines))


def _openvino(scorer, threads: int):
    import openvino

    from qualiclip_infer.backends import openvino_options
    from qualiclip_infer.onnx_graph import ImageTower, onnx_bytes

    graph = onnx_bytes(ImageTower(scorer.model), "images", "features")
    options = {**openvino_options("f32", threads), "PERF_COUNT": True}  # the backend's options, and the counters
    core = openvino.Core()
    return core.compile_model(core.read_model(graph, b""), "CPU", options).create_infer_request()


def _rows(name: str, tower, batch, request) -> list:
    torch_ms, torch_conv_ms = _torch_times(tower, batch)
    openvino_ms, openvino_conv_ms = _openvino_times(request, batch.numpy())
    conv_gflop = _convolution_flops(tower, batch) / 1e9
    ceiling = torch_ms / openvino_conv_ms
    return [
        "", f"### {name}", "",
        "| runner | ms per batch | in convolutions | elsewhere | convolutions' GFLOP/s |", "|---|---:|---:|---:|---:|",
        f"| torch fp32 | {torch_ms:.1f} | {torch_conv_ms:.1f} ({torch_conv_ms / torch_ms:.1%}) | "
        f"{torch_ms - torch_conv_ms:.1f} | {conv_gflop / torch_conv_ms * 1e3:.0f} |",
        f"| openvino fp32 | {openvino_ms:.1f} | {openvino_conv_ms:.1f} ({openvino_conv_ms / openvino_ms:.1%}) | "
        f"{openvino_ms - openvino_conv_ms:.1f} | {conv_gflop / openvino_conv_ms * 1e3:.0f} |",
        "",
        f"OpenVINO is {torch_ms / openvino_ms:.2f}× the torch path here; with its convolutions as fast as they are "
        f"and everything else free, a runtime could reach at most {ceiling:.2f}× ({conv_gflop:.1f} GFLOP of "
        f"convolutions per batch).",
    ]


def _torch_times(tower, batch) -> Tuple[float, float]:
    """Median wall ms per call, and the profiled self time of the convolutions per call."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        wall_ms = _median_seconds(lambda: tower(batch)) * 1e3
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(CALLS):
                tower(batch)
    by_operator: Dict[str, float] = {event.key: event.self_cpu_time_total for event in profiler.key_averages()}
    profiled = sum(by_operator.values())
    convolutions = by_operator.get("aten::mkldnn_convolution", 0.0)
    # The profiler's own overhead inflates its total: apportion the unprofiled wall time by its shares.
    return wall_ms, wall_ms * convolutions / profiled


def _openvino_times(request, array) -> Tuple[float, float]:
    request.infer({0: array})
    walls, convolution_ms = [], []
    for _ in range(CALLS):
        started = time.perf_counter()
        request.infer({0: array})
        walls.append((time.perf_counter() - started) * 1e3)
        nodes = request.profiling_info
        counted = sum(node.real_time.total_seconds() for node in nodes)
        convolutions = sum(node.real_time.total_seconds() for node in nodes if node.node_type == "Convolution")
        convolution_ms.append(walls[-1] * convolutions / counted)
    return statistics.median(walls), statistics.median(convolution_ms)


def _convolution_flops(tower, batch) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        tower(batch)
    return sum(count for operator, count in counter.get_flop_counts()["Global"].items()
               if "convolution" in str(operator))


def _single_convolution_rate() -> float:
    import torch

    convolution = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    batch = torch.rand(8, 256, 56, 56).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = _median_seconds(lambda: convolution(batch))
    return 2 * batch.numel() * 256 * 9 / seconds / 1e9


def _median_seconds(call) -> float:
    """Median wall seconds of :data:`CALLS` calls, after one that warms up."""
    call()
    seconds = []
    for _ in range(CALLS):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def _header(args: argparse.Namespace, load) -> list:
    import openvino
    import torch

    return [
        "## Where the fp32 time goes: torch and OpenVINO, convolutions and the rest (`benchmarks/bench_kernels.py`)",
        "",
        f"- Machine: {bench_score._cpu_model()}, {os.cpu_count()} logical CPUs; {bf16_summary()}",
        f"- Date: {datetime.date.today().isoformat()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"OpenVINO {openvino.__version__}; {args.threads} threads",
        f"- Command: `python benchmarks/bench_kernels.py {' '.join(sys.argv[1:])}`; medians of {CALLS} calls; load "
        f"average at the start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
    ]


if __name__ == "__main__":
    main()
