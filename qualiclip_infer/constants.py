"""Defaults and fixed numbers that the library and the commands share, in one torch-free module.

The commands read their defaults from here, so that ``--help`` shows the library's values without importing torch.
"""

from __future__ import annotations

import os

# The official model's fixed scale of the cosine similarities.
OFFICIAL_LOGIT_SCALE = 100.0
# The network reduces each side 32-fold; smaller images have no feature grid at all.
MIN_IMAGE_SIDE = 32

DEFAULT_BATCH_SIZE = 16
# 16 Mpx of RN50 activations in fp32 peak near 4 GB on the CPU; bigger batches of big photos buy no speed.
DEFAULT_MAX_BATCH_PIXELS = 16 * 2**20
# On the CPU, RN50 gains from batching up to a few 0.1 Mpx, then loses as activations outgrow the caches (measured on
# 2 Xeon cores: 224x224 fastest in batches of 4-8, 512x384 and up no faster in pairs). 0.5 Mpx batches ten 224x224
# images and gives photos of 0.5 Mpx and more a batch each, which also bounds memory.
DEFAULT_MAX_BATCH_PIXELS_CPU = 2**19
# Scoring one image costs about 200 MiB of activations per megapixel in fp32 (benchmarks/RESULTS.md, "Memory per
# megapixel"), on top of ~1.1 GB for the process and model. 48 Mpx (a 8000x6000 photo) then peaks near 11 GB, so a CPU
# run on a 16 GB machine survives the largest image it accepts; larger ones become error rows instead of an OOM kill.
DEFAULT_MAX_IMAGE_PIXELS = 48_000_000

# Quality maps: crops of 224 pixels (CLIP's training size) every half crop.
DEFAULT_WINDOW = 224
DEFAULT_STRIDE = 112
MAP_METHODS = ("windows", "tokens")

PRECISIONS = ("fp32", "fp16", "bf16")
# Decoding threads are capped here: beyond 8, Pillow's decoders outrun any CPU model.
MAX_DEFAULT_WORKERS = 8


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (a CPU-limited container), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Decoding threads by default: one per available CPU, at most 8 (Pillow and torch release the GIL)."""
    return min(MAX_DEFAULT_WORKERS, available_cpus())
