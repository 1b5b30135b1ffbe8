"""Which files count as images, and finding them in files, folders and glob patterns.

Kept free of torch so the command-line tools can use it before loading the model. The scorer's CLI, the trainer and
the evaluator all find images here, so the same rules (extensions, hidden files, recursion) hold everywhere.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import warnings
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


class UnlistableFolderWarning(UserWarning):
    """A folder inside an input that could not be listed; its images are left out and the rest found."""


def _report_unlistable(error: OSError) -> None:
    warnings.warn(f"{error.filename}: cannot list folder: {error.strerror}", UnlistableFolderWarning, stacklevel=2)


def mirrored_paths(paths: Sequence[str], folder: str, suffix: str) -> Dict[str, str]:
    """Output files under ``folder`` for input files, mirroring the folders below the deepest one holding them all.

    An output is the input's path relative to that common folder with ``suffix`` appended (``a/x.jpg`` and ``b/x.jpg``
    give ``folder/a/x.jpg.png`` and ``folder/b/x.jpg.png``; ``x.jpg`` and ``x.png`` give ``x.jpg.png`` and
    ``x.png.png``), so no two inputs share one. Outputs that would still clash (names equal but for case, which some
    file systems do not tell apart, or a file where another output needs a folder) get ``~2``, ``~3``, ... before the
    suffix. Inputs on different drives (Windows) keep their drive as the first folder.

    Args:
        paths: Input files, as listed (relative or absolute).
        folder: The output folder.
        suffix: Appended to each file name, e.g. ``.png``.

    Returns:
        Each input path's output path.
    """
    parts = [_components(os.path.abspath(path)) for path in paths]
    common = min((len(p) - 1 for p in parts), default=0)  # folders only, never a file's own name
    for depth in range(common):
        if len({os.path.normcase(p[depth]) for p in parts}) > 1:
            common = depth
            break
    relatives = [[re.sub(r"[\\/:]+", "_", c).strip("_") or "_" for c in p[common:]] for p in parts]
    # Folders first: a file whose output would be one of them is the one renamed.
    taken_folders = {os.path.join(*r[:depth]).casefold() for r in relatives for depth in range(1, len(r))}
    taken_files: set = set()
    outputs = {}
    for path, relative in zip(paths, relatives):
        name, copy = relative[-1] + suffix, 1
        key = os.path.join(*relative[:-1], name).casefold()
        while key in taken_files or key in taken_folders:
            copy += 1
            name = f"{relative[-1]}~{copy}{suffix}"
            key = os.path.join(*relative[:-1], name).casefold()
        taken_files.add(key)
        outputs[path] = os.path.join(folder, *relative[:-1], name)
    return outputs


def _components(path: str) -> List[str]:
    """An absolute path's drive (empty on POSIX) followed by its non-empty names."""
    drive, rest = os.path.splitdrive(path)
    return [drive] + [name for name in re.split(r"[\\/]" if os.sep == "\\" else "/", rest) if name]
