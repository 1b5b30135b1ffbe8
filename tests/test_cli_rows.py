"""``qualiclip-score``'s row selection checked row by row against the library's scores: ``--min-score`` and
``--max-score`` (inclusive: a bound equal to a score keeps that image), ``--sort score|path`` with ``--reverse`` (equal
scores in path order), and
``--resume`` after runs started with relative, ``./``-prefixed and absolute paths.

The command runs in-process (``qualiclip_infer.cli.main``, what the console script calls) to keep these many runs
cheap; ``tests/test_cli.py`` runs it as a subprocess."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List

import pytest
from helpers import natural_image, save_image

from qualiclip_infer import QualityScorer
from qualiclip_infer.cli import main

# Every image its own size, so each is scored in a batch of its own, exactly as the library scores it alone.
SIZES = [(64, 48), (72, 40), (48, 64), (80, 56), (56, 72), (40, 96)]
NAMES = ["f.png", "b.png", "d.png", "a.png", "e.png", "c.png"]  # listed sorted: a, b, c, d, e, f


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rows")
    for seed, (name, (width, height)) in enumerate(zip(NAMES, SIZES)):
        save_image(root / name, natural_image(width, height, seed))
    (root / "g_broken.png").write_bytes(b"not a PNG")
    return root


@pytest.fixture(scope="module")
def scores(folder, tiny_checkpoint) -> Dict[str, float]:
    scorer = QualityScorer(tiny_checkpoint, device="cpu")
    return {os.fspath(folder / name): scorer.score(folder / name) for name in NAMES}


def _rows(inputs: List[Path], checkpoint: Path, out: Path, *options: str) -> List[dict]:
    status = main([*map(os.fspath, inputs), "--weights", os.fspath(checkpoint), "--device", "cpu", "-q", "-o",
                   os.fspath(out), *options])
    assert status == 1  # the broken file
    return [json.loads(line) for line in out.read_text().splitlines()]


def _broken(folder: Path) -> str:
    return os.fspath(folder / "g_broken.png")


def test_min_and_max_score_are_inclusive_bounds(folder, tiny_checkpoint, scores, tmp_path, one_thread):
    ranked = sorted(scores.values())
    assert min(b - a for a, b in zip(ranked, ranked[1:])) > 1e-4  # distinct: a misplaced bound shows
    listed = sorted(scores)  # the folder's order
    low, high = ranked[1], ranked[4]  # bounds equal to a score: repr() gives the float back exactly
    cases = {("--min-score", repr(low)): lambda s: s >= low,
             ("--max-score", repr(high)): lambda s: s <= high,
             ("--min-score", repr(low), "--max-score", repr(high)): lambda s: low <= s <= high}
    for options, keep in cases.items():
        rows = _rows([folder], tiny_checkpoint, tmp_path / "rows.jsonl", *options)
        expected = [path for path in listed if keep(scores[path])] + [_broken(folder)]  # failures always listed
        assert [row["path"] for row in rows] == expected, options
        for row in rows[:-1]:
            assert row["score"] == pytest.approx(scores[row["path"]], abs=1e-6)
    assert len([s for s in scores.values() if low <= s <= high]) == 4


@pytest.mark.parametrize("key, reverse", [("score", False), ("score", True), ("path", False), ("path", True)])
def test_sort_orders_rows_by_score_or_path(folder, tiny_checkpoint, scores, tmp_path, key, reverse, one_thread):
    options = ["--sort", key] + (["--reverse"] if reverse else [])
    # Files named one by one, in no sorted order, the broken one first: every sort moves rows.
    inputs = [folder / "g_broken.png", *(folder / name for name in NAMES)]
    rows = _rows(inputs, tiny_checkpoint, tmp_path / "rows.jsonl", *options)
    if key == "score":
        expected = sorted(scores, key=scores.get, reverse=reverse) + [_broken(folder)]  # unscored rows last
    else:
        expected = sorted([*scores, _broken(folder)], reverse=reverse)
    assert [row["path"] for row in rows] == expected
    for row in rows:
        if row["path"] in scores:
            assert row["score"] == pytest.approx(scores[row["path"]], abs=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_equal_scores_sort_by_path(tiny_checkpoint, tmp_path, reverse, one_thread):
    # The same picture under names whose order differs from the order of their reversed spellings.
    for name in ("y0.png", "x1.png", "z2.png"):
        save_image(tmp_path / name, natural_image(64, 48, seed=3))
    save_image(tmp_path / "w.png", natural_image(64, 48, seed=4))
    out = tmp_path / "rows.jsonl"
    status = main([os.fspath(tmp_path / name) for name in ("z2.png", "w.png", "x1.png", "y0.png")]
                  + ["--weights", os.fspath(tiny_checkpoint), "--device", "cpu", "-q", "-o", os.fspath(out),
                     "--sort", "score"] + ["--reverse"] * reverse)
    assert status == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tied = [Path(row["path"]).name for row in rows if row["path"] != os.fspath(tmp_path / "w.png")]
    assert len({row["score"] for row in rows}) == 2
    assert tied == (["z2.png", "y0.png", "x1.png"] if reverse else ["x1.png", "y0.png", "z2.png"])


@pytest.mark.parametrize("first, second", [("relative", "relative"), ("dot", "dot"), ("absolute", "absolute"),
                                           ("relative", "dot"), ("dot", "relative")])
def test_resume_scores_each_image_exactly_once(tiny_checkpoint, tmp_path, monkeypatch, first, second, one_thread):
    monkeypatch.chdir(tmp_path)
    images = tmp_path / "photos"
    images.mkdir()
    for seed, name in enumerate(("a.png", "b.png")):
        save_image(images / name, natural_image(64, 48, seed))
    spelled = {"relative": "photos", "dot": "./photos", "absolute": os.fspath(images)}
    out = tmp_path / "rows.csv"

    def run(style: str, *options: str) -> None:
        assert main([spelled[style], "--weights", os.fspath(tiny_checkpoint), "--device", "cpu", "-q", "-o",
                     "rows.csv", *options]) == 0

    run(first)
    save_image(images / "c.png", natural_image(64, 48, 2))  # arrived after the first run
    run(second, "--resume")
    lines = out.read_text().splitlines()
    assert lines[0] == "path,score,width,height,error"
    written = [line.split(",")[0] for line in lines[1:]]
    shown = os.fspath(images) if first == "absolute" else "photos"  # rows keep the first run's spelling
    assert written == [os.path.join(shown, name) for name in ("a.png", "b.png", "c.png")]
