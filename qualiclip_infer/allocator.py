"""Keeping freed memory in the process, so that torch's CPU forward passes stop paying the kernel for it each time.

An RN50 forward pass on the CPU frees and asks again for activation buffers of tens of MB (a batch of 16 224² images:
51 MB for one layer's output). glibc's malloc serves every block over its mmap threshold (at most 32 MiB) from a
fresh ``mmap`` and hands it back with ``munmap`` when freed, so the next pass faults in and zeroes the same pages
again: about 10% of torch's forward time on 2 Zen 4 cores, 4-8% of a whole ``qualiclip-score`` run's wall time
(its system time falls by 60-70%), for 130-180 MiB more peak memory (``benchmarks/RESULTS.md``, "Keeping freed
memory"). OpenVINO and ONNX Runtime keep their own buffers and are
not affected.

The commands call :func:`keep_freed_memory` as they start, and so does each Ray actor; a program of your own that
scores on the CPU can call it too. It changes how the whole process allocates, which is why the library itself never
calls it behind your back.
"""

from __future__ import annotations

import os
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap (RN50's activations at 16 x 224² or one 1024x768 photo: up to 51 MB);
# larger ones (a 48-megapixel photo decoded: 144 MB) are still mapped and handed back when freed.
_HEAP_BLOCKS_UP_TO = 128 << 20
# Free memory at the top of the heap kept rather than returned to the kernel.
_KEPT_BYTES = 256 << 20
# Set to "system" to leave glibc's malloc as it is (a long-lived process that must give memory back between jobs).
ENVIRONMENT_VARIABLE = "QUALICLIP_INFER_MALLOC"

_tuned = False


def keep_freed_memory() -> bool:
    """Makes glibc's malloc serve blocks up to 128 MiB from the heap and keep up to 256 MiB of freed memory for reuse.

    Idempotent; does nothing where the C library is not glibc (macOS, Windows, musl), with
    ``QUALICLIP_INFER_MALLOC=system`` in the environment, or when malloc is replaced by ``LD_PRELOAD`` (jemalloc,
    tcmalloc: those keep memory themselves, and glibc's settings do not reach them).

    Returns:
        Whether glibc's malloc is tuned (now or by an earlier call).
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get(ENVIRONMENT_VARIABLE) == "system":
        return False
    if not sys.platform.startswith("linux") or not _is_glibc():
        return False
    import ctypes  # here, not at the top: `--help` ends before any command calls this

    try:
        libc = ctypes.CDLL("libc.so.6")
        _tuned = (bool(libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_BLOCKS_UP_TO))
                  and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEPT_BYTES)))
    except (OSError, AttributeError):
        return False
    return _tuned


def _is_glibc() -> bool:
    # os.confstr rather than platform.libc_ver: the platform module costs the commands' start-up 4 ms.
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # musl, and systems without the name
        return False
