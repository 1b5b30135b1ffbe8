"""Which files count as images, and finding them in files, folders and glob patterns.

Kept free of torch so the command-line tools can use it before loading the model. The scorer's CLI, the trainer and
the evaluator all find images here, so the same rules (extensions, hidden files, recursion) hold everywhere.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from functools import lru_cache
from typing import AbstractSet, Dict, FrozenSet, List, Sequence

_GLOB_MAGIC = re.compile(r"[*?[]")


class InputNotFoundError(ValueError):
    """A command-line input that is neither an existing path nor a glob pattern."""


@lru_cache(maxsize=None)
def image_extensions() -> FrozenSet[str]:
    """Lower-case file extensions (with the dot) of every format Pillow can open."""
    from PIL import Image

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def find_images(paths: Sequence[str], *, recursive: bool = True, hidden: bool = False) -> List[str]:
    """Expands files, folders and glob patterns into image paths: per argument sorted, duplicates dropped.

    A file named literally is kept whatever its extension. Folder contents and glob matches are kept if Pillow can
    open their extension. Names starting with '.' found in folders or by wildcards are skipped unless ``hidden``.

    Raises:
        InputNotFoundError: An argument is neither an existing path nor a glob pattern.
    """
    extensions = image_extensions()
    found: Dict[str, None] = {}
    for arg in paths:
        if os.path.isdir(arg):
            matches = _walk(arg, recursive, hidden, extensions)
        elif os.path.lexists(arg):
            matches = [arg]
        elif _GLOB_MAGIC.search(arg):
            matches = _glob(arg, recursive, hidden, extensions)
        else:
            raise InputNotFoundError(f"{arg}: no such file or folder")
        found.update((os.path.normpath(path), None) for path in matches)
    return list(found)


def _walk(folder: str, recursive: bool, hidden: bool, extensions: AbstractSet[str]) -> List[str]:
    files = []
    for top, folders, names in os.walk(folder, onerror=_report_unlistable):
        folders[:] = [name for name in folders if recursive and (hidden or not name.startswith("."))]
        files.extend(os.path.join(top, name) for name in names
                     if (hidden or not name.startswith(".")) and os.path.splitext(name)[1].lower() in extensions)
    return sorted(files)


def _glob(pattern: str, recursive: bool, hidden: bool, extensions: AbstractSet[str]) -> List[str]:
    # include_hidden exists from Python 3.11; before, wildcards never match hidden names.
    options = {"include_hidden": True} if hidden and sys.version_info >= (3, 11) else {}
    files = []
    for match in sorted(glob.glob(pattern, recursive=True, **options)):
        if os.path.isdir(match):
            files.extend(_walk(match, recursive, hidden, extensions))
        elif os.path.splitext(match)[1].lower() in extensions:
            files.append(match)
    return files


def _report_unlistable(error: OSError) -> None:
    print(f"{os.path.basename(sys.argv[0]) or 'qualiclip-infer'}: {error.filename}: cannot list folder: {error.strerror}",
          file=sys.stderr)
