"""What this installation can run on, without importing torch: the backends, their versions, the CPU's bf16.

``qualiclip-score --info`` prints :func:`info_lines`.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import List, Optional, Tuple

from ._version import __version__
from .constants import BACKENDS
from .cpu_features import bf16_summary, cpu_model



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
