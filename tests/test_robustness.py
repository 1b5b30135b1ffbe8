"""Issue 18: a run cannot hang on a file, fails on one clear line when the machine does, and gives each file the
result it would get alone. The commands run as subprocesses (tests/helpers_robust.py stages stuck reads and full
disks inside them); the library checks run in-process on the tiny model."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
from helpers import natural_image, save_image
from helpers_robust import (TIMEOUT, metered_open, mixed_formats, patched_command, score_command,
                            wait_for_text)
from PIL import Image

from qualiclip_infer import QualityScorer
from qualiclip_infer.images import ImageError, check_tensor, image_size
from qualiclip_infer.output import OutputFileError, RowWriter, prepare_resume
from qualiclip_infer.writelock import OutputBusyError, OutputLock


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return QualityScorer(tiny_checkpoint, device="cpu")


@pytest.fixture
def photos(tmp_path) -> Path:
    """Three small pictures of different sizes (each its own batch)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        save_image(folder / f"p{index}.png", natural_image(40 + index, 36, seed=index))
    return folder


def jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# 1. Reading never blocks forever


def test_a_fifo_and_a_socket_in_a_folder_get_error_rows_and_the_run_finishes(photos, tiny_checkpoint, tmp_path):
    os.mkfifo(photos / "fifo.jpg")
    short = Path(tempfile.mkdtemp(dir="/tmp"))  # AF_UNIX paths are limited to about 100 bytes
    server = socket.socket(socket.AF_UNIX)
    server.bind(os.fspath(short / "s.png"))
    os.symlink(short / "s.png", photos / "socket.png")  # a symlink is followed, then checked
    out = tmp_path / "rows.jsonl"
    try:
        result = score_command(photos, "--weights", tiny_checkpoint, "-o", out, "-q", timeout=60)
    finally:
        server.close()
    assert result.returncode == 1, result.stderr
    rows = {Path(row["path"]).name: row for row in jsonl(out)}
    assert rows["fifo.jpg"]["error"] == "not a regular file (a FIFO)"
    assert rows["socket.png"]["error"] == "not a regular file (a socket)"
    assert all(rows[f"p{index}.png"]["score"] is not None for index in range(3))


def test_score_refuses_a_fifo_without_opening_it(scorer, tmp_path, monkeypatch):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *args: opened.append(os.fspath(path)) or real_open(path, *args))
    with pytest.raises(ImageError, match=r"x\.png: not a regular file \(a FIFO\)"):
        scorer.score(fifo)  # opening a FIFO for reading would wait for a writer forever
    assert os.fspath(fifo) not in opened


def test_a_read_that_never_ends_becomes_an_error_row_within_the_time_limit(scorer, photos, monkeypatch):
    import qualiclip_infer.images as images

    release = threading.Event()
    real_open = images.open_regular

    def open_regular(path):
        if os.fspath(path).endswith("p1.png"):
            release.wait()  # a stalled network mount
        return real_open(path)

    monkeypatch.setattr(images, "open_regular", open_regular)
    paths = sorted(photos.iterdir())
    started = time.monotonic()
    try:
        results = list(scorer.iter_scores(paths, workers=2, read_timeout=0.5))
    finally:
        release.set()
    assert time.monotonic() - started < 10
    assert [result.ok for result in results] == [True, False, True]
    assert results[1].error == "reading the header took longer than 0.5 s (read timeout)"


def test_qualiclip_score_read_timeout_turns_a_stuck_decode_into_a_row(photos, tiny_checkpoint, tmp_path):
    out = tmp_path / "rows.jsonl"
    command = patched_command("stuck", "p1.png:2", photos, "--weights", tiny_checkpoint, "-o", out,
                              "--read-timeout", "1", "--workers", "2")
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 60  # and the stuck thread does not hold up the exit
    rows = {Path(row["path"]).name: row for row in jsonl(out)}
    assert rows["p1.png"]["error"] == "decoding took longer than 1 s (read timeout)"
    assert rows["p0.png"]["score"] is not None and rows["p2.png"]["score"] is not None


def test_ctrl_c_ends_the_run_at_once_while_a_read_is_stuck(photos, tiny_checkpoint, tmp_path):
    out = tmp_path / "rows.jsonl"
    command = patched_command("stuck", "p1.png:2", photos, "--weights", tiny_checkpoint, "-o", out,
                              "--read-timeout", "600", "--workers", "2")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr.readline().strip() == "stuck"
        wait_for_text(out)  # the row before the stuck one
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        process.wait(timeout=30)
    finally:
        process.kill()
    assert time.monotonic() - started < 10
    assert process.returncode == 130
    assert "interrupted" in process.stderr.read()
    assert [Path(row["path"]).name for row in jsonl(out)] == ["p0.png"]  # what was written is kept


# ---------------------------------------------------------------------------------------------------------------
# 2. The header probe reads a bounded number of bytes


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _zero_padded_png(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(_PNG_START)
        f.truncate(4 * 2**30)  # a sparse hole of zeros, no IEND: the walk once read it 12 bytes at a time


def _png_of_a_million_empty_chunks(path: Path) -> None:
    path.write_bytes(_PNG_START + _png_chunk(b"tEXt", b"") * 1_000_000 + _png_chunk(b"IEND", b""))


_PNG_START = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 6000, 6000, 8, 2, 0, 0, 0))
              + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)))


@pytest.mark.parametrize("make, budget", [(_zero_padded_png, 64 * 2**10), (_png_of_a_million_empty_chunks, 2**21)],
                         ids=["zeros", "empty-chunks"])
def test_a_huge_zero_padded_png_header_is_read_in_under_a_second(tmp_path, monkeypatch, make, budget):
    import qualiclip_infer.images as images

    path = tmp_path / "padded.png"
    make(path)
    # Every byte read is counted: past the budget the read fails, so a walk with no bound fails fast.
    monkeypatch.setattr(images, "open_regular", metered_open(budget))
    started = time.monotonic()
    assert image_size(path) == (6000, 6000)
    assert time.monotonic() - started < 1


# ---------------------------------------------------------------------------------------------------------------
# 3. Machine failures: one line naming the file, exit status 3, rows written stay valid


def test_a_full_disk_mid_run_gives_one_line_exit_3_and_resume_completes(photos, tiny_checkpoint, tmp_path):
    out = tmp_path / "rows.csv"
    room = len("path,score,width,height,error\n") + len(f"{photos}/p0.png,0.12345678,40,36,\n") + 10
    result = subprocess.run(patched_command("full", room, photos, "--weights", tiny_checkpoint, "-o", out, "-q",
                                            "--batch-size", "1"), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"qualiclip-score: error: {out}: No space left on device (while writing rows)"]
    resumed = score_command(photos, "--weights", tiny_checkpoint, "-o", out, "--resume", "-q")
    assert resumed.returncode == 0, resumed.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "path,score,width,height,error"
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(map(os.fspath, photos.iterdir()))


def test_dev_full_as_output_fails_at_the_first_flush_with_exit_3(photos, tiny_checkpoint):
    result = score_command(photos, "--weights", tiny_checkpoint, "-o", "/dev/full", "--format", "csv")
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "qualiclip-score: error: /dev/full: No space left on device (while writing rows)"]


# ---------------------------------------------------------------------------------------------------------------
# 4. One writer per output file


def test_a_second_resume_run_on_the_same_file_is_refused_and_the_file_left_untouched(photos, tiny_checkpoint,
                                                                                     tmp_path):
    out = tmp_path / "rows.jsonl"
    first = subprocess.Popen(patched_command("stuck", "p1.png:2", photos, "--weights", tiny_checkpoint, "-o", out,
                                             "--resume", "--read-timeout", "600", "--workers", "2"),
                             stderr=subprocess.PIPE, text=True)
    try:
        assert first.stderr.readline().strip() == "stuck"
        before = wait_for_text(out)  # the row before the stuck one: the first run writes no more
        second = score_command(photos, "--weights", tiny_checkpoint, "-o", out, "--resume")
        assert second.returncode == 2
        assert second.stderr.splitlines() == [
            f"qualiclip-score: error: -o {out} is being written by another qualiclip-score, pid {first.pid}; "
            f"the file is left unchanged"]
        assert out.read_bytes() == before
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=30)
    assert first.returncode == 130
    third = score_command(photos, "--weights", tiny_checkpoint, "-o", out, "--resume", "-q")
    assert third.returncode == 0, third.stderr
    assert sorted(Path(row["path"]).name for row in jsonl(out)) == ["p0.png", "p1.png", "p2.png"]
    assert not (tmp_path / ".rows.jsonl.lock").exists()  # the lock file goes with its run


def test_the_lock_covers_parquet_folders_and_names_the_holder(tmp_path):
    folder = tmp_path / "parts"
    with OutputLock(os.fspath(folder) + "/", "qualiclip-score"):
        with pytest.raises(OutputBusyError, match=rf"is being written by another qualiclip-score, pid {os.getpid()}"):
            OutputLock(os.fspath(folder), "qualiclip-score").acquire()
    with OutputLock(os.fspath(folder), "qualiclip-score"):  # released: free again
        pass


# ---------------------------------------------------------------------------------------------------------------
# 5. Closed or broken standard streams


def _shell(command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)


def test_closed_stdout_with_an_output_file_writes_the_file(photos, tiny_checkpoint, tmp_path):
    result = _shell(f'"{sys.executable}" -m qualiclip_infer "{photos}" --weights "{tiny_checkpoint}" '
                    f'-o rows.jsonl >&-', tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert len(jsonl(tmp_path / "rows.jsonl")) == 3


def test_closed_stderr_still_writes_every_row(photos, tiny_checkpoint, tmp_path):
    os.mkfifo(photos / "fifo.png")  # an error row, whose message has nowhere to go
    result = _shell(f'"{sys.executable}" -m qualiclip_infer "{photos}" --weights "{tiny_checkpoint}" 2>&-',
                    tmp_path)
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 1 + 4


@pytest.mark.parametrize("closed", [0, 1, 2])
def test_a_command_keeps_files_off_a_closed_standard_descriptor(tmp_path, closed):
    """With descriptor 0, 1 or 2 closed, the first file a command opens would take its number, and a C library's
    messages (fd 2) or a child's output (fd 1) would land in it: ``_cli.run`` reserves the closed ones first."""
    program = ("import os, sys; from qualiclip_infer._cli import run\n"
               "def body():\n"
               "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n"
               "    os.write(fd, str(fd).encode())\n"
               "    return 0\n"
               "sys.exit(run('probe', body))")
    redirect = {0: "<&-", 1: ">&-", 2: "2>&-"}[closed]
    result = _shell(f'"{sys.executable}" -c "{program}" opened.txt {redirect}', tmp_path)
    assert result.returncode == 0, result.stderr
    assert int((tmp_path / "opened.txt").read_text()) > 2


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_a_reader_that_leaves_early_stops_the_run_quietly(photos, tiny_checkpoint, tmp_path, reader):
    """``| head -1`` reads the header and leaves; ``| true`` leaves before the first row is written, so every
    write meets a closed pipe (and, without care, so would Python's last flush of standard output at exit)."""
    result = _shell(f'"{sys.executable}" -m qualiclip_infer "{photos}" --weights "{tiny_checkpoint}" '
                    f'--batch-size 1 2>err.txt | {reader}', tmp_path)
    assert result.stdout == ("path,score,width,height,error\n" if reader.startswith("head") else "")
    assert (tmp_path / "err.txt").read_text() == ""


# ---------------------------------------------------------------------------------------------------------------
# 6. Non-finite inputs and options


@pytest.mark.parametrize("value, kind", [(math.nan, "NaN"), (math.inf, r"\+inf"), (-math.inf, "-inf")])
def test_non_finite_pixels_are_an_input_error_naming_the_input(scorer, value, kind):
    image = torch.rand(3, 40, 40)
    image[1, 5, 5] = value
    with pytest.raises(ImageError, match=rf"^photo: values must be finite numbers in \[0, 1\], found {kind}"):
        check_tensor(image, "photo")
    with pytest.raises(ImageError, match=rf"^batch: .*found {kind}"):
        scorer.score(image[None].repeat(2, 1, 1, 1))
    with pytest.raises(ImageError, match=rf"^input\[0\]: .*found {kind}"):
        scorer.quality_map(image, method="tokens")
    with pytest.warns(UserWarning, match=rf"input\[1\]: .*found {kind}"):
        scores = scorer.score([torch.rand(3, 40, 40), image], on_error="nan")
    assert not math.isnan(scores[0]) and math.isnan(scores[1])


@pytest.mark.parametrize("option, value", [("logit_scale", math.nan), ("logit_scale", math.inf),
                                           ("logit_scale", -1.0), ("max_batch_pixels", math.nan),
                                           ("max_image_pixels", math.inf)])
def test_non_finite_scorer_options_are_refused(tiny_checkpoint, option, value):
    with pytest.raises(ValueError, match=option):
        QualityScorer(tiny_checkpoint, device="cpu", **{option: value})


@pytest.mark.parametrize("value", [math.nan, math.inf, 0, -1])
def test_a_bad_read_timeout_is_refused(scorer, value):
    with pytest.raises(ValueError, match="read_timeout"):
        list(scorer.iter_scores([torch.rand(3, 40, 40)], read_timeout=value))


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_the_command_refuses_a_non_finite_read_timeout(photos, value):
    result = score_command(photos, "--read-timeout", value)
    assert result.returncode == 2 and "--read-timeout" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# 7. Results depend on the file alone


_ROWS_IN_ORDER = """
import hashlib, json, os, sys
from PIL import Image
from qualiclip_infer.images import ImageError, image_size, to_tensor

def package_row(path):
    with Image.open(path):  # the caller's own Pillow code, which reorders Pillow's plugins as files open
        pass
    try:
        return [*image_size(path), hashlib.sha1(to_tensor(path).numpy().tobytes()).hexdigest()]
    except ImageError as error:
        return str(error)

def pillow_row(path):
    with Image.open(path) as img:
        return [img.format, *img.size]

# One child per order, forked before any file is opened: each starts with Pillow's plugins as imported, untouched.
for read, order in json.loads(sys.argv[1]):
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        row = package_row if read == "package" else pillow_row
        print(json.dumps({path: row(path) for path in order}), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
"""


def test_a_file_is_read_the_same_whatever_was_opened_before_it(tmp_path):
    paths = [os.fspath(path) for path in mixed_formats(tmp_path / "mixed")]
    tga, ico = (next(path for path in paths if path.endswith(suffix)) for suffix in (".tga", ".ico"))
    orders = [sorted(paths), sorted(paths, reverse=True), random.Random(3).sample(paths, len(paths)),
              *[[path] for path in paths]]
    jobs = [["pillow", [tga, ico]], *(["package", order] for order in orders)]
    result = subprocess.run([sys.executable, "-c", _ROWS_IN_ORDER, json.dumps(jobs)], capture_output=True,
                            text=True, timeout=TIMEOUT)
    pillow, *runs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(runs) == len(orders), result.stderr
    # The trap is live: left to itself, Pillow reads this ICO file as TGA once a .tga file has opened.
    assert pillow[ico] == ["TGA", 32, 19140]
    alone = {path: rows[path] for rows in runs[3:] for path in rows}
    assert alone[ico][:2] == [48, 48]
    for rows in runs[:3]:
        for path in paths:
            assert rows[path] == alone[path], path
    assert all(isinstance(row, list) for row in alone.values()), alone  # every one of them is a readable picture


def test_folder_scans_include_mpo_files(tmp_path):
    from qualiclip_infer.files import find_images

    paths = mixed_formats(tmp_path / "mixed")
    assert sorted(find_images([os.fspath(tmp_path / "mixed")])) == sorted(map(os.fspath, paths))


# ---------------------------------------------------------------------------------------------------------------
# 8. Quiet means quiet


def _jpeg_with_corrupt_exif(path: Path) -> Path:
    exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x05\x01\x12\0\x03\0\0\0\x01\0\x06"  # five entries promised, one given
    Image.fromarray(natural_image(48, 40)).save(path, "JPEG", exif=exif)
    return path


def test_pillow_warnings_name_the_file_or_are_dropped_with_quiet(photos, tiny_checkpoint):
    bad = _jpeg_with_corrupt_exif(photos / "exif.jpg")
    loud = score_command(photos, "--weights", tiny_checkpoint)
    assert loud.returncode == 0
    warned = [line for line in loud.stderr.splitlines() if "Corrupt EXIF" in line]
    assert warned and all(line.startswith(f"qualiclip-score: {bad}: warning: Corrupt EXIF data") for line in warned)
    quiet = score_command(photos, "--weights", tiny_checkpoint, "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_libtiff_handlers_can_be_silenced_and_tiffs_still_decode(tmp_path):
    path = tmp_path / "lzw.tif"
    Image.fromarray(natural_image(40, 36)).save(path, compression="tiff_lzw")  # decoded by libtiff
    # libtiff's own reporting functions, found as the package finds its handlers: silenced, they print nothing.
    code = ("import ctypes, sys; from PIL import _imaging; from qualiclip_infer.streams import silence_libtiff; "
            "from qualiclip_infer.images import to_tensor; silenced = sys.argv[2] == 'quiet' and silence_libtiff(); "
            "library = ctypes.CDLL(_imaging.__file__); library.TIFFWarning(b'probe', b'a warning'); "
            "library.TIFFError(b'probe', b'an error'); print(silenced, tuple(to_tensor(sys.argv[1]).shape))")
    loud, quiet = (subprocess.run([sys.executable, "-c", code, path, mode], capture_output=True, text=True,
                                  timeout=TIMEOUT) for mode in ("loud", "quiet"))
    assert loud.stderr.splitlines() == ["probe: Warning, a warning.", "probe: an error."]  # what silencing hides
    assert quiet.stdout.split(None, 1) == ["True", "(3, 36, 40)\n"] and quiet.stderr == ""


# ---------------------------------------------------------------------------------------------------------------
# 9. Smaller


def test_resume_into_a_folder_says_it_is_a_folder(photos, tmp_path):
    (tmp_path / "old.csv").mkdir()
    result = score_command(photos, "-o", tmp_path / "old.csv", "--resume")
    assert result.returncode == 2
    assert "is a folder" in result.stderr and "parquet" not in result.stderr


def test_an_unwritable_output_is_reported_before_the_model_loads(photos, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    # No --weights: the default model is on the Hub, unreachable here; the output check must come first.
    result = score_command(photos, "-o", blocker / "rows.csv", "--offline", timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"qualiclip-score: error: -o {blocker / 'rows.csv'}: cannot write there")


def test_resume_refuses_a_fifo_without_reading_it(tmp_path):
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    with pytest.raises(OutputFileError, match="not a regular file"):
        prepare_resume(os.fspath(fifo), "csv")


@pytest.mark.parametrize("fmt, row", [
    ("csv", "x.png,nan,40,40,\n"), ("csv", "x.png,inf,40,40,\n"), ("csv", "x\0.png,0.5,40,40,\n"),
    ("jsonl", '{"path": "x.png", "score": NaN, "width": 40, "height": 40, "error": null}\n'),
    ("jsonl", '{"path": "x.png", "score": Infinity, "width": 40, "height": 40, "error": null}\n'),
    ("jsonl", '{"path": "x\\u0000.png", "score": 0.5, "width": 40, "height": 40, "error": null}\n')])
def test_resume_refuses_rows_this_tool_never_writes(tmp_path, fmt, row):
    path = tmp_path / f"rows.{fmt}"
    header = "path,score,width,height,error\n" if fmt == "csv" else ""
    path.write_text(header + row)
    before = path.read_bytes()
    with pytest.raises(OutputFileError, match="not a qualiclip-score"):
        prepare_resume(os.fspath(path), fmt)
    assert path.read_bytes() == before


def test_the_row_writer_names_the_file_when_a_write_fails():
    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

    with pytest.raises(OSError, match=r"No space left on device \(while writing rows\)") as caught:
        RowWriter(Full(), "csv", name="rows.csv")
    assert caught.value.filename == "rows.csv"
