"""``qualiclip-score``: run as a real subprocess on generated images, plus its pure helpers in-process."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
import zlib
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from helpers import natural_image, save_image
from PIL import Image

from qualiclip_infer import QualityScorer
from qualiclip_infer.cli import UsageError, in_shard, parse_shard, read_prompts
from qualiclip_infer.files import InputNotFoundError, find_images

CONSOLE_SCRIPT = Path(sys.executable).with_name("qualiclip-score")
SUBPROCESS_TIMEOUT = 180


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def _bomb_png(path: Path) -> Path:
    """A real PNG whose header claims 40000x40000 pixels: Pillow refuses it as a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """``good/``: every image scorable, in several sizes and modes, nested, plus hidden and non-image files.
    ``broken/``: one good image and one of each kind of broken input."""
    root = tmp_path_factory.mktemp("images")
    good, broken = root / "good", root / "broken"
    for folder in (good / "nested" / "deeper", good / ".cache", broken):
        folder.mkdir(parents=True)
    save_image(good / "a.jpg", natural_image(96, 64, 1), quality=92)
    save_image(good / "b.jpg", natural_image(96, 64, 2), quality=92)  # same size as a.jpg: one batch
    save_image(good / "c_gray.png", natural_image(64, 80, 3)[..., 0])
    save_image(good / "d_rgba.png", np.dstack([natural_image(80, 64, 4), np.full((64, 80), 200, np.uint8)]))
    Image.fromarray(natural_image(64, 64, 5)).convert("P").save(good / "e_palette.gif")
    Image.fromarray(natural_image(72, 56, 6)).convert("CMYK").save(good / "f_cmyk.jpg")
    Image.fromarray(natural_image(64, 48, 7)[..., 1].astype(np.uint16) * 200).save(good / "g_16bit.png")
    save_image(good / "nested" / "h.jpg", natural_image(96, 64, 8))
    save_image(good / "nested" / "deeper" / "i.webp", natural_image(50, 40, 9))
    (good / "notes.txt").write_text("not an image")
    save_image(good / ".hidden.jpg", natural_image(96, 64, 10))
    save_image(good / ".cache" / "j.jpg", natural_image(96, 64, 11))

    save_image(broken / "ok.jpg", natural_image(96, 64, 12))
    (broken / "truncated.jpg").write_bytes((good / "a.jpg").read_bytes()[:700])
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "text.jpg").write_text("this is not a JPEG\n")
    _bomb_png(broken / "bomb.png")
    save_image(broken / "tiny.png", natural_image(16, 16, 13))
    if os.geteuid() != 0:  # root reads anything
        locked = save_image(broken / "locked.jpg", natural_image(96, 64, 14))
        locked.chmod(0)
    return root


GOOD = ["a.jpg", "b.jpg", "c_gray.png", "d_rgba.png", "e_palette.gif", "f_cmyk.jpg", "g_16bit.png",
        "nested/deeper/i.webp", "nested/h.jpg"]


@pytest.fixture(scope="module")
def expected(images, tiny_checkpoint) -> Dict[str, float]:
    """Scores from the library, one image at a time: what every CLI row must match."""
    scorer = QualityScorer(tiny_checkpoint, device="cpu")
    paths = [images / "good" / name for name in GOOD] + [images / "broken" / "ok.jpg"]
    return {os.fspath(path): scorer.score(path) for path in paths}


def environment() -> Dict[str, str]:
    """This test's (isolated) environment. One torch thread: the tiny model gains nothing from more, and on a busy
    machine OpenMP threads waiting for each other at every layer can make it a hundred times slower."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, script: bool = False, **options) -> subprocess.CompletedProcess:
    """Runs the CLI to completion."""
    command = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "qualiclip_infer"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=environment(),
                          timeout=SUBPROCESS_TIMEOUT, **options)


def start(*args, **options) -> subprocess.Popen:
    """Starts the CLI without waiting, to run several at once or to kill one."""
    return subprocess.Popen([sys.executable, "-m", "qualiclip_infer", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment(), **options)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def csv_rows(text: str) -> List[dict]:
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == ["path", "score", "width", "height", "error"]
    return list(reader)


def jsonl_rows(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stderr_lines(result) -> List[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------------
# End to end


def test_console_script_scores_a_folder_tree_exactly(images, tiny_checkpoint, expected):
    result = cli(images / "good", "--weights", tiny_checkpoint, "--batch-size", "2", "--workers", "2", script=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = csv_rows(result.stdout)  # csv: stdout is not a terminal
    assert [row["path"] for row in rows] == [os.fspath(images / "good" / name) for name in GOOD]
    for row in rows:
        assert abs(float(row["score"]) - expected[row["path"]]) < 1e-6
        assert (int(row["width"]), int(row["height"])) == Image.open(row["path"]).size
        assert row["error"] == ""


def test_broken_inputs_get_an_error_row_and_the_rest_is_scored(images, tiny_checkpoint, expected, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = cli(images / "broken", "--weights", tiny_checkpoint, "-o", out)
    assert result.returncode == 1
    rows = {Path(row["path"]).name: row for row in jsonl_rows(out)}
    assert set(rows) == {path.name for path in (images / "broken").iterdir()}
    ok = rows.pop("ok.jpg")
    assert ok["error"] is None and abs(ok["score"] - expected[ok["path"]]) < 1e-6
    causes = {"truncated.jpg": "truncated", "empty.jpg": "not an image", "text.jpg": "not an image",
              "bomb.png": "decompression bomb", "tiny.png": "32x32", "locked.jpg": "permission denied"}
    for name, row in rows.items():
        assert row["score"] is None
        assert causes[name] in row["error"] and "\n" not in row["error"]
    messages = stderr_lines(result)
    assert len(messages) == len(rows)
    for name, row in rows.items():
        assert sum(row["path"] in line and row["error"] in line for line in messages) == 1
    assert (rows["tiny.png"]["width"], rows["tiny.png"]["height"]) == (16, 16)


def test_json_sorted_filtered_with_summary(images, tiny_checkpoint, expected):
    good = {path: score for path, score in expected.items() if "/good/" in path}
    ranked = sorted(good.values())
    threshold = (ranked[3] + ranked[4]) / 2  # between two scores: batching may move a score by ~1e-7
    result = cli(images / "good", images / "broken" / "tiny.png", "--weights", tiny_checkpoint, "--format", "json",
                 "--sort", "score", "--reverse", "--min-score", threshold, "--summary", "--quiet")
    assert result.returncode == 1  # tiny.png failed
    rows = json.loads(result.stdout)
    listed = [row for row in rows if row["score"] is not None]
    assert [row["path"] for row in listed] == sorted((p for p, s in good.items() if s >= threshold),
                                                     key=good.get, reverse=True)
    assert [Path(row["path"]).name for row in rows if row["score"] is None] == ["tiny.png"]  # failures stay listed
    summary = dict(line.split() for line in stderr_lines(result))  # --quiet: no per-file message, only the summary
    scores = list(good.values())
    assert (int(summary["images"]), int(summary["scored"]), int(summary["failed"])) == (len(good) + 1, len(good), 1)
    for name, value in (("mean", statistics.fmean(scores)), ("median", statistics.median(scores)),
                        ("min", min(scores)), ("max", max(scores))):
        assert float(summary[name]) == pytest.approx(value, abs=1e-4)


def _read_pty(master: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode()


def test_on_a_terminal_table_output_and_a_progress_bar(images, tiny_checkpoint, expected):
    out_master, out_slave = pty.openpty()
    err_master, err_slave = pty.openpty()
    fcntl.ioctl(err_slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    process = subprocess.Popen([sys.executable, "-m", "qualiclip_infer", images / "good", "--weights", tiny_checkpoint],
                               stdin=subprocess.DEVNULL, stdout=out_slave, stderr=err_slave, env=environment())
    os.close(out_slave)
    os.close(err_slave)
    # Both outputs are far below a terminal's buffer, so reading after the exit cannot dead-lock.
    assert process.wait(timeout=SUBPROCESS_TIMEOUT) == 0
    table, progress = _read_pty(out_master).splitlines(), _read_pty(err_master)
    assert table[0].split() == ["path", "score", "width", "height", "error"]
    first = os.fspath(images / "good" / GOOD[0])
    assert table[1].split() == [first, f"{expected[first]:.4f}", "96", "64"]
    assert len(table) == 1 + len(GOOD)
    assert "img/s" in progress and f"{len(GOOD)}/{len(GOOD)}" in progress


def test_prompts_file_and_scorer_options(images, tiny_checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# pairs for this test\n\nA crisp photo. | A blurry photo.\n  Clean image.|Noisy image.  \n")
    paths = [images / "good" / name for name in ("a.jpg", "c_gray.png", "nested/h.jpg")]
    out = tmp_path / "rows.jsonl"
    result = cli(*paths, "--weights", tiny_checkpoint, "--prompts", prompts, "--logit-scale", "50",
                 "--batch-size", "1", "--workers", "1", "--device", "cpu", "--precision", "fp32", "-o", out)
    assert result.returncode == 0, result.stderr
    scorer = QualityScorer(tiny_checkpoint, device="cpu", logit_scale=50,
                           prompts=[("A crisp photo.", "A blurry photo."), ("Clean image.", "Noisy image.")])
    rows = jsonl_rows(out)
    assert [row["path"] for row in rows] == list(map(os.fspath, paths))
    assert [row["score"] for row in rows] == pytest.approx(scorer.score(paths), abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["{good}", "--frobnicate"], "unrecognized arguments"),
    (["{empty}"], "no images found"),
    (["{empty}/missing.jpg"], "no such file or folder"),
    (["{good}", "--resume"], "--resume needs -o"),
    (["{good}", "--resume", "-o", "{empty}/out.json"], "csv and jsonl"),
    (["{good}", "--resume", "-o", "{empty}/out.csv", "--sort", "score"], "--sort"),
    (["{good}", "--shard", "4/3"], "K/N"),
    (["{good}", "--batch-size", "0"], "expected an integer >= 1"),
    (["{good}", "--min-score", "0.8", "--max-score", "0.2"], "--max-score"),
    (["{good}", "--prompts", "{empty}/none.txt"], "none.txt"),
    (["{good}", "--prompts", "{prompts}"], "prompts.txt:3:"),
])
def test_usage_errors_exit_2(images, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "prompts.txt").write_text("# ok so far\nGood. | Bad.\nno separator here\n")
    fill = dict(empty=tmp_path / "empty", good=images / "good", prompts=tmp_path / "prompts.txt")
    started = time.monotonic()
    result = cli(*(arg.format(**fill) for arg in args))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 20  # caught before the model is loaded


def test_weights_errors_exit_2_with_one_line(images, tmp_path):
    (tmp_path / "garbage.pth").write_text("not a checkpoint")
    runs = {
        "weights file not found": start(images / "good", "--weights", tmp_path / "missing.pth"),
        "garbage.pth": start(images / "good", "--weights", tmp_path / "garbage.pth"),
    }
    for message, process in runs.items():
        result = finish(process)
        assert result.returncode == 2
        assert len(stderr_lines(result)) == 1 and message in result.stderr, result.stderr


class ConnectionRecorder:
    """A loopback TCP server that only counts the connections it receives."""

    def __init__(self):
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def _serve(self):
        while True:
            connection, _ = self._socket.accept()
            self.connections += 1
            connection.close()


def test_offline_without_cached_weights_exits_2_without_touching_the_network(images, monkeypatch):
    offline, online = ConnectionRecorder(), ConnectionRecorder()
    monkeypatch.setenv("HF_ENDPOINT", offline.endpoint)
    offline_run = start(images / "good", "--offline")
    monkeypatch.setenv("HF_ENDPOINT", online.endpoint)
    online_run = start(images / "good")  # the control: without --offline the Hub is asked
    result = finish(offline_run)
    assert result.returncode == 2
    assert len(stderr_lines(result)) == 1 and "offline" in result.stderr and "weights" in result.stderr
    assert offline.connections == 0
    assert finish(online_run).returncode == 2
    assert online.connections > 0


def test_shards_partition_the_collection(images, tiny_checkpoint, expected):
    runs = [start(images / "good", "--weights", tiny_checkpoint, "--shard", f"{k}/3") for k in (1, 2, 3)]
    shards = [[row["path"] for row in csv_rows(finish(run).stdout)] for run in runs]
    everything = [os.fspath(images / "good" / name) for name in GOOD]
    assert sorted(path for shard in shards for path in shard) == sorted(everything)  # each image exactly once
    for k, shard in enumerate(shards, 1):
        assert shard == [path for path in everything if in_shard(path, k, 3)]


def _data_lines(path: Path) -> int:
    return path.read_text().count("\n") - 1 if path.exists() else 0


def test_resume_after_a_killed_run_loses_and_repeats_nothing(images, tiny_checkpoint, tmp_path):
    collection = tmp_path / "collection"
    collection.mkdir()
    sources = [images / "good" / name for name in GOOD]
    for index in range(400):
        shutil.copy(sources[index % len(sources)], collection / f"{index:03d}{sources[index % len(sources)].suffix}")
    out = tmp_path / "rows.csv"
    args = (collection, "--weights", tiny_checkpoint, "-o", out)
    run = start(*args, "--batch-size", "1", "--workers", "1")  # slow enough to be killed half-way
    while _data_lines(out) < 1:  # kill hard as soon as the first row is flushed
        assert run.poll() is None, finish(run).stderr
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert run.returncode == -signal.SIGKILL
    before = csv_rows(out.read_text())
    assert 0 < len(before) < 400, "the run finished before it was killed; make the collection larger"
    unfinished = [path for path in sorted(map(os.fspath, collection.iterdir()))
                  if path not in {row["path"] for row in before}][0]
    with open(out, "a") as f:  # as if killed in the middle of writing a row
        f.write(f"{unfinished},0.12")

    result = cli(*args, "--resume")
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert text.count("path,score") == 1
    after = csv_rows(text)
    paths = [row["path"] for row in after]
    assert len(paths) == len(set(paths)) == 400
    assert set(paths) == set(map(os.fspath, collection.iterdir()))
    assert all(row["score"] and float(row["score"]) != 0.12 for row in after)
    assert after[:len(before)] == before


def test_import_and_help_are_light():
    probe = ("import sys, qualiclip_infer.cli; "
             "print(sorted(m for m in ('torch', 'open_clip', 'huggingface_hub') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"
    result = cli("--help")
    assert result.returncode == 0 and "--shard K/N" in result.stdout and "Exit status" in result.stdout


def test_the_option_defaults_are_the_documented_ones(monkeypatch):
    """docs/cli.md's defaults; --batch-size and --max-pixels are left to the library (tests/test_scorer.py)."""
    from qualiclip_infer import constants
    from qualiclip_infer.cli import build_parser

    monkeypatch.setattr(constants, "available_cpus", lambda: 64)
    args = vars(build_parser().parse_args(["photos"]))
    expected = {"read_timeout": 30, "workers": 8, "batch_size": None, "max_pixels": None, "device": "auto",
                "precision": "fp32", "backend": "torch", "model": "qualiclip", "map_method": "windows",
                "recursive": True, "hidden": False, "format": None, "logit_scale": None}
    assert {key: args[key] for key in expected} == expected
    help_text = " ".join(build_parser().format_help().split())
    assert "(default: 16)" in help_text and "(default: 48)" in help_text and "(default: 30)" in help_text


# ---------------------------------------------------------------------------------------------------------------
# Helpers, in-process


def test_find_images_walks_sorted_and_skips_hidden_and_non_images(images):
    good = images / "good"
    found = find_images([os.fspath(good)])
    assert found == [os.fspath(good / name) for name in GOOD]
    assert set(find_images([os.fspath(good)], hidden=True)) == {*found, os.fspath(good / ".hidden.jpg"),
                                                                 os.fspath(good / ".cache" / "j.jpg")}
    assert find_images([os.fspath(good)], recursive=False) == [os.fspath(good / n) for n in GOOD if "/" not in n]


def test_find_images_globs_explicit_files_and_duplicates(images, tmp_path):
    good = images / "good"
    assert find_images([f"{good}/**/*.jpg"]) == [os.fspath(good / n) for n in ("a.jpg", "b.jpg", "f_cmyk.jpg",
                                                                                "nested/h.jpg")]
    assert find_images([f"{good}/*.jpg"], hidden=True)[0] == os.fspath(good / ".hidden.jpg")
    assert find_images([f"{good}/*.txt"]) == []  # a pattern only picks images
    assert find_images([os.fspath(good / "notes.txt")]) == [os.fspath(good / "notes.txt")]  # a named file: always
    assert find_images([f"{good}/./b.jpg", f"{good}/a.jpg", f"{good}/*.jpg"]) == [
        os.fspath(good / n) for n in ("b.jpg", "a.jpg", "f_cmyk.jpg")]
    with pytest.raises(InputNotFoundError, match="no such file"):
        find_images([os.fspath(tmp_path / "absent.jpg")])


def test_shard_is_a_stable_partition():
    paths = [f"photos/{i:04d}.jpg" for i in range(3000)]
    counts = [sum(in_shard(p, k, 3) for p in paths) for k in (1, 2, 3)]
    assert sum(counts) == 3000 and min(counts) > 900
    assert all(sum(in_shard(p, k, 3) for k in (1, 2, 3)) == 1 for p in paths)
    # Frozen: machines running different versions must still agree on the split.
    assert [k for k in (1, 2, 3) if in_shard("photos/0000.jpg", k, 3)] == [1]
    assert parse_shard(" 2 / 5 ") == (2, 5)


def test_read_prompts(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("# comment\n\n Sharp. | Blurry. \nGood photo.|Bad photo.\n")
    assert read_prompts(os.fspath(good)) == [("Sharp.", "Blurry."), ("Good photo.", "Bad photo.")]
    for text, where in (("A | B\nC | \n", ":2:"), ("A | B | C\n", ":1:"), ("# nothing\n", "no prompt pairs")):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(UsageError, match=where):
            read_prompts(os.fspath(bad))
