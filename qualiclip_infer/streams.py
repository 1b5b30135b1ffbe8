"""Keeping a command's standard streams sound: closed ones, third-party warnings, and libtiff's C messages.

- A closed standard stream (``>&-``, ``2>&-``) leaves its descriptor free, and the next file opened would take it:
  the output file as descriptor 2 would receive every C library's messages. :func:`reserve_standard_descriptors`
  points closed ones at the null device (Python's ``sys.stdout``/``sys.stderr`` stay ``None``, so the command
  still knows they were closed).
- Pillow reports oddities of a file (corrupt EXIF, a truncated MPO...) as Python warnings that do not name the file:
  the commands' ``_cli.run`` prints each on one line naming the input being read (its reading thread's task label),
  or drops them with ``-q``.
- libtiff prints its warnings (``TIFFReadDirectory: Warning, Unknown field with tag ...``) from C, straight to
  descriptor 2, without the file's name. With ``-q``, :func:`silence_libtiff` removes libtiff's message handlers in
  this process; the errors that matter still reach the rows, as Pillow raises them.

Torch-free.
"""

from __future__ import annotations

import os


def reserve_standard_descriptors() -> None:
    """Opens the null device on each of descriptors 0, 1 and 2 that is closed."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def silence_libtiff() -> bool:
    """Removes libtiff's warning and error handlers in this process, so it prints nothing; whether it could.

    Pillow still turns a failed TIFF decode into an exception (an error row). Needs Pillow's ``_imaging`` module to
    link libtiff, as Pillow's wheels do; elsewhere nothing changes.
    """
    import ctypes

    from PIL import _imaging

    try:
        library = ctypes.CDLL(_imaging.__file__)  # symbol look-ups here search its libraries too (libtiff)
        handlers = [library.TIFFSetWarningHandler, library.TIFFSetErrorHandler]
    except (OSError, AttributeError):  # no libtiff, or a platform where the look-up does not reach it
        return False
    for set_handler in handlers:
        set_handler.restype = ctypes.c_void_p
        set_handler.argtypes = [ctypes.c_void_p]
        set_handler(None)
    return True
