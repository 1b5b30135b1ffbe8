"""Optional dependencies: one error type and one check for every extra (Ray, pyarrow, matplotlib...)."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Optional

from .messages import first_line


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require(module: str, extra: str, feature: str, needs: Optional[str] = None) -> Any:
    """Imports ``module``, or raises a one-line :class:`MissingExtraError` naming the extra that installs it.

    Args:
        module: Dotted module name, e.g. ``pyarrow.parquet``.
        extra: The package extra that provides it, e.g. ``ray``.
        feature: What needs it, for the message (``Parquet output``).
        needs: What the message says is needed (default: the top-level package of ``module``).

    Returns:
        The imported module.
    """
    try:
        return import_module(module)
    except ImportError as error:
        raise MissingExtraError(f"{feature} needs {needs or module.split('.')[0]}, which is not installed "
                                f"({first_line(error)}): pip install \"qualiclip-infer[{extra}]\"") from None
