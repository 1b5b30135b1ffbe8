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


class AtomicFile:
    """A temporary binary file beside ``path`` that replaces it in one rename on :meth:`commit`, or is removed on
    :meth:`discard`: the form of :func:`atomic_write` for a file whose writing outlives one ``with`` block (an
    output shard filled sample by sample).

    Raises:
        OSError: The folder is missing or not writable.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        handle, self._temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                                   suffix=".partial")
        self.file: BinaryIO = os.fdopen(handle, "wb")

    def commit(self) -> None:
        """Flushes the file to disk and gives it its name.

        Raises:
            OSError: The disk is full, or the rename fails (call :meth:`discard` then).
        """
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self._temporary, self.path)

    def discard(self) -> None:
        """Removes the temporary file; ``path`` is left as it was."""
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.remove(self._temporary)


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
    target = AtomicFile(path)
    try:
        yield target.file
        target.commit()
    except BaseException:
        target.discard()
        raise


def write_text_atomically(path: Union[str, os.PathLike], text: str, encoding: str = "utf-8",
                          errors: str = "strict") -> None:
    """Writes ``text`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path) as f:
        f.write(text.encode(encoding, errors))
