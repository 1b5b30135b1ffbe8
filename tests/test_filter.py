"""``qualiclip-filter``: keeping and dropping WebDataset samples, Parquet rows and image files by score."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

import pytest

from helpers_sources import (csv_rows, file_bytes, jpeg_bytes, png_bytes, read_tar, run_module, sample_members,
                             write_parquet, write_tar)

SCORE, FILTER = "qualiclip_infer", "qualiclip_infer.filter_cli"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_checkpoint) -> Path:
    """Two shards (a sample without .json, one with a second image member, one whose image is broken), a Parquet
    file and a folder of images, with ``scores.csv`` from ``qualiclip-score``."""
    root = tmp_path_factory.mktemp("curate")
    (root / "shards").mkdir()
    first = sample_members("000000", 1) + sample_members("000001", 2) + [("000002.jpg", jpeg_bytes(3)),
                                                                           ("000002.txt", b"no json")]
    second = (sample_members("000003", 4) + [("000003.seg.png", png_bytes(5))] + sample_members("000004", 6)
              + sample_members("000005", 7, image=b"broken") + sample_members("000006", 8))
    write_tar(root / "shards" / "00000.tar", first)
    write_tar(root / "shards" / "00001.tar", second)
    write_parquet(root / "images.parquet", {"key": [f"r{i}" for i in range(7)], "caption": [f"c{i}" for i in range(7)],
                                            "jpg": [jpeg_bytes(30 + i) for i in range(7)]}, row_group_size=3)
    (root / "photos").mkdir()
    for i in range(4):
        (root / "photos" / f"{i}.png").write_bytes(png_bytes(40 + i))
    result = run_module(SCORE, "shards/{00000..00001}.tar", "images.parquet", "photos", "--weights", tiny_checkpoint,
                        "--device", "cpu", "-q", "-o", "scores.csv", cwd=root)
    assert result.returncode == 1, result.stderr  # the broken image
    return root


def _scores(root: Path) -> Dict[str, float]:
    return {row["path"]: float(row["score"]) for row in csv_rows(root / "scores.csv") if row["score"]}


def _inputs(root: Path) -> Dict[str, bytes]:
    return file_bytes([*root.glob("shards/*"), *root.glob("photos/*"), root / "images.parquet", root / "scores.csv"])


def _samples(members: List) -> Dict[str, Dict[str, bytes]]:
    samples: Dict[str, Dict[str, bytes]] = {}
    for name, data in members:
        key, _, extension = name.partition(".")
        samples.setdefault(key, {})[extension] = data
    return samples


def test_shards_keep_whole_samples_above_the_threshold(dataset):
    scores = _scores(dataset)
    sample_scores = {"000000": scores["shards/00000.tar::000000.jpg"], "000001": scores["shards/00000.tar::000001.jpg"],
                     "000002": scores["shards/00000.tar::000002.jpg"],
                     "000003": min(scores["shards/00001.tar::000003.jpg"], scores["shards/00001.tar::000003.seg.png"]),
                     "000004": scores["shards/00001.tar::000004.jpg"], "000006": scores["shards/00001.tar::000006.jpg"]}
    threshold = sorted(sample_scores.values())[2]  # a score itself: the bound is inclusive
    before = _inputs(dataset)
    result = run_module(FILTER, "shards/{00000..00001}.tar", "--scores", "scores.csv", "--min-score", threshold,
                        "--shard-size", "2", "-o", "out-shards", cwd=dataset)
    assert result.returncode == 1, result.stderr  # one sample failed
    assert _inputs(dataset) == before
    expected = [key for key, score in sample_scores.items() if score >= threshold]
    assert len(expected) == 4
    out = dataset / "out-shards"
    written = [read_tar(out / f"{n:05d}.tar") for n in range(2)]
    assert not (out / "00002.tar").exists()
    kept = {**_samples(written[0]), **_samples(written[1])}
    assert [len(_samples(part)) for part in written] == [2, 2]
    assert list(kept) == expected  # input order
    originals = {**_samples(read_tar(dataset / "shards" / "00000.tar")),
                 **_samples(read_tar(dataset / "shards" / "00001.tar"))}
    for key, members in kept.items():
        assert set(members) == set(originals[key]) | {"json"}  # every member, and a .json where there was none
        for extension, data in members.items():
            if extension != "json":
                assert data == originals[key][extension]
        original_json = json.loads(originals[key]["json"]) if "json" in originals[key] else {}
        assert json.loads(members["json"]) == {**original_json, "qualiclip": sample_scores[key]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"in": 7, "kept": 4, "dropped": 2, "failed": 1}
    assert manifest["threshold"] == {"min_score": threshold, "max_score": None}
    assert [entry["count"] for entry in manifest["outputs"]] == [2, 2]
    failed = csv_rows(out / "failed.csv")
    assert [row["name"] for row in failed] == ["shards/00001.tar::000005"]
    assert "000005.jpg: not an image" in failed[0]["error"]


def test_parquet_keep_fraction_scored_on_the_fly_is_exact(dataset, tiny_checkpoint):
    pq = pytest.importorskip("pyarrow.parquet")
    before = _inputs(dataset)
    result = run_module(FILTER, "images.parquet", "--keep-fraction", "0.7", "--weights", tiny_checkpoint, "--device",
                        "cpu", "-o", "out-parquet", "--shard-size", "3", cwd=dataset)
    assert result.returncode == 0, result.stderr
    assert _inputs(dataset) == before
    scores = [score for path, score in _scores(dataset).items() if path.startswith("images.parquet::")]
    count = math.floor(0.7 * 7 + 0.5)  # 5
    best = sorted(range(7), key=lambda i: -scores[i])[:count]
    tables = [pq.read_table(dataset / "out-parquet" / f"0000{n}.parquet") for n in range(2)]
    assert [table.num_rows for table in tables] == [3, 2]
    rows = [row for table in tables for row in table.to_pylist()]
    assert [row["key"] for row in rows] == [f"r{i}" for i in sorted(best)]  # input order
    assert [row["caption"] for row in rows] == [f"c{i}" for i in sorted(best)]
    source = pq.read_table(dataset / "images.parquet").to_pylist()
    assert [row["jpg"] for row in rows] == [source[i]["jpg"] for i in sorted(best)]
    assert all(abs(row["qualiclip"] - scores[i]) <= 1e-6 for row, i in zip(rows, sorted(best)))
    manifest = json.loads((dataset / "out-parquet" / "manifest.json").read_text())
    assert manifest["counts"] == {"in": 7, "kept": 5, "dropped": 2, "failed": 0}
    assert manifest["threshold"]["kept_by_rank"] == 5
    assert abs(manifest["threshold"]["min_score"] - min(scores[i] for i in best)) <= 1e-6


def test_a_folder_gives_a_list_of_kept_paths(dataset):
    scores = {path: score for path, score in _scores(dataset).items() if path.startswith("photos")}
    threshold = sorted(scores.values())[1]
    result = run_module(FILTER, "photos", "--scores", "scores.csv", "--max-score", threshold, "-o", "out-list",
                        cwd=dataset)
    assert result.returncode == 0, result.stderr
    kept = (dataset / "out-list" / "kept-paths.txt").read_text().splitlines()
    assert kept == sorted(path for path, score in scores.items() if score <= threshold) and len(kept) == 2


@pytest.mark.parametrize("args, message", [
    (["--min-score", "0.5", "--keep-fraction", "0.5"], "cannot be combined"),
    (["--keep-fraction", "1.5"], "within [0, 1]"),
    ([], "give --min-score, --max-score or --keep-fraction"),
    (["--min-score", "0.5", "-o", "shards"], "not an empty folder"),
])
def test_usage_errors_exit_2_and_write_nothing(dataset, args, message):
    output = [] if "-o" in args else ["-o", "out-refused"]
    result = run_module(FILTER, "shards", "--scores", "scores.csv", *args, *output, cwd=dataset)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (dataset / "out-refused").exists()


def test_a_run_stopped_inside_a_shard_leaves_only_finished_files(dataset, tmp_path, monkeypatch):
    """Every kept sample in its own shard; the second input shard breaks off after its first sample: the output
    shards finished before are whole under their names, the one being written is gone, no temporary file is left."""
    # Kept: 000000, 000001 (-> 00000.tar), 000002 (-> 00001.tar, unfinished), then the second input breaks.
    from qualiclip_infer import curate
    from qualiclip_infer.sources import plan_sources

    plan = plan_sources([str(dataset / "shards" / "00000.tar"), str(dataset / "shards" / "00001.tar")])
    real = curate.iter_samples

    def stops_in_the_second_shard(path, opener):
        for number, sample in enumerate(real(path, opener)):
            if path.endswith("00001.tar"):
                raise KeyboardInterrupt
            yield sample

    monkeypatch.setattr(curate, "iter_samples", stops_in_the_second_shard)
    units = 3 + 4
    selection = curate.Selection([True] * units, {}, None)
    with pytest.raises(KeyboardInterrupt):
        curate.write_kept(plan, selection, [0.5] * units, str(tmp_path), shard_size=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["00000.tar"]
    assert sorted({name.split(".")[0] for name, _ in read_tar(tmp_path / "00000.tar")}) == ["000000", "000001"]


def test_keep_fraction_breaks_ties_by_input_order():
    from qualiclip_infer.curate import Rule, select

    scores = [0.5, 0.7, None, 0.5, 0.5, 0.2]
    selection = select(scores, Rule(keep_fraction=0.6))  # round(0.6 x 5 scored) = 3: 0.7 and the first two 0.5s
    assert list(selection.keep) == [1, 1, 0, 1, 0, 0]
    assert selection.counts == {"in": 6, "kept": 3, "dropped": 2, "failed": 1}
    assert selection.threshold == {"min_score": 0.5, "max_score": None, "kept_by_rank": 3}
