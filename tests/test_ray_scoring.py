"""Scoring on Ray: ``score_dataset`` and ``qualiclip-score --ray`` on a real local cluster, against the plain scorer.

The cluster (2 CPUs, no dashboard) is started once for the module; the CLI runs as a subprocess connected to it by
address, except one run that starts its own local cluster as a user's would. Tests that need Ray are skipped when it
is not installed; the missing-extra errors are tested by hiding the installed modules from a subprocess.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
from helpers import natural_image, save_image
from helpers_sources import build_parquet_files, build_shards, jpeg_bytes, write_parquet
from PIL import Image

from qualiclip_infer import QualityScorer
from qualiclip_infer.files import find_images

SUBPROCESS_TIMEOUT = 240
GOOD = ["a.jpg", "b.jpg", "c_gray.png", "d_rgba.png", "e_palette.gif", "f_cmyk.jpg", "g_16bit.png",
        "h_rotated.jpg", "nested/i.jpg", "nested/j.webp"]
BROKEN = {"truncated.jpg": "truncated", "empty.jpg": "not an image", "text.jpg": "not an image",
          "tiny.png": "32x32"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Images of several sizes and PIL modes, nested, and broken files of each kind, all in one folder tree."""
    root = tmp_path_factory.mktemp("ray-images")
    (root / "nested").mkdir()
    save_image(root / "a.jpg", natural_image(96, 64, 1), quality=92)
    save_image(root / "b.jpg", natural_image(96, 64, 2), quality=92)  # same size as a.jpg
    save_image(root / "c_gray.png", natural_image(64, 80, 3)[..., 0])
    save_image(root / "d_rgba.png", np.dstack([natural_image(80, 64, 4), np.full((64, 80), 200, np.uint8)]))
    Image.fromarray(natural_image(64, 64, 5)).convert("P").save(root / "e_palette.gif")
    Image.fromarray(natural_image(72, 56, 6)).convert("CMYK").save(root / "f_cmyk.jpg")
    Image.fromarray(natural_image(64, 48, 7)[..., 1].astype(np.uint16) * 200).save(root / "g_16bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 100x60, shown rotated: 60x100
    Image.fromarray(natural_image(100, 60, 8)).save(root / "h_rotated.jpg", exif=exif)
    save_image(root / "nested" / "i.jpg", natural_image(128, 96, 9))
    save_image(root / "nested" / "j.webp", natural_image(50, 40, 10))
    (root / "truncated.jpg").write_bytes((root / "a.jpg").read_bytes()[:700])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a JPEG\n")
    save_image(root / "tiny.png", natural_image(16, 16, 11))
    return root


@pytest.fixture(scope="module")
def expected(folder, tiny_checkpoint) -> Dict[str, float]:
    """The library's scores, one image at a time: what every row must match."""
    scorer = QualityScorer(tiny_checkpoint, device="cpu")
    return {os.fspath(folder / name): scorer.score(folder / name) for name in GOOD}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster for the module; yields its address. Its workers see isolated caches and no hub."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'qualiclip-infer[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'qualiclip-infer[ray]')")
    pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'qualiclip-infer[ray]')")
    cache = tmp_path_factory.mktemp("ray-worker-cache")
    with pytest.MonkeyPatch.context() as patch:  # workers inherit the environment the cluster starts with
        for name, value in (("HF_HOME", cache / "hf"), ("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", "http://127.0.0.1:9"),
                            ("QUALICLIP_INFER_CACHE", cache / "qualiclip"), ("OMP_NUM_THREADS", "1")):
            patch.setenv(name, str(value))
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def check_rows(rows: List[dict], folder: Path, expected: Dict[str, float],
               listed_as: Callable[[str], str] = lambda path: path) -> None:
    """One row per image found in ``folder``, none missing or twice; scores, sizes and errors as expected.

    ``listed_as`` maps a file's path to the path its row shows (a URI, or a copy's path).
    """
    paths = [row["path"] for row in rows]
    found = {listed_as(path): path for path in find_images([os.fspath(folder)])}
    assert sorted(paths) == sorted(found) and len(set(paths)) == len(paths)
    assert len(found) == len(GOOD) + len(BROKEN)
    for row in rows:
        name = os.path.relpath(found[row["path"]], folder)
        if name in BROKEN:
            assert row["score"] in (None, "") and BROKEN[name] in row["error"] and "\n" not in row["error"]
            continue
        assert row["error"] in ("", None)
        assert abs(float(row["score"]) - expected[os.fspath(folder / name)]) < 1e-6
        with Image.open(folder / name) as image:
            width, height = image.size[::-1] if name == "h_rotated.jpg" else image.size
        assert (int(row["width"]), int(row["height"])) == (width, height)
    tiny = next(row for row in rows if row["path"].endswith("tiny.png"))
    assert (int(tiny["width"]), int(tiny["height"])) == (16, 16)  # the header was read, the size refused


# ---------------------------------------------------------------------------------------------------------------
# score_dataset


def test_score_dataset_of_a_folder_gives_the_scorers_rows(cluster, folder, tiny_checkpoint, expected):
    from qualiclip_infer import score_dataset

    dataset = score_dataset(folder, weights=tiny_checkpoint, device="cpu", batch_size=3, concurrency=2)
    assert dataset.schema().names == ["path", "score", "width", "height", "error"]
    check_rows(dataset.take_all(), folder, expected)


def test_score_dataset_of_binary_files_and_of_uris(cluster, folder, tiny_checkpoint, expected, tmp_path):
    """Bytes read by Ray, and file:// URIs read by the actors through pyarrow, score exactly like the paths."""
    import ray

    from qualiclip_infer.ray_scoring import find_inputs, score_dataset

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    binary = ray.data.read_binary_files(find_images([os.fspath(copy)]), include_paths=True).materialize()
    shutil.rmtree(copy)  # only the bytes are left: the actors must score those, not read the paths
    rows = score_dataset(binary, weights=tiny_checkpoint, concurrency=1).take_all()
    check_rows(rows, folder, expected, lambda path: path.replace(os.fspath(folder), os.fspath(copy), 1))

    uris = find_inputs([f"file://{folder}"])
    rows = score_dataset(ray.data.from_items([{"path": uri} for uri in [*uris, f"file://{folder}/gone.jpg"]]),
                         weights=tiny_checkpoint, concurrency=1).take_all()
    missing = [row for row in rows if row["path"].endswith("gone.jpg")]
    assert len(missing) == 1 and missing[0]["score"] is None and missing[0]["error"].startswith("cannot read:")
    check_rows([row for row in rows if row not in missing], folder, expected, lambda path: f"file://{path}")


def test_find_inputs_lists_uris_like_folders(folder, tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'qualiclip-infer[ray]')")
    from qualiclip_infer.ray_scoring import find_inputs
    from qualiclip_infer.files import InputNotFoundError

    (tmp_path / ".hidden").mkdir()
    save_image(tmp_path / ".hidden" / "x.jpg", natural_image(64, 64))
    save_image(tmp_path / ".y.jpg", natural_image(64, 64))
    (tmp_path / "notes.txt").write_text("not an image")
    for name in ("a.jpg", "nested/i.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(folder / name, tmp_path / name)
    for recursive in (True, False):
        for hidden in (True, False):
            local = find_inputs([os.fspath(tmp_path)], recursive=recursive, hidden=hidden)
            listed = find_inputs([f"file://{tmp_path}/"], recursive=recursive, hidden=hidden)
            assert listed == [f"file://{path}" for path in local] and local
    assert find_inputs([f"file://{tmp_path}/notes.txt", f"file://{folder}/a.jpg", os.fspath(folder / "a.jpg")]) == [
        f"file://{tmp_path}/notes.txt", f"file://{folder}/a.jpg", os.fspath(folder / "a.jpg")]
    with pytest.raises(InputNotFoundError, match="gone: no such file or folder"):
        find_inputs([f"file://{tmp_path}/gone"])
    with pytest.raises(InputNotFoundError, match="nope://x: cannot list: "):
        find_inputs(["nope://x"])


def test_score_dataset_errors(cluster, folder, tiny_checkpoint, tmp_path):
    import ray

    from qualiclip_infer.ray_scoring import ray_error_cause, score_dataset
    from qualiclip_infer.files import InputNotFoundError

    with pytest.raises(ValueError, match="no 'file' column"):
        score_dataset(ray.data.from_items([{"path": "x.jpg"}]), path_column="file")
    with pytest.raises(InputNotFoundError, match="no such file"):
        score_dataset(folder / "missing", weights=tiny_checkpoint)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no images found"):
        score_dataset([tmp_path / "empty"], weights=tiny_checkpoint)
    with pytest.raises(ValueError, match="concurrency"):
        score_dataset(folder, weights=tiny_checkpoint, concurrency=(3, 2))
    # An actor that cannot load the model fails the job (every actor would), with the cause on one line.
    with pytest.raises(Exception) as failed:
        score_dataset(folder / "a.jpg", weights=tmp_path / "none.pth", concurrency=1).take_all()
    assert ray_error_cause(failed.value) == f"weights file not found: {tmp_path / 'none.pth'}"


# ---------------------------------------------------------------------------------------------------------------
# qualiclip-score --ray


def cli(*args, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qualiclip_infer", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=SUBPROCESS_TIMEOUT, cwd=cwd)


def csv_rows(path: Path) -> List[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "score", "width", "height", "error"]
        return list(reader)


def test_cli_on_ray_writes_the_rows_of_the_plain_cli(cluster, folder, tiny_checkpoint, expected, tmp_path):
    """Connected by address, csv; the same rows as the plain CLI's (here written as a Parquet file), and the same
    error messages."""
    import pyarrow.parquet as pq

    plain = cli(folder, "--weights", tiny_checkpoint, "-o", tmp_path / "plain.parquet")
    on_ray = cli("--ray", cluster, folder, "--weights", tiny_checkpoint, "--actors", "2", "--batch-size", "3",
                 "-o", tmp_path / "ray.csv")
    assert (plain.returncode, on_ray.returncode) == (1, 1), on_ray.stderr  # 1: some images failed
    rows = csv_rows(tmp_path / "ray.csv")
    check_rows(rows, folder, expected)
    reference = {row["path"]: row for row in pq.read_table(tmp_path / "plain.parquet").to_pylist()}
    assert len(reference) == len(rows)
    for row in rows:
        same = reference.pop(row["path"])
        assert (row["width"], row["height"], row["error"]) == (str(same["width"] or ""), str(same["height"] or ""),
                                                                same["error"])
        assert not row["score"] if same["score"] is None else abs(float(row["score"]) - same["score"]) < 1e-6
    for name in BROKEN:  # each failure reported once on standard error, as without --ray
        message = f"qualiclip-score: {folder / name}: "
        assert sum(line.startswith(message) for line in on_ray.stderr.splitlines()) == 1
        assert sum(line.startswith(message) for line in plain.stderr.splitlines()) == 1


def test_cli_in_process_leaves_the_callers_ray_session_connected(cluster, folder, tiny_checkpoint, expected,
                                                                 tmp_path):
    """``main`` run inside a program already connected to Ray scores on that session and leaves it connected: only
    a connection the CLI made itself is shut down when its rows are done."""
    import ray

    from qualiclip_infer.cli import main

    assert main(["--ray", "-q", str(folder), "--weights", str(tiny_checkpoint), "-o", str(tmp_path / "rows.csv")]) == 1
    check_rows(csv_rows(tmp_path / "rows.csv"), folder, expected)
    assert ray.is_initialized() and ray.get_runtime_context().gcs_address == cluster


def test_cli_on_ray_resumes_scoring_only_new_files(cluster, folder, tiny_checkpoint, expected, tmp_path):
    work = tmp_path / "images"
    work.mkdir()
    for name in ("a.jpg", "c_gray.png", "text.jpg"):
        shutil.copy(folder / name, work / name)
    out = tmp_path / "rows.jsonl"
    first = cli("--ray", cluster, work, "--weights", tiny_checkpoint, "-o", out, "-q")
    assert first.returncode == 1, first.stderr
    for name in ("b.jpg", "nested/i.jpg"):
        (work / name).parent.mkdir(exist_ok=True)
        shutil.copy(folder / name, work / name)
    second = cli("--ray", cluster, work, "--weights", tiny_checkpoint, "-o", out, "--resume", "--summary")
    assert second.returncode == 0, second.stderr  # the failed file is not tried again
    assert "resuming: 3 images already in" in second.stderr and "2 to score" in second.stderr
    summary = dict(line.split() for line in second.stderr.splitlines() if line.split()[:1] in (["images"], ["scored"]))
    assert summary == {"images": "2", "scored": "2"}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(row["path"] for row in rows) == Counter(find_images([os.fspath(work)]))
    for row in rows:
        name = os.path.relpath(row["path"], work)
        assert row["error"] if name == "text.jpg" else abs(row["score"] - expected[os.fspath(folder / name)]) < 1e-6


def test_cli_starts_its_own_local_cluster_parquet_folder_sorted_filtered(folder, tiny_checkpoint, expected, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'qualiclip-infer[ray]')")
    import pyarrow.parquet as pq

    threshold = sorted(expected.values())[len(expected) // 2]
    out = tmp_path / "scores"
    result = cli("--ray", folder, "--weights", tiny_checkpoint, "--sort", "score", "--reverse", "--summary", "-q",
                 "--min-score", threshold, "--cpus-per-actor", "1", "-o", f"{out}{os.sep}")
    assert result.returncode == 1, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["part-00000.parquet"]
    table = pq.read_table(out)
    assert table.schema.names == ["path", "score", "width", "height", "error"]
    rows = table.to_pylist()
    listed = sorted((path for path, score in expected.items() if score >= threshold), key=expected.get, reverse=True)
    assert [row["path"] for row in rows] == listed + [row["path"] for row in rows[len(listed):]]
    assert sorted(os.path.basename(row["path"]) for row in rows[len(listed):]) == sorted(BROKEN)  # failures last
    summary = dict(line.split() for line in result.stderr.splitlines()
                   if line.split()[:1] in (["images"], ["scored"], ["failed"], ["max"]))
    assert summary == {"images": str(len(GOOD) + len(BROKEN)), "scored": str(len(GOOD)), "failed": str(len(BROKEN)),
                       "max": f"{max(expected.values()):.4f}"}


def test_cli_ray_options_need_ray(folder):
    result = cli(folder, "--actors", "2")
    assert result.returncode == 2 and "need --ray" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Tar shards and Parquet files on Ray


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """``shards/`` (four shards: whole, gzip with a truncated member, cut in a member, cut in a header),
    ``img2dataset.parquet`` and ``hf.parquet`` (see helpers_sources), in one folder."""
    root = tmp_path_factory.mktemp("ray-sources")
    return build_parquet_files(build_shards(root))


def json_rows(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_rows(ray_rows: List[dict], local_rows: List[dict]) -> None:
    """The same rows, in any order: every column equal, the scores to 1e-6 (batches may differ)."""
    assert len({row["path"] for row in ray_rows}) == len(ray_rows)
    by_path = {row["path"]: row for row in local_rows}
    assert sorted(by_path) == sorted(row["path"] for row in ray_rows)
    for row in ray_rows:
        local = by_path[row["path"]]
        assert {**row, "score": None} == {**local, "score": None}
        assert (row["score"] is None) == (local["score"] is None)
        assert row["score"] is None or abs(row["score"] - local["score"]) <= 1e-6


@pytest.mark.parametrize("inputs", [("shards/{00000..00003}.tar*", "img2dataset.parquet"),
                                    ("hf.parquet", "--id-col", "label", "--image-col", "image")])
def test_cli_on_ray_scores_shards_and_parquet_as_the_local_run(cluster, sources, tiny_checkpoint, inputs):
    """Error rows for broken members and shards, ``key`` and typed ``--id-col`` values: what the local run writes."""
    weights = ("--weights", tiny_checkpoint, "-q")
    local = cli(*inputs, *weights, "-o", "local.jsonl", cwd=sources)
    on_ray = cli("--ray", cluster, *inputs, *weights, "--actors", "2", "-o", "ray.jsonl", cwd=sources)
    assert (local.returncode, on_ray.returncode) == (1 if "img2dataset.parquet" in inputs else 0,) * 2, on_ray.stderr
    rows = json_rows(sources / "ray.jsonl")
    same_rows(rows, json_rows(sources / "local.jsonl"))
    if "label" in inputs:
        assert [row["label"] for row in sorted(rows, key=lambda row: row["path"])] == [0, 1, 2, 3, 4]
    else:
        assert {row["path"]: row["key"] for row in rows if row["path"].startswith("shards/00000")} == {
            "shards/00000.tar::000000.jpg": "000000", "shards/00000.tar::000001.jpg": "000001",
            "shards/00000.tar::000002.png": "000002", "shards/00000.tar::000003.jpg": "000003"}
        assert any("shards/00002.tar" in row["path"] and "ends inside" in (row["error"] or "") for row in rows)


def test_cli_on_ray_resumes_a_shard_and_a_parquet_file_cut_in_the_middle(cluster, sources, tiny_checkpoint,
                                                                         tmp_path):
    for name in ("shards", "img2dataset.parquet"):
        (tmp_path / name).symlink_to(sources / name)
    args = ("shards/0000{0,1}.tar*", "img2dataset.parquet", "--weights", tiny_checkpoint)
    full = cli(*args, "-q", "-o", "full.csv", cwd=tmp_path)
    assert full.returncode == 1, full.stderr
    lines = (tmp_path / "full.csv").read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.startswith(("path,", "shards/00000.tar::000000", "img2dataset.parquet::0"))]
    (tmp_path / "killed.csv").write_text("".join(kept))
    resumed = cli("--ray", cluster, *args, "-o", "killed.csv", "--resume", cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stderr
    assert "resuming: 2 images already in killed.csv" in resumed.stderr
    with open(tmp_path / "killed.csv", newline="") as f:
        after = list(csv.DictReader(f))
    with open(tmp_path / "full.csv", newline="") as f:
        before = {row["path"]: row for row in csv.DictReader(f)}
    assert sorted(row["path"] for row in after) == sorted(before)  # each member and row exactly once
    for row in after:
        assert (row["key"], row["error"]) == (before[row["path"]]["key"], before[row["path"]]["error"])


def test_score_dataset_of_shards_and_of_the_datasets_ray_reads(cluster, sources, tiny_checkpoint):
    """A brace pattern of shards gives the local rows with their ``key``; Ray's own readers (``read_webdataset``
    without its decoder, ``read_parquet`` of a Hugging Face struct column) score the same bytes alike."""
    import ray

    from qualiclip_infer import score_dataset
    from qualiclip_infer.sources import plan_sources, score_entries

    pattern = os.fspath(sources / "shards" / "{00000..00001}.tar*")
    scorer = QualityScorer(tiny_checkpoint, device="cpu")
    local = [dict(path=row.name, score=row.score, width=row.width, height=row.height, error=row.error, **row.extra)
             for row in score_entries(scorer, plan_sources([pattern]).entries())]
    dataset = score_dataset(pattern, weights=tiny_checkpoint, device="cpu", concurrency=2)
    assert dataset.schema().names == ["path", "score", "width", "height", "error", "key"]
    same_rows(dataset.take_all(), local)
    scores = {row["path"]: row["score"] for row in local}

    read = ray.data.read_webdataset(os.fspath(sources / "shards" / "00000.tar"), decoder=None)
    rows = score_dataset(read, weights=tiny_checkpoint, device="cpu", concurrency=1, path_column="__key__",
                         bytes_column="jpg", keep_columns=["__url__"]).take_all()
    keyed = {row["path"]: row for row in rows}
    assert sorted(keyed) == ["000000", "000001", "000002", "000003"]
    assert keyed["000002"]["error"] == "no image bytes"  # a png and a cls: no jpg
    for key in ("000000", "000001"):
        assert abs(keyed[key]["score"] - scores[f"{sources}/shards/00000.tar::{key}.jpg"]) <= 1e-6
        assert keyed[key]["__url__"].endswith("shards/00000.tar")
    assert "not an image" in keyed["000003"]["error"]

    files = {i: scorer.score(sources / f"{i}.jpg") for i in range(5)}
    hf = ray.data.read_parquet(os.fspath(sources / "hf.parquet"))
    rows = score_dataset(hf, weights=tiny_checkpoint, device="cpu", concurrency=1, path_column="label",
                         bytes_column="image").take_all()
    assert sorted((int(row["path"]), round(row["score"] - files[int(row["path"])], 6)) for row in rows) == [
        (i, 0.0) for i in range(5)]
    with pytest.raises(ValueError, match="no 'caption' column .keep_columns"):
        score_dataset(hf, path_column="label", bytes_column="image", keep_columns=["caption"])


def test_a_large_parquet_file_is_cut_between_actors_by_row_group(cluster, tiny_checkpoint, tmp_path):
    """Too few files for the actors: a file of 7 row groups is read in parts of whole row groups, and the rows,
    numbered as in the whole file, are the local run's."""
    from qualiclip_infer import score_dataset
    from qualiclip_infer.ray_scoring import _row_group_parts
    from qualiclip_infer.sources import plan_sources, score_entries

    images = [jpeg_bytes(60 + i, 48 + 8 * (i % 3), 40) for i in range(13)]
    images[5] = None  # an error row in the middle of a part
    path = write_parquet(tmp_path / "big.parquet", {"key": [f"k{i}" for i in range(13)], "jpg": images},
                         row_group_size=2)
    assert _row_group_parts(str(path), 3) == [(0, 2), (2, 5), (5, 7)]
    assert _row_group_parts(str(path), 20) == [(group, group + 1) for group in range(7)]
    assert _row_group_parts(str(tmp_path / "gone.parquet"), 3) == [None]
    scorer = QualityScorer(tiny_checkpoint, device="cpu")
    local = [dict(path=row.name, score=row.score, width=row.width, height=row.height, error=row.error, **row.extra)
             for row in score_entries(scorer, plan_sources([str(path)]).entries())]
    rows = score_dataset(str(path), weights=tiny_checkpoint, device="cpu", concurrency=2).take_all()
    same_rows(rows, local)
    assert sorted(int(row["path"].rsplit("::", 1)[1]) for row in rows) == list(range(13))
    assert next(row for row in rows if row["key"] == "k5")["error"] == "no image bytes in column 'jpg'"


# ---------------------------------------------------------------------------------------------------------------
# Without the extra


HIDE = "import sys; sys.modules.update(dict.fromkeys({modules!r})); "


@pytest.mark.parametrize("hidden", [["ray"], ["pyarrow"]])
def test_missing_extra_is_one_clear_line(folder, tmp_path, hidden):
    program = HIDE.format(modules=hidden) + "from qualiclip_infer.cli import main; sys.exit(main(sys.argv[1:]))"
    for args in (["--ray", folder, "-o", tmp_path / "x.csv"], [folder, "-o", tmp_path / "x.parquet"]):
        if hidden == ["ray"] and args[0] != "--ray":
            continue  # Parquet output needs pyarrow only
        result = subprocess.run([sys.executable, "-c", program, *map(str, args)], capture_output=True, text=True,
                                timeout=SUBPROCESS_TIMEOUT)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and 'pip install "qualiclip-infer[ray]"' in result.stderr, result.stderr
        assert result.stderr.startswith("qualiclip-score: error: ")
    api = HIDE.format(modules=hidden) + (
        "from qualiclip_infer import score_dataset\n"
        "try:\n    score_dataset(sys.argv[1])\nexcept ImportError as error:\n    print(error)")
    result = subprocess.run([sys.executable, "-c", api, str(folder)], capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT)
    assert result.stdout.startswith("score_dataset needs Ray Data and pyarrow") and result.stdout.count("\n") == 1
    assert 'pip install "qualiclip-infer[ray]"' in result.stdout


def test_ray_address_or_path_after_the_flag():
    from qualiclip_infer.cli import _ray_address_first, build_parser

    def parsed(*argv):
        args = build_parser().parse_args(_ray_address_first(argv))
        return args.ray, args.paths

    assert parsed("--ray", "photos") == ("local", ["photos"])
    assert parsed("--ray", "s3://bucket/photos") == ("local", ["s3://bucket/photos"])
    assert parsed("--ray", "auto", "photos") == ("auto", ["photos"])
    assert parsed("--ray", "ray://head:10001", "a", "b") == ("ray://head:10001", ["a", "b"])
    assert parsed("--ray", "10.0.0.1:6379", "a") == ("10.0.0.1:6379", ["a"])
    assert parsed("a", "--ray") == ("local", ["a"])
    assert parsed("a") == (None, ["a"])


def test_the_ray_driver_imports_no_torch():
    """The CLI's driver only passes rows along: torch (seconds of CPU) is for the actors."""
    program = ("import sys; from qualiclip_infer import cli, ray_scoring, parquet_rows, results; "
               "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", program], timeout=SUBPROCESS_TIMEOUT).returncode == 0


def test_actors_go_offline_with_the_offline_option(cluster, folder, tiny_checkpoint):
    """``--offline`` reaches each actor: it sets ``HF_HUB_OFFLINE`` in its own process, before huggingface_hub is
    imported there. The task removes the variable the cluster's workers inherit, so only the actor can set it."""
    import ray

    from qualiclip_infer._cli import scorer_options
    from qualiclip_infer.cli import build_parser
    from qualiclip_infer.ray_actors import BatchScorer

    def actor_environment(options):
        os.environ.pop("HF_HUB_OFFLINE", None)
        BatchScorer(options, threads=1, workers=1, base_dir=os.getcwd(), path_column="path", bytes_column=None)
        return os.environ.get("HF_HUB_OFFLINE")

    probe = ray.remote(num_cpus=1)(actor_environment)
    seen = {}
    for flags in ([], ["--offline"]):
        args = build_parser().parse_args([os.fspath(folder), "--weights", os.fspath(tiny_checkpoint), *flags])
        seen[bool(flags)] = ray.get(probe.remote(dict(scorer_options(args, None), device="cpu")), timeout=120)
    assert seen == {False: None, True: "1"}
