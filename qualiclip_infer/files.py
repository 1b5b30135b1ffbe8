"""Which files count as images when a folder is searched. Kept free of torch so the CLI can use it before loading."""

from __future__ import annotations

from functools import lru_cache
from typing import FrozenSet


@lru_cache(maxsize=None)
def image_extensions() -> FrozenSet[str]:
    """Lower-case file extensions (with the dot) of every format Pillow can open."""
    from PIL import Image

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
