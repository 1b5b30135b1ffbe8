"""What this installation can run on, without importing torch: the backends, their versions, the CPU's bf16.

``qualiclip-score --info`` prints :func:`info_lines`.
"""

from __future__ import annotations

import argparse
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import List, Optional, Sequence, Tuple

from ._version import __version__
from .cpu_features import bf16_summary, cpu_model

# The backend names of QualityScorer(backend=...) and --backend; each but torch is also the name of its package.
BACKENDS = ("torch", "openvino", "onnxruntime")


def installed_versions() -> Tuple[Tuple[str, Optional[str]], ...]:
    """``(backend, version)`` for each of :data:`BACKENDS`, the version ``None`` where its package is missing."""
    found = []
    for name in BACKENDS:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            found.append((name, None))
    return tuple(found)


def info_lines() -> List[str]:
    """The package version, the CPU and its native bf16, and the installed backends, one fact a line."""
    backends = ", ".join(f"{name} {found}" if found else f"{name} (not installed)"
                         for name, found in installed_versions())
    cpu = platform.processor() or platform.machine()
    return [f"qualiclip-infer {__version__} (Python {platform.python_version()})",
            f"cpu: {cpu_model() or cpu}; {bf16_summary()}",
            f"backends: {backends}"]



class PrintInfo(argparse.Action):
    """``--info``: prints :func:`info_lines` and exits, like ``--version`` (no other argument is needed)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: Optional[str] = None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace, values, option_string=None) -> None:
        print("\n".join(info_lines()))  # to standard output, as --version prints
        parser.exit()
