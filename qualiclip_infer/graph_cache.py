"""An on-disk cache of the image tower's ONNX graph, so a runtime backend converts each network once, not every run.

Tracing and writing RN50's graph takes 2-7 s on 2 cores, more than the rest of a run's start-up; reading it back
takes a fraction of a second. Each graph is keyed by a SHA-256 of the tower's tensors (names, shapes, dtypes and
values, as loaded and folded) with the package, torch and opset versions, so any change of weights or code gives a
new entry. Entries live in ``<cache>/backends/<key>/`` (``<cache>`` is ``$QUALICLIP_INFER_CACHE``, else
``~/.cache/qualiclip_infer``) beside the runtime's own compiled-model cache; the :data:`KEEP` most recently used
are kept, about 300 MB each for RN50. Where the folder cannot be written, the graph is converted in memory instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ._version import __version__
from .atomic import atomic_write
from .onnx_graph import OPSET, onnx_bytes
from .prompts import prompt_cache_dir

KEEP = 4
GRAPH_FILE = "tower.onnx"


def graph_key(module: nn.Module) -> str:
    """SHA-256 of ``module``'s tensors and of the versions that shape its exported graph."""
    digest = hashlib.sha256(f"qualiclip-infer {__version__} torch {torch.__version__} opset {OPSET}".encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy())  # values in logical order
    return digest.hexdigest()


def cached_graph(module: nn.Module, input_name: str, output_name: str) -> Union[Path, bytes]:
    """The ONNX graph of ``module`` (:func:`~qualiclip_infer.onnx_graph.onnx_bytes`): the path of its cached file,
    written now if new, or the bytes themselves where the cache cannot be written."""
    entry = backend_cache_dir() / f"{graph_key(module)}-{input_name}-{output_name}"
    graph_file = entry / GRAPH_FILE
    if graph_file.is_file():
        os.utime(entry)  # most recently used: kept longest
        return graph_file
    graph = onnx_bytes(module, input_name, output_name)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        with atomic_write(graph_file) as f:  # a concurrent reader never sees half a file
            f.write(graph)
    except OSError:
        return graph
    _prune(entry.parent)
    return graph_file


def runtime_cache(graph: Union[Path, bytes], runtime: str) -> Optional[Path]:
    """A folder for ``runtime``'s compiled models of a cached graph (``None`` for an in-memory one)."""
    return graph.parent / runtime if isinstance(graph, Path) else None


def discard(graph: Path) -> None:
    """Removes the cache entry of ``graph`` (one a runtime could not read), compiled models included."""
    shutil.rmtree(graph.parent, ignore_errors=True)


def backend_cache_dir() -> Path:
    """``<cache>/backends``: the cached graphs, one folder each."""
    return prompt_cache_dir() / "backends"


def _prune(root: Path) -> None:
    """Removes all but the :data:`KEEP` most recently used entries."""
    entries = sorted((entry for entry in root.iterdir() if entry.is_dir()), key=lambda entry: entry.stat().st_mtime,
                     reverse=True)
    for entry in entries[KEEP:]:
        shutil.rmtree(entry, ignore_errors=True)
