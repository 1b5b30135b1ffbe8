"""Device and precision policy: which device ``auto`` means, and which reduced precisions a device can run."""

from __future__ import annotations

import contextlib
import warnings
from typing import ContextManager, Literal, Union

import torch

Precision = Literal["fp32", "fp16", "bf16"]
# Reduced precisions by name; the trainer uses the same names.
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit device must be present.

    Raises:
        ValueError: An unknown device string, or a device this machine does not have.
    """
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda, cuda:N or mps") from error
    if resolved.type == "cuda" and (not torch.cuda.is_available()
                                    or (resolved.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device!r}: CUDA is not available on this machine "
                         f"({torch.cuda.device_count()} CUDA devices)")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: Apple MPS is not available on this machine")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    return resolved


def check_precision(precision: str, device: torch.device) -> None:
    """Raises a one-line :class:`ValueError` unless ``device`` can run ``precision`` (fp32, fp16 or bf16)."""
    if precision == "fp32":
        return
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision {precision!r}: expected fp32, fp16 or bf16")
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"precision {precision!r}: autocast is not supported on {device.type}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bf16': {torch.cuda.get_device_name(device)} does not support bfloat16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]):
            pass
    if caught:
        raise ValueError(f"precision {precision!r} is not supported on {device.type}: {caught[0].message}")


def autocast(precision: str, device: torch.device) -> ContextManager:
    """Autocast to ``precision`` on ``device``, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
