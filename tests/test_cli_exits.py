"""How ``qualiclip-score`` ends, run as a subprocess: Ctrl-C (SIGINT) exits 130 with every row so far flushed and
whole; a reader that goes away (``| head -1``) ends it without a traceback; a quality map that cannot be written is
reported on one line and makes the exit status 1, its row written all the same."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import natural_image, save_image

TIMEOUT = 180


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    first = save_image(folder / "000.png", natural_image(64, 48, 0))
    for index in range(1, 400):
        shutil.copy(first, folder / f"{index:03d}.png")
    return folder


def _environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _command(*args) -> list:
    return [sys.executable, "-m", "qualiclip_infer", *map(str, args)]


def _rows(text: str) -> list:
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == ["path", "score", "width", "height", "error"]
    return list(reader)


def test_sigint_exits_130_with_the_rows_so_far_flushed(many, tiny_checkpoint, tmp_path):
    out = tmp_path / "rows.csv"
    process = subprocess.Popen(_command(many, "--weights", tiny_checkpoint, "--device", "cpu", "--batch-size", "1",
                                        "--workers", "1", "-o", out), stderr=subprocess.PIPE, text=True,
                               env=_environment())
    deadline = time.monotonic() + TIMEOUT
    while not out.exists() or out.read_text().count("\n") < 3:  # the header and two rows
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    rows = _rows(out.read_text())
    assert 2 <= len(rows) < 400, "the run finished before the signal; make the folder larger"
    assert out.read_text().endswith("\n")
    for row in rows:
        assert row["path"].startswith(os.fspath(many)) and 0 <= float(row["score"]) <= 1 and row["error"] == ""


def test_a_reader_that_goes_away_ends_the_run_quietly(many, tiny_checkpoint, tmp_path):
    errors = tmp_path / "stderr.txt"
    command = " ".join(map(str, _command(many, "--weights", tiny_checkpoint, "--device", "cpu", "--batch-size", "1")))
    pipeline = f'{command} 2>"{errors}" | head -1; echo "${{PIPESTATUS[0]}}"'
    result = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, env=_environment(),
                            timeout=TIMEOUT)
    header, status = result.stdout.splitlines()
    assert header == "path,score,width,height,error"
    stderr = errors.read_text()
    assert stderr == "", stderr  # no traceback, no "Exception ignored", no error line
    assert status == "1"  # stopped before scoring everything


def test_a_map_that_cannot_be_written_exits_1_and_keeps_the_row(tiny_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed, name in enumerate(("a.png", "b.png")):
        save_image(photos / name, natural_image(64, 48, seed))
    maps = tmp_path / "maps"
    (maps / "a.png.png").mkdir(parents=True)  # a folder where a's map would go
    result = subprocess.run(_command(photos, "--weights", tiny_checkpoint, "--device", "cpu", "--maps", maps),
                            capture_output=True, text=True, env=_environment(), timeout=TIMEOUT)
    assert result.returncode == 1, result.stderr
    rows = _rows(result.stdout)
    assert [Path(row["path"]).name for row in rows] == ["a.png", "b.png"]
    assert all(row["score"] and row["error"] == "" for row in rows)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "a.png: quality map not written to" in lines[0] and "Traceback" not in result.stderr
    assert (maps / "b.png.png").is_file()
