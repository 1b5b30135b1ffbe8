"""Keeping freed memory: glibc serves large blocks from the heap after ``keep_freed_memory``, and the commands ask."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from helpers import save_image, natural_image

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# glibc's malloc statistics (mallinfo2) and its malloc and free, for the probes below.
MALLINFO = """
import ctypes, json
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
"""
# Bytes glibc maps for a 64 MiB buffer while it is alive, before and after the call.
PROBE = MALLINFO + """
def mapped_while_alive():
    start = libc.mallinfo2().hblkhd
    block = bytearray(64 << 20)
    held = libc.mallinfo2().hblkhd - start
    del block
    return held
before = mapped_while_alive()
from qualiclip_infer import keep_freed_memory
tuned = keep_freed_memory()
print(json.dumps([before, tuned, mapped_while_alive(), keep_freed_memory()]))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_large_blocks_come_from_the_heap_after_the_call():
    import json

    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    before, tuned, after, again = json.loads(result.stdout)
    assert before >= 64 << 20  # glibc's default: a block this large is an mmap of its own
    assert (tuned, after, again) == (True, 0, True)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_environment_can_leave_malloc_as_it_is():
    import json
    import os

    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "QUALICLIP_INFER_MALLOC": "system"})
    assert result.returncode == 0, result.stderr
    before, tuned, after, again = json.loads(result.stdout)
    assert tuned is False and after >= 64 << 20


# MiB of heap left after freeing MIB of 2 MiB blocks, newest first, so that each joins the free top of the heap.
TRIM_PROBE = MALLINFO + """
from qualiclip_infer import keep_freed_memory
keep_freed_memory()
def heap_after_freeing(mib):
    blocks = [libc.malloc(2 << 20) for _ in range(mib // 2)]
    for block in reversed(blocks):
        libc.free(block)
    return libc.mallinfo2().arena >> 20
print(json.dumps([heap_after_freeing(200), heap_after_freeing(300)]))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_up_to_256_mib_of_freed_memory_is_kept_for_the_next_pass():
    import json

    result = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    after_200, after_300 = json.loads(result.stdout)
    assert after_200 >= 200  # all of it kept: the next forward pass reuses it without asking the kernel
    assert after_300 < 100  # the free top passed 256 MiB and was given back; only what was freed after stays


def test_every_command_keeps_freed_memory(monkeypatch, tmp_path, tiny_checkpoint):
    from qualiclip_infer import _cli
    from qualiclip_infer.cli import main

    calls = []
    monkeypatch.setattr(_cli, "keep_freed_memory", lambda: calls.append(True) or True)
    save_image(tmp_path / "a.png", natural_image(64, 48, seed=1))
    assert main([str(tmp_path / "a.png"), "--weights", str(tiny_checkpoint), "-q", "-o", str(tmp_path / "a.csv")]) == 0
    assert calls == [True]
