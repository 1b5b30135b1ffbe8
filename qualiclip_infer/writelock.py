"""One writer per output file: an exclusive advisory lock on a lock file beside it, holding the writer's pid.

Two runs appending to one file (two terminals, a retry loop, a job started twice) would write every row twice. So a
command that writes an output file first takes :class:`OutputLock` on ``.NAME.lock`` in the same folder; a second
one is refused at once. The lock is ``fcntl.flock``: the kernel releases it when the process ends, however it ends,
so a killed run never leaves a file locked; the lock file itself is removed by the run that holds it.

Torch-free. Where ``fcntl`` does not exist (Windows) writes are not locked.
"""

from __future__ import annotations

import os
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class OutputBusyError(OSError):
    """Another process holds the lock of an output file."""


def lock_path(target: str) -> str:
    """The lock file of an output file or folder: ``.NAME.lock`` beside it."""
    folder, name = os.path.split(os.path.abspath(target))
    return os.path.join(folder, f".{name}.lock")


class OutputLock:
    """An exclusive lock on writing ``target``, held from :meth:`acquire` until :meth:`release` or the process ends.

    Example::

        lock = OutputLock("scores.csv", "qualiclip-score")
        lock.acquire()          # OutputBusyError if another run writes scores.csv
        try:
            ...
        finally:
            lock.release()

    Args:
        target: The output file or folder.
        program: The command's name, for the message another run gets.
    """

    def __init__(self, target: str, program: str):
        self.target = target
        self.path = lock_path(target)
        self._program = program
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Takes the lock without waiting.

        Raises:
            OutputBusyError: Another process holds it; the message names the file and that process's pid.
            OSError: The lock file cannot be created.
        """
        if fcntl is None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise OutputBusyError(f"{self.target} is being written by another {self._program}"
                                      + (f", pid {holder}" if holder else "")) from None
            # The holder removes the lock file before it lets go: a lock on a removed file locks nothing.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Removes the lock file and lets go of the lock (a no-op when not held)."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except OSError:  # already gone, or the folder went away: the lock ends with the descriptor all the same
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
