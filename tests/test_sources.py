"""Scoring WebDataset tar shards, Parquet files of encoded images and Hugging Face datasets where they lie."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import List

import pytest

from helpers_sources import (SHARD_IMAGES_A, build_parquet_files, build_shards, csv_rows, memory_growth_mb, run_module,
                             write_parquet)
from qualiclip_infer.scorer import QualityScorer
from qualiclip_infer.sources import expand_braces, plan_sources, score_entries
from qualiclip_infer.sources.tar import sample_key

SCORE = "qualiclip_infer"
IMAGES_A = SHARD_IMAGES_A


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint) -> QualityScorer:
    return QualityScorer(tiny_checkpoint, device="cpu")


def test_brace_patterns_expand_as_webdataset_writes_them():
    assert expand_braces("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("{x}.tar") == ["{x}.tar"]
    assert sample_key("dir/000123.seg.png") == "dir/000123" and sample_key("a.b/c.jpg") == "a.b/c"


def test_shard_rows_equal_the_extracted_files_with_keys_and_errors(shards, tiny_checkpoint):
    weights = ("--weights", tiny_checkpoint, "--device", "cpu")
    result = run_module(SCORE, "shards/{00000..00003}.tar*", *weights, "-o", "rows.csv", cwd=shards)
    assert result.returncode == 1, result.stderr
    rows = {row["path"]: row for row in csv_rows(shards / "rows.csv")}
    files = run_module(SCORE, "extracted", *weights, "-o", "files.csv", cwd=shards)
    assert files.returncode == 0, files.stderr
    reference = {row["path"]: row for row in csv_rows(shards / "files.csv")}
    same_image = {"shards/00000.tar::" + name: f"extracted/a/{name}" for name in IMAGES_A}
    same_image.update({"shards/00001.tar.gz::000010.jpg": "extracted/b/000010.jpg",
                       "shards/00002.tar::000020.jpg": "extracted/c/000020.jpg",
                       "shards/00003.tar::000030.jpg": "extracted/d/000030.jpg"})
    for name, file in same_image.items():
        assert abs(float(rows[name]["score"]) - float(reference[file]["score"])) <= 1e-6
        assert (rows[name]["width"], rows[name]["height"], rows[name]["error"]) == ("64", "48", "")
        assert rows[name]["key"] == name.split("::")[1].split(".")[0]
    errors = {name: row["error"] for name, row in rows.items() if row["error"]}
    assert set(errors) == {"shards/00000.tar::000003.jpg", "shards/00001.tar.gz::000011.jpg",
                           "shards/00002.tar::000021.jpg", "shards/00003.tar"}
    assert "not an image" in errors["shards/00000.tar::000003.jpg"]
    assert "cannot decode" in errors["shards/00001.tar.gz::000011.jpg"]
    assert "ends inside this member" in errors["shards/00002.tar::000021.jpg"]
    assert "truncated" in errors["shards/00003.tar"] and "000030.txt" in errors["shards/00003.tar"]
    assert rows["shards/00002.tar::000021.jpg"]["key"] == "000021"
    assert len(rows) == len(same_image) + len(errors)  # .json, .txt and .cls members are not scored
    assert "shards/00003.tar: the shard is truncated" in result.stderr


def test_a_shard_that_is_not_a_tar_and_a_missing_brace_name(shards, scorer, tmp_path):
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b" + b"definitely not gzip" * 10)
    (tmp_path / "bad.tar").write_bytes(b"not a tar " * 100)
    plan = plan_sources([str(tmp_path / "bad.tar.gz"), str(tmp_path / "bad.tar")])
    rows = list(score_entries(scorer, plan.entries()))
    assert [row.name for row in rows] == [str(tmp_path / "bad.tar.gz"), str(tmp_path / "bad.tar")]
    assert all(row.error.startswith("not a tar shard") for row in rows)
    result = run_module(SCORE, "shards/{00000..00009}.tar", "--weights", "missing.pth", cwd=shards)
    assert result.returncode == 2 and "shards/00001.tar: no such file or folder" in result.stderr


def test_shards_through_a_file_uri_and_a_folder(shards, scorer):
    by_uri = plan_sources([(shards / "shards").as_uri()])
    by_folder = plan_sources([str(shards / "shards")])
    assert [kind for kind, _ in by_uri.inputs] == ["tar"] * 4
    uri_rows = list(score_entries(scorer, by_uri.entries()))
    folder_rows = list(score_entries(scorer, by_folder.entries()))
    uri, folder = (shards / "shards").as_uri(), str(shards / "shards")
    assert [row.name[len(uri):] for row in uri_rows] == [row.name[len(folder):] for row in folder_rows]
    assert [row.score for row in uri_rows] == [row.score for row in folder_rows]
    assert uri_rows[0].name == (shards / "shards").as_uri() + "/00000.tar::000000.jpg"


# ---------------------------------------------------------------------------------------------------------------
# Parquet


@pytest.fixture(scope="module")
def parquet_files(tmp_path_factory) -> Path:
    return build_parquet_files(tmp_path_factory.mktemp("parquet"))


def test_parquet_rows_score_as_the_files_with_ids_carried(parquet_files, tiny_checkpoint):
    weights = ("--weights", tiny_checkpoint, "--device", "cpu")
    result = run_module(SCORE, "img2dataset.parquet", *weights, "-o", "a.jsonl", cwd=parquet_files)
    assert result.returncode == 1, result.stderr
    files = run_module(SCORE, *[f"{i}.jpg" for i in range(5)], *weights, "-o", "files.csv", cwd=parquet_files)
    assert files.returncode == 0, files.stderr
    reference = [float(row["score"]) for row in csv_rows(parquet_files / "files.csv")]
    rows = [json.loads(line) for line in (parquet_files / "a.jsonl").read_text().splitlines()]
    assert [row["path"] for row in rows] == [f"img2dataset.parquet::{i}" for i in range(5)]
    assert [row["key"] for row in rows] == [f"k{i}" for i in range(5)]
    assert [abs(row["score"] - reference[i]) <= 1e-6 for i, row in enumerate(rows[:3])] == [True] * 3
    assert rows[3]["error"] == "no image bytes in column 'jpg'" and "not an image" in rows[4]["error"]

    result = run_module(SCORE, "hf.parquet", *weights, "--id-col", "label", "-o", "hf.csv", cwd=parquet_files)
    assert result.returncode == 0, result.stderr
    rows = csv_rows(parquet_files / "hf.csv")
    assert [row["label"] for row in rows] == [str(i) for i in range(5)]
    assert all(abs(float(row["score"]) - reference[i]) <= 1e-6 for i, row in enumerate(rows))

    bad = run_module(SCORE, "hf.parquet", *weights, "--image-col", "label", cwd=parquet_files)
    assert bad.returncode == 2 and "hf.parquet: column 'label' holds int64, not image bytes" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_memory_does_not_grow_with_the_row_groups(tmp_path, scorer):
    # 2,000 rows of 50 kB of noise (100 MB, 200 row groups of 10 rows) against 20 of them in 2 row groups. The rows
    # are not images, so the engine drops each after reading its header, and memory is the reading's.
    rows = 2_000
    noise = random.Random(0)  # incompressible, and the same every run; the prefix matches no image format
    blob = [b"not an image\n" + noise.randbytes(50_000) for _ in range(rows)]
    write_parquet(tmp_path / "many.parquet", {"bytes": blob}, row_group_size=rows // 200)
    write_parquet(tmp_path / "few.parquet", {"bytes": blob[:20]}, row_group_size=10)
    del blob

    def score(name: str) -> None:
        results = score_entries(scorer, plan_sources([str(tmp_path / name)]).entries(), workers=2)
        assert sum(1 for result in results if "not an image" in result.error) == (rows if name == "many.parquet"
                                                                                   else 20)

    few_python, few_arrow = memory_growth_mb(lambda: score("few.parquet"))
    many_python, many_arrow = memory_growth_mb(lambda: score("many.parquet"))
    assert many_arrow < 30, many_arrow  # a row group and a buffer, not the file (100 MB)
    assert many_python + many_arrow - few_python - few_arrow < 150, (many_python, many_arrow, few_python, few_arrow)


# ---------------------------------------------------------------------------------------------------------------
# Resuming


def _rows_of(path: Path) -> List[dict]:
    if path.suffix == ".csv":
        return csv_rows(path)
    return [{key: "" if value is None else str(value) for key, value in json.loads(line).items()}
            for line in path.read_text().splitlines()]


@pytest.mark.parametrize("cut_after, suffix", [("shards/00000.tar::000001.jpg", ".csv"),
                                               ("img2dataset.parquet::1", ".csv"),
                                               ("shards/00001.tar.gz::000010.jpg", ".jsonl")])
def test_resume_after_a_kill_scores_each_member_and_row_once(shards, parquet_files, tiny_checkpoint, tmp_path,
                                                             cut_after, suffix):
    for name in ("shards", "img2dataset.parquet"):
        source = shards / name if name == "shards" else parquet_files / name
        (tmp_path / name).symlink_to(source)
    args = ("shards/0000{0,1}.tar*", "img2dataset.parquet", "--weights", tiny_checkpoint, "--device", "cpu", "-q")
    full = run_module(SCORE, *args, "-o", f"full{suffix}", cwd=tmp_path)
    assert full.returncode == 1, full.stderr
    lines = (tmp_path / f"full{suffix}").read_text().splitlines(keepends=True)
    kept = next(i for i, line in enumerate(lines) if cut_after in line.split(",")[0]) + 1
    # What a kill leaves: the rows written so far and half of the next one.
    (tmp_path / f"killed{suffix}").write_text("".join(lines[:kept]) + lines[kept][:12])
    resumed = run_module(SCORE, *args, "-o", f"killed{suffix}", "--resume", cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stderr
    before, after = _rows_of(tmp_path / f"full{suffix}"), _rows_of(tmp_path / f"killed{suffix}")
    assert [row["path"] for row in after] == [row["path"] for row in before]  # every member and row once, in order
    assert [row["error"] for row in after] == [row["error"] for row in before]
    assert [row.get("key") for row in after] == [row.get("key") for row in before]
    # Rows scored again may share a batch with other images than before: float sums in another order.
    assert all(abs(float(a["score"]) - float(b["score"])) <= 1e-6 for a, b in zip(after, before) if b["score"])


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face datasets


def test_a_hugging_face_dataset_gets_a_score_column_decoded_once(parquet_files, scorer, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from qualiclip_infer.sources import add_dataset_scores

    paths = [str(parquet_files / f"{i}.jpg") for i in range(5)]
    expected = [result.score for result in scorer.iter_scores(paths)]
    features = datasets.Features({"image": datasets.Image(), "n": datasets.Value("int64")})
    stored = [{"bytes": Path(path).read_bytes(), "path": None} for path in paths]  # as a hub dataset holds them
    dataset = datasets.Dataset.from_dict({"image": stored + [None], "n": list(range(6))}, features=features)
    decoded = []
    real_decode = datasets.Image.decode_example
    monkeypatch.setattr(datasets.Image, "decode_example",
                        lambda self, value, **kw: decoded.append(1) or real_decode(self, value, **kw))
    scored = add_dataset_scores(scorer, dataset)
    assert decoded == []  # the engine decoded each image; the dataset's decoder never ran
    assert scored["qualiclip"][:5] == pytest.approx(expected, abs=1e-6) and scored["qualiclip"][5] is None
    assert scored.features["image"] == datasets.Image() and scored["n"] == list(range(6))
    lazy = add_dataset_scores(scorer, dataset.to_iterable_dataset())
    assert [example["qualiclip"] for example in lazy][:5] == pytest.approx(expected, abs=1e-6)
