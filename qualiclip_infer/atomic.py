"""Writing a file so that readers see either the old content or the whole new one, never a part.

Every file this package saves (checkpoints, training state, prompt-feature cache entries) goes through
:func:`atomic_write`: the content goes to a temporary file beside the target, named uniquely per process and call,
is flushed to disk, and replaces the target in one rename. Two processes saving the same file never share a
temporary file; the last rename wins, whole.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Union


@contextlib.contextmanager
def atomic_write(path: Union[str, os.PathLike]) -> Iterator[BinaryIO]:
    """Opens a temporary binary file that replaces ``path`` when the block ends without an exception.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Example::

        with atomic_write("model.pth") as f:
            torch.save(tensors, f)

    Raises:
        OSError: The folder is missing or not writable, or the disk is full.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def write_text_atomically(path: Union[str, os.PathLike], text: str, encoding: str = "utf-8",
                          errors: str = "strict") -> None:
    """Writes ``text`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path) as f:
        f.write(text.encode(encoding, errors))
