"""Files named by URIs (``s3://``, ``gs://``, ``file://``: any filesystem pyarrow has): telling them from paths,
listing them, opening them.

Kept free of torch; pyarrow is imported only when a URI is actually listed or opened (it comes with the ``ray``
extra), so plain paths never need it. Local paths are opened here too, so that readers of shards and Parquet files
take one opener for both.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import IO, Any, Callable, Dict, Iterator, List, Sequence, Tuple

from .extras import require
from .files import InputNotFoundError, find_images, image_extensions
from .messages import first_line

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """Whether ``path`` names a file through a filesystem URI (``s3://``, ``gs://``, ``file://``...)."""
    return bool(_URI.match(path))


def _pyarrow_fs(feature: str) -> Any:
    return require("pyarrow.fs", "ray", feature, needs="pyarrow")


def find_inputs(paths: Sequence[str], *, recursive: bool = True, hidden: bool = False) -> List[str]:
    """Like :func:`~qualiclip_infer.files.find_images`, and also lists URIs of any filesystem pyarrow has.

    A URI naming a file is kept whatever its extension; a URI naming a folder (an object-store prefix) is listed
    for files with an image extension, under the same rules for recursion and hidden names. Glob patterns work only
    for local paths.

    Raises:
        InputNotFoundError: An argument is neither an existing path nor a glob pattern, or a URI names nothing.
        ImportError: A URI is given and pyarrow is not installed.
    """
    found: Dict[str, None] = {}
    extensions = image_extensions()
    for arg in paths:
        if is_uri(arg):
            matches = list_uri(arg, lambda name: os.path.splitext(name)[1].lower() in extensions,
                               recursive=recursive, hidden=hidden)
        else:
            matches = find_images([arg], recursive=recursive, hidden=hidden)
        found.update(dict.fromkeys(matches))
    return list(found)


def list_uri(uri: str, wanted: Callable[[str], bool], *, recursive: bool, hidden: bool) -> List[str]:
    """The files a URI of any filesystem pyarrow has names: the URI itself when it names a file, else the files
    below that folder (object-store prefix) whose base name is ``wanted``, hidden names only with ``hidden``; sorted.

    Raises:
        InputNotFoundError: The URI names nothing, or cannot be listed (the cause on one line).
        ImportError: pyarrow is not installed (the message names the extra).
    """
    fs = _pyarrow_fs("Reading URIs")
    try:
        filesystem, root, prefix = resolve_uri(uri)
        info = filesystem.get_file_info(root)
        if info.type == fs.FileType.File:
            return [uri]
        if info.type != fs.FileType.Directory:
            raise InputNotFoundError(f"{uri}: no such file or folder")
        listed = filesystem.get_file_info(fs.FileSelector(root, recursive=recursive))
    except InputNotFoundError:
        raise
    except Exception as error:  # unknown scheme, credentials, network: one line naming the URI
        raise InputNotFoundError(f"{uri}: cannot list: {first_line(error)}") from error
    files = []
    for entry in listed:
        relative = entry.path[len(root):].lstrip("/")
        if entry.type != fs.FileType.File or not wanted(entry.base_name):
            continue
        if hidden or not any(part.startswith(".") for part in relative.split("/")):
            files.append(prefix + entry.path)
    return sorted(files)


def resolve_uri(uri: str) -> Tuple[Any, str, str]:
    """The pyarrow filesystem of a URI, the path within it, and the prefix that makes its paths URIs again
    (``s3://`` for ``s3://bucket/key``, whose path is ``bucket/key``)."""
    fs = _pyarrow_fs("Reading URIs")
    uri = uri.rstrip("/") if len(uri) > _URI.match(uri).end() + 1 else uri
    filesystem, path = fs.FileSystem.from_uri(uri)
    prefix = uri[:len(uri) - len(path)] if uri.endswith(path) else uri[:_URI.match(uri).end()]
    return filesystem, path, prefix


class InputOpener:
    """Opens local paths and URIs for reading, keeping one filesystem per scheme and bucket (creating one can cost a
    network round trip: S3 asks for the bucket's region).

    Args:
        base_dir: Where relative local paths are found (a Ray actor may run in another working directory than the
            driver that named them); default the working directory.
    """

    def __init__(self, base_dir: str = ""):
        self.base_dir = base_dir
        self._filesystems: Dict[str, Tuple[Any, str, str]] = {}

    def __call__(self, path: str) -> IO[bytes]:
        """A binary stream of ``path``.

        Raises:
            OSError: The file cannot be opened (also for URI failures, with the cause on one line).
        """
        if not is_uri(path):
            return open(self.local_path(path), "rb")
        with _as_os_error():
            start = _URI.match(path).end()
            key = path[:path.find("/", start) + 1 or len(path)]
            if key not in self._filesystems:
                self._filesystems[key] = resolve_uri(path)
            filesystem, _, prefix = self._filesystems[key]
            return filesystem.open_input_file(path[len(prefix):] if path.startswith(prefix) else resolve_uri(path)[1])

    def local_path(self, path: str) -> str:
        """Where a local path is found from here."""
        return os.path.join(self.base_dir, path)

    def read(self, path: str) -> bytes:
        """The whole file (a URI's object) as bytes.

        Raises:
            OSError: As for opening, or a failed read.
        """
        with self(path) as stream, _as_os_error():
            return stream.read()


@contextlib.contextmanager
def _as_os_error() -> Iterator[None]:
    """Lets OSError (and a missing pyarrow's ImportError) through, and turns pyarrow's own error types into an
    OSError with the cause on one line, so that callers catch one type."""
    try:
        yield
    except (OSError, ImportError):
        raise
    except Exception as error:
        raise OSError(first_line(error)) from error


open_input = InputOpener()
