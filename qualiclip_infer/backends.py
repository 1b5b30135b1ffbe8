"""Inference runtimes for the image tower on the CPU: OpenVINO and ONNX Runtime, beside torch itself.

A runtime backend takes over only the image tower, the network's whole cost: the loaded (folded) tower is converted
to an ONNX graph with dynamic batch size, height and width (:mod:`qualiclip_infer.onnx_graph`), kept on disk
(:mod:`qualiclip_infer.graph_cache`) so later runs skip the conversion, and compiled once per scorer.
Batching by equal size, native resolution, the engine, windows maps and evaluation are unchanged, because they all
score through :meth:`QualityScorer.score_tensor`, which hands the normalised batch to the backend.

The score head (a few dot products) stays in torch, in float32: under a bf16 runtime the head would round cosines
that the logit scale of 100 then magnifies, as torch autocast avoids too (:meth:`QualiCLIP.score_features`).

Compiled once for every shape, not once per shape: on 2 Zen 4 cores with RN50, OpenVINO's first image of a new size
costs 0.03-0.14 s more than the next, where compiling a fixed-shape model costs 0.17-0.33 s per size and then runs
only 0-7% faster (``docs/backends-and-export.md``), so a folder of mixed sizes is faster with one dynamic model.

``tokens`` quality maps and :class:`~qualiclip_infer.loss.QualiCLIPLoss` need torch (the trunk's feature grid, and
gradients): they stay on torch whatever backend scores.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Callable, Optional, Set, Tuple, Union

import numpy as np
import torch

from .constants import BACKENDS
from .cpu_features import warn_if_bf16_is_slow
from .extras import require
from .graph_cache import cached_graph, discard, runtime_cache
from .model import QualiCLIP
from .onnx_graph import ImageTower

# The extra that installs each runtime backend's package.
_INSTALL = {"openvino": "openvino", "onnxruntime": "onnx"}
# What each runtime backend computes in, by the scorer's precision name.
_PRECISIONS = {"openvino": {"fp32": "f32", "bf16": "bf16"}, "onnxruntime": {"fp32": None}}

_INPUT, _OUTPUT = "normalized", "features"
_warned_torch_only: Set[Tuple[str, str]] = set()

Features = Callable[[np.ndarray], np.ndarray]
Graph = Union[Path, bytes]


class RuntimeBackend:
    """Scores batches with the image tower compiled by an inference runtime and the model's own score head.

    Build it with :func:`build_backend`. Calls are serialised: an OpenVINO infer request and the buffers it hands
    back serve one batch at a time.

    Args:
        name: ``openvino`` or ``onnxruntime``.
        model: The loaded network; its ``score_features`` scores the runtime's image features.
        features: The compiled tower: float32 ``N x 3 x H x W`` array to ``N x D`` features.
    """

    def __init__(self, name: str, model: QualiCLIP, features: Features):
        self.name = name
        self._model = model
        self._features = features
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RuntimeBackend({self.name!r})"

    def __call__(self, normalized: torch.Tensor) -> torch.Tensor:
        """Scores CLIP-normalised float32 ``N x 3 x H x W`` images on the CPU (any memory format): ``(N,)`` float32."""
        array = np.ascontiguousarray(normalized.detach().to("cpu", torch.float32).numpy())
        with self._lock:
            features = torch.from_numpy(np.array(self._features(array), dtype=np.float32, copy=True))
        with torch.inference_mode():
            return self._model.score_features(features).float()


def build_backend(name: str, model: QualiCLIP, *, device: torch.device, precision: str,
                  threads: Optional[int] = None) -> Optional[RuntimeBackend]:
    """The runtime that scores ``model``'s batches, or ``None`` for torch (the scorer runs the model itself).

    Warns once when bf16 is asked for on a CPU without native bf16, whichever backend.

    Args:
        name: One of :data:`BACKENDS`.
        model: The loaded network, BatchNorms folded or not, on the CPU for a runtime backend.
        device: Where the scorer runs; runtime backends run on the CPU only.
        precision: ``fp32``; or ``bf16`` for OpenVINO (its bf16 inference precision hint).
        threads: CPU threads of the runtime (default: torch's current number, so ``--threads`` applies).

    Raises:
        ValueError: An unknown backend, a device other than the CPU, or a precision the backend does not offer.
        ImportError: The backend's package is not installed; the message says what to install.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r}: expected one of {', '.join(BACKENDS)}")
    warn_if_bf16_is_slow(precision, device.type)
    if name == "torch":
        return None
    if device.type != "cpu":
        raise ValueError(f"backend {name!r} runs on the CPU, not {device}; use device='cpu' or backend='torch'")
    if precision not in _PRECISIONS[name]:
        offered = " or ".join(_PRECISIONS[name])
        raise ValueError(f"precision {precision!r} is not available with backend {name!r} (use {offered})")
    threads = threads or torch.get_num_threads()
    if name == "openvino":
        hint = _PRECISIONS[name][precision]
        return RuntimeBackend(name, model, _compile(model, lambda graph: _openvino_features(graph, hint, threads)))
    return RuntimeBackend(name, model, _compile(model, lambda graph: _onnxruntime_features(graph, threads)))


def _compile(model: QualiCLIP, compile_graph: Callable[[Graph], Features]) -> Features:
    """Compiles the tower's cached graph; one the runtime cannot read (a damaged entry) is converted and cached anew."""
    tower = ImageTower(model)
    graph = cached_graph(tower, _INPUT, _OUTPUT)
    try:
        return compile_graph(graph)
    except Exception:  # the runtimes raise their own classes for unreadable files
        if not isinstance(graph, Path):
            raise
        discard(graph)
        return compile_graph(cached_graph(tower, _INPUT, _OUTPUT))


def require_backend(name: str) -> None:
    """Imports the package of backend ``name`` (nothing for torch), so a missing one fails before any work.

    Raises:
        ImportError: It is not installed; the message names the extra to install.
    """
    if name in _INSTALL:
        _import_runtime(name)


def warn_torch_only(backend: str, what: str) -> None:
    """Says once per process and feature that ``what`` runs on torch although ``backend`` was asked for."""
    if (backend, what) in _warned_torch_only:
        return
    _warned_torch_only.add((backend, what))
    warnings.warn(f"{what} run on torch: backend {backend!r} scores whole images (and windows) only",
                  RuntimeWarning, stacklevel=3)


def _import_runtime(name: str):
    return require(name, _INSTALL[name], f"backend {name!r}")


def openvino_options(hint: str, threads: int) -> dict:
    """The CPU plugin's compile options of the backend (``hint``: ``f32`` or ``bf16``); benchmarks compile with them
    too, so that what they measure is what the backend runs."""
    return {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}


def _openvino_features(graph: Graph, hint: str, threads: int) -> Features:
    openvino = _import_runtime("openvino")
    core = openvino.Core()
    options = openvino_options(hint, threads)
    cache = runtime_cache(graph, "openvino")
    if cache is not None:
        # OpenVINO's own cache of the compiled model: 0.3 s to load instead of 1 s to compile (RN50, 2 cores).
        options["CACHE_DIR"] = str(cache)
        compiled = core.compile_model(str(graph), "CPU", options)
    else:
        compiled = core.compile_model(core.read_model(graph, b""), "CPU", options)
    request = compiled.create_infer_request()

    def features(array: np.ndarray) -> np.ndarray:
        return request.infer({0: array})[0]

    return features


def _onnxruntime_features(graph: Graph, threads: int) -> Features:
    onnxruntime = _import_runtime("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = str(graph) if isinstance(graph, Path) else graph
    session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def features(array: np.ndarray) -> np.ndarray:
        return session.run(None, {_INPUT: array})[0]

    return features

