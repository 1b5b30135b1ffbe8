"""Whether this CPU computes bfloat16 natively, and a one-time warning when bf16 is asked for on one that does not.

bf16 pays on the CPU only with native instructions: AVX512_BF16 (AMD Zen 4 and later, Intel Cooper Lake), AMX
(Intel Sapphire Rapids and later) or Arm's BF16. Measured on a Zen 4 EPYC, bf16 ran RN50 about twice as fast as fp32; on a Xeon
without them it ran slower than fp32 (``docs/backends-and-export.md``). The flags are read from ``/proc/cpuinfo``
without importing torch, so commands can report them at once.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import FrozenSet, Optional, Tuple

# The cpuinfo flags of native bf16 arithmetic: x86's bf16 dot products (AVX-512) and tile matrix products (AMX), and
# Arm's BF16 extension (Graviton 3, Neoverse V1 and later), which torch's Arm kernels use.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")

_warned_without_bf16 = False


def cpu_flags(cpuinfo: Path = CPUINFO) -> Optional[FrozenSet[str]]:
    """The feature flags of the first CPU listed in ``cpuinfo``, or ``None`` where there is no such file (not Linux).

    Args:
        cpuinfo: A file in the layout of Linux's ``/proc/cpuinfo`` (``flags : a b c`` lines).
    """
    # x86 names the list "flags", Arm "Features".
    value = cpuinfo_field(("flags", "Features"), cpuinfo)
    return None if value is None else frozenset(value.split())


def cpu_model(cpuinfo: Path = CPUINFO) -> Optional[str]:
    """The CPU's model name from ``cpuinfo`` (``None`` where it has none, or there is no such file)."""
    return cpuinfo_field(("model name",), cpuinfo) or None


def cpuinfo_field(keys: Tuple[str, ...], cpuinfo: Path = CPUINFO) -> Optional[str]:
    """The value of the first ``key : value`` line of ``cpuinfo`` with one of ``keys`` ("" if none), ``None``
    without the file."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return ""


def native_bf16_flags(cpuinfo: Path = CPUINFO) -> Optional[Tuple[str, ...]]:
    """Which of :data:`BF16_FLAGS` this CPU has (empty: none), or ``None`` where that cannot be told.

    Without ``/proc/cpuinfo``, torch's own CPU probe answers (it is imported then).
    """
    flags = cpu_flags(cpuinfo)
    if flags is not None:
        return tuple(flag for flag in BF16_FLAGS if flag in flags)
    return _torch_bf16_flags()


def _torch_bf16_flags() -> Optional[Tuple[str, ...]]:
    try:
        import torch.cpu
        probes = {"avx512_bf16": torch.cpu._is_avx512_bf16_supported, "amx_bf16": torch.cpu._is_amx_tile_supported}
        return tuple(flag for flag, probe in probes.items() if probe())
    except (ImportError, AttributeError):  # private probes: a torch without them cannot tell
        return None


def has_native_bf16() -> Optional[bool]:
    """``True`` if the CPU computes bf16 natively (AVX512_BF16 or AMX), ``False`` if not, ``None`` if unknown."""
    flags = native_bf16_flags()
    return None if flags is None else bool(flags)


def bf16_summary() -> str:
    """One line for ``--info``: ``native bf16: yes (avx512_bf16)``, ``native bf16: no (...)`` or ``unknown``."""
    flags = native_bf16_flags()
    if flags is None:
        return "native bf16: unknown (no /proc/cpuinfo and no torch CPU probe)"
    if flags:
        return f"native bf16: yes ({', '.join(flags)}); --precision bf16 ran about 2x faster than fp32 on such a CPU"
    return "native bf16: no (neither AVX512_BF16 nor AMX); --precision bf16 would be slower than fp32 here"


def warn_if_bf16_is_slow(precision: str, device_type: str) -> None:
    """Warns once per process when bf16 is asked for on a CPU known to lack native bf16 (it runs slower there)."""
    global _warned_without_bf16
    if precision != "bf16" or device_type != "cpu" or _warned_without_bf16 or has_native_bf16() is not False:
        return
    _warned_without_bf16 = True
    warnings.warn("precision 'bf16' on a CPU without native bf16 (no AVX512_BF16 or AMX): it is emulated and "
                  "usually slower than fp32, with less exact scores", RuntimeWarning, stacklevel=3)
