"""Evaluation against MOS: metrics against scipy, logistic fits, bootstrap coverage, MOS readers in each published
layout, saved scores, and ``qualiclip-eval`` end to end as a subprocess on generated images."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from helpers import TINY_CONFIG, natural_image, save_image, write_checkpoint
from helpers_eval import CountingLoader, write_scores
from scipy import optimize, stats

from qualiclip_infer import metrics
from qualiclip_infer.eval import (Evaluation, EvaluationError, ModelSpec, MosFileError, ScoresFileError, evaluate,
                                  read_mos, read_scores)
from qualiclip_infer.eval.cli import build_parser, main, model_specs
from qualiclip_infer.eval.scores import SCORE_COLUMNS, ScoreCache, image_key

SUBPROCESS_TIMEOUT = 300


# ---------------------------------------------------------------------------------------------------------------
# Correlations


def _pairs(kind: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.6 * x + rng.normal(size=n)
    if kind in ("tied_x", "tied_both"):
        x = np.round(x * 2) / 2
    if kind in ("tied_y", "tied_both"):
        y = np.round(y)
    if kind == "few_levels":  # MOS-like: a handful of distinct values, most pairs tied
        x, y = rng.integers(0, 3, n).astype(float), rng.integers(0, 4, n).astype(float)
    if kind == "reversed":
        y = -x + 0.1 * rng.normal(size=n)
    return x, y


KINDS = ["continuous", "tied_x", "tied_y", "tied_both", "few_levels", "reversed"]


@pytest.mark.filterwarnings("ignore:An input array is constant")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 3, 7, 64, 333])
def test_correlations_equal_scipy(kind, n):
    x, y = _pairs(kind, n, seed=n)
    for ours, theirs in ((metrics.srcc, lambda a, b: stats.spearmanr(a, b)[0]),
                         (metrics.krcc, lambda a, b: stats.kendalltau(a, b)[0]),
                         (metrics.plcc, lambda a, b: stats.pearsonr(a, b)[0])):
        expected = theirs(x, y)
        value = ours(x, y)
        assert isinstance(value, float)
        assert value == pytest.approx(expected, abs=1e-9, nan_ok=True), ours.__name__


def test_correlations_of_rows_equal_scipy_per_row():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(9, 150)), 1)
    y = np.round(x + rng.normal(size=(9, 150)))
    for ours, theirs in ((metrics.srcc, stats.spearmanr), (metrics.krcc, stats.kendalltau),
                         (metrics.plcc, stats.pearsonr)):
        expected = [theirs(a, b)[0] for a, b in zip(x, y)]
        assert np.allclose(ours(x, y), expected, atol=1e-9, rtol=0)


def test_kendall_on_thousands_of_values_with_ties():
    # Many merge levels, a length that is no power of two, long runs of ties in both series.
    x, y = _pairs("tied_both", 5001, seed=11)
    assert metrics.krcc(x, y) == pytest.approx(stats.kendalltau(x, y)[0], abs=1e-12)


def test_undefined_correlations_are_nan():
    constant = np.ones(10)
    varying = np.arange(10.0)
    for statistic in (metrics.srcc, metrics.krcc, metrics.plcc):
        assert math.isnan(statistic(constant, varying)) and math.isnan(statistic(varying, constant))
    assert metrics.srcc(varying, varying) == 1.0 and metrics.krcc(varying, -varying) == -1.0


def test_rankdata_averages_ties():
    assert metrics.rankdata([10, 20, 10, 30, 20, 20]).tolist() == [1.5, 4.0, 1.5, 6.0, 4.0, 4.0]
    assert np.array_equal(metrics.rankdata([[3, 1, 2], [1, 1, 1]]), [[3, 1, 2], [2, 2, 2]])


def test_rmse():
    assert metrics.rmse([1.0, 2.0, 4.0], [1.0, 4.0, 0.0]) == pytest.approx(math.sqrt((0 + 4 + 16) / 3))


# ---------------------------------------------------------------------------------------------------------------
# Logistic fits


def test_logistic4_recovers_known_parameters_and_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 0.9, 400)
    true = (4.6, 1.3, 0.52, 0.07)  # MOS from 1.3 to 4.6, centred at score 0.52
    y = metrics.logistic4(x, *true) + rng.normal(0, 0.05, x.size)
    fit = metrics.fit_logistic(x, y, "logistic4")
    assert fit.converged
    assert np.allclose(fit.params, true, rtol=0.05, atol=0.01)
    reference, _ = optimize.curve_fit(metrics.logistic4, x, y, p0=[y.max(), y.min(), x.mean(), x.std() / 4])
    assert np.allclose(fit.params, reference, rtol=1e-5, atol=1e-7)


def test_logistic4_follows_a_falling_relation():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 300)
    true = (10.0, 60.0, 0.4, 0.1)  # DMOS: 60 (bad) at low scores down to 10 (good)
    y = metrics.logistic4(x, *true) + rng.normal(0, 0.5, x.size)
    fit = metrics.fit_logistic(x, y)
    assert np.allclose(fit.params, true, rtol=0.05, atol=0.01)
    assert metrics.plcc(fit.predict(x), y) > 0.99


def test_vqeg5_recovers_known_parameters_and_matches_scipy():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, 500)
    true = (3.0, 12.0, 0.5, 0.8, 2.0)
    y = metrics.vqeg5(x, *true) + rng.normal(0, 0.03, x.size)
    fit = metrics.fit_logistic(x, y, "vqeg5")
    assert fit.converged
    assert np.allclose(fit.params, true, rtol=0.05, atol=0.02)
    reference, _ = optimize.curve_fit(metrics.vqeg5, x, y, p0=[3, 10, 0.5, 0, 2], maxfev=20000)
    assert np.allclose(fit.params, reference, rtol=1e-4, atol=1e-6)


def test_fit_of_a_nearly_linear_relation_settles_at_least_as_low_as_scipy():
    # The optimum lies at infinite parameters (the curve's far tail): the fit must still stop, with a squared
    # error no worse than scipy's and than a straight line's.
    rng = np.random.default_rng(0)
    x = rng.uniform(size=2000)
    y = x + rng.normal(0, 0.3, x.size)
    fit = metrics.fit_logistic(x, y)
    assert fit.converged
    ours = np.sum((fit.predict(x) - y) ** 2)
    reference, _ = optimize.curve_fit(metrics.logistic4, x, y, p0=[y.max(), y.min(), x.mean(), x.std() / 4],
                                      maxfev=20000)
    line = np.polyval(np.polyfit(x, y, 1), x)
    assert ours <= np.sum((metrics.logistic4(x, *reference) - y) ** 2) * (1 + 1e-9)
    assert ours <= np.sum((line - y) ** 2)


def test_impossible_fits_are_nan():
    constant = metrics.fit_logistic(np.ones(20), np.arange(20.0))
    assert not constant.converged and all(math.isnan(value) for value in constant.params)
    assert all(math.isnan(value) for value in metrics.fit_logistic([0.1, 0.2, 0.3, 0.4, 0.5], [1, 2, 3, 4, 5],
                                                                   "vqeg5").params)
    values, _ = metrics.agreement(np.ones(20), np.arange(20.0))
    assert math.isnan(values["srcc"]) and math.isnan(values["plcc_logistic4"])


def test_lower_better_flips_only_the_raw_correlations():
    rng = np.random.default_rng(4)
    x = rng.uniform(size=200)
    mos = 1 + 4 * x + rng.normal(0, 0.4, x.size)
    dmos = 6 - mos
    higher, _ = metrics.agreement(x, mos, ("logistic4",))
    lower, fits = metrics.agreement(x, dmos, ("logistic4",), lower_better=True)
    for name in ("srcc", "krcc", "plcc"):
        assert lower[name] == pytest.approx(higher[name], abs=1e-12) and lower[name] > 0.7
        assert lower[name] == pytest.approx(-getattr(metrics, name)(x, dmos), abs=1e-12)
    assert lower["plcc_logistic4"] == pytest.approx(higher["plcc_logistic4"], abs=1e-9)
    assert lower["rmse_logistic4"] == pytest.approx(higher["rmse_logistic4"], abs=1e-9)
    assert fits["logistic4"].predict(0.9) < fits["logistic4"].predict(0.1)  # the curve falls, like the DMOS


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_intervals_cover_the_true_value_at_about_the_nominal_rate():
    rho, n, trials = 0.6, 120, 120
    truth = {"plcc": rho, "srcc": 6 / math.pi * math.asin(rho / 2), "krcc": 2 / math.pi * math.asin(rho)}
    rng = np.random.default_rng(2024)
    covered = {name: 0 for name in truth}
    for trial in range(trials):
        x = rng.normal(size=n)
        y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=n)
        samples = metrics.bootstrap([x], y, fits=(), resamples=300, seed=trial)[0]
        for name, value in truth.items():
            low, high = metrics.percentile_interval(samples[name], 0.95)
            covered[name] += low <= value <= high
    for name, count in covered.items():
        # Nominal 95%; 120 trials give a standard error of 2 points, and percentile intervals run a little short.
        assert 0.86 <= count / trials <= 0.995, (name, count / trials)


def test_bootstrap_is_seeded_and_paired():
    rng = np.random.default_rng(5)
    x = rng.uniform(size=150)
    y = x + rng.normal(0, 0.2, x.size)
    worse = x + rng.normal(0, 0.4, x.size)
    first = metrics.bootstrap([x, worse], y, resamples=200, seed=7)
    again = metrics.bootstrap([x, worse], y, resamples=200, seed=7)
    other = metrics.bootstrap([x, worse], y, resamples=200, seed=8)
    assert all(np.array_equal(first[m][k], again[m][k]) for m in range(2) for k in first[m])
    assert not np.array_equal(first[0]["srcc"], other[0]["srcc"])
    assert set(first[0]) == set(metrics.metric_names(("logistic4",))) and first[0]["srcc"].shape == (200,)
    observed = metrics.srcc(worse, y) - metrics.srcc(x, y)
    paired = metrics.paired_difference(first[0]["srcc"], first[1]["srcc"], observed)
    assert paired["difference"] < 0 and paired["ci"][1] < 0 and paired["p_value"] < 0.05
    same = metrics.paired_difference(first[0]["srcc"], first[0]["srcc"], 0.0)
    assert same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0
    # Two similar models: on shared resamples their SRCCs move together, so the interval of the difference is far
    # narrower than with independent resamples.
    close = x + rng.normal(0, 0.05, x.size)
    shared = metrics.bootstrap([x, close], y, fits=(), resamples=200, seed=7)
    separate = metrics.bootstrap([close], y, fits=(), resamples=200, seed=8)
    paired = metrics.paired_difference(shared[0]["srcc"], shared[1]["srcc"], 0.0)
    unpaired = np.percentile(separate[0]["srcc"] - shared[0]["srcc"], [2.5, 97.5])
    assert paired["ci"][1] - paired["ci"][0] < 0.5 * (unpaired[1] - unpaired[0])


def test_bootstrap_refits_the_logistic_on_each_resample():
    rng = np.random.default_rng(6)
    x = rng.uniform(size=80)
    y = metrics.logistic4(x, 4.5, 1.5, 0.5, 0.1) + rng.normal(0, 0.3, x.size)
    samples = metrics.bootstrap([x], y, resamples=20, seed=0)[0]
    indices = metrics.bootstrap_indices(x.size, 20, 0)[0]
    for row in (0, 7, 19):
        xr, yr = x[indices[row]], y[indices[row]]
        fit = metrics.fit_logistic(xr, yr)
        assert samples["plcc_logistic4"][row] == pytest.approx(stats.pearsonr(fit.predict(xr), yr)[0], abs=1e-6)
        assert samples["srcc"][row] == pytest.approx(stats.spearmanr(xr, yr)[0], abs=1e-12)


def test_paired_p_value_is_two_sided():
    # Twenty resampled differences: 3 below zero, 1 at zero, 16 above. On or below zero: 4/20; on or above: 17/20.
    # Two-sided p = 2 * min(0.2, 0.85) = 0.4; a one-sided p would be 0.2 or 0.85, an undoubled one 0.2.
    delta = np.array([-0.3, -0.2, -0.1, 0.0] + [0.05 * k for k in range(1, 17)])
    first = np.full(delta.size, 0.5)
    assert metrics.paired_difference(first, first + delta, 0.1)["p_value"] == pytest.approx(0.4, abs=1e-12)
    # Mirrored, most differences below zero: the same p.
    assert metrics.paired_difference(first, first - delta, -0.1)["p_value"] == pytest.approx(0.4, abs=1e-12)
    # A resample where a metric is undefined counts on neither side.
    with_nan = metrics.paired_difference(np.append(first, 0.5), np.append(first + delta, np.nan), 0.1)
    assert with_nan["p_value"] == pytest.approx(0.4, abs=1e-12)
    # 1 of 20 on or below zero: p = 0.1; the shares are doubled, never beyond 1 (all differences zero: p = 1).
    assert metrics.paired_difference(first, first + np.abs(delta), 0.1)["p_value"] == pytest.approx(0.1, abs=1e-12)
    assert metrics.paired_difference(first, first, 0.0)["p_value"] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# MOS files


def _touch_images(folder: Path, names: List[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"not decoded by the reader")


def test_koniq10k_layout(tmp_path):
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(
        '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"\n'
        '"10004473376.jpg",0,0,25,73,7,105,3.828571429,0.527278,77.38364194\n'
        '"10007357496.jpg",0,3,45,47,1,96,3.479166667,0.580003,67.55201308\n'
        '"10007903636.jpg",1,0,40,59,2,102,3.588235294,0.570800,70.6133069\n')
    _touch_images(tmp_path / "1024x768", ["10004473376.jpg", "10007357496.jpg", "10007903636.jpg"])
    table = read_mos(tmp_path / "koniq10k_scores_and_distributions.csv")
    assert table.dataset == "koniq10k" and table.image_dir == str(tmp_path / "1024x768")
    assert table.images == [str(tmp_path / "1024x768" / name) for name in
                            ("10004473376.jpg", "10007357496.jpg", "10007903636.jpg")]
    assert table.mos == [3.828571429, 3.479166667, 3.588235294] and not table.lower_better

    # Both resolutions present: the scores differ, so the reader refuses to guess.
    _touch_images(tmp_path / "512x384", ["10004473376.jpg", "10007357496.jpg", "10007903636.jpg"])
    with pytest.raises(MosFileError, match="1024x768.*512x384.*--root"):
        read_mos(tmp_path / "koniq10k_scores_and_distributions.csv")
    chosen = read_mos(tmp_path / "koniq10k_scores_and_distributions.csv", root=tmp_path / "512x384")
    assert chosen.image_dir == str(tmp_path / "512x384") and len(chosen.images) == 3


def test_kadid10k_layout(tmp_path):
    (tmp_path / "dmos.csv").write_text("dist_img,ref_img,dmos,var\n"
                                       "I01_01_01.png,I01.png,4.57,0.496\n"
                                       "I01_01_02.png,I01.png,4.33,0.869\n"
                                       "I01_01_03.png,I01.png,2.67,0.789\n")
    _touch_images(tmp_path / "images", ["I01_01_01.png", "I01_01_02.png", "I01_01_03.png", "I01.png"])
    table = read_mos(tmp_path / "dmos.csv")
    assert table.dataset == "kadid10k" and table.mos == [4.57, 4.33, 2.67]
    assert table.images[0] == str(tmp_path / "images" / "I01_01_01.png")
    assert not table.lower_better  # KADID's "dmos" column rises with quality


def test_tid2013_layout(tmp_path):
    (tmp_path / "mos_with_names.txt").write_bytes(b"5.51429 I01_01_1.bmp\r\n5.56757 i01_01_2.bmp\r\n"
                                                  b"4.94444 I25_01_1.bmp\r\n")
    # The files' case differs from the list's for some images, as in the published archive.
    _touch_images(tmp_path / "distorted_images", ["i01_01_1.bmp", "i01_01_2.bmp", "i25_01_1.bmp"])
    table = read_mos(tmp_path / "mos_with_names.txt")
    assert table.dataset == "tid2013" and table.mos == [5.51429, 5.56757, 4.94444]
    assert [os.path.basename(path) for path in table.images] == ["i01_01_1.bmp", "i01_01_2.bmp", "i25_01_1.bmp"]
    assert table.missing.count == 0


def test_flive_layout(tmp_path):
    (tmp_path / "labels_image.csv").write_text("name,mos,height,width,is_valid\n"
                                               "voc/2008_000001.jpg,72.5,375,500,True\n"
                                               "blur/a b.jpg,61.25,480,640,True\n"
                                               "ava/3.jpg,55,500,333,False\n")
    _touch_images(tmp_path / "database" / "voc", ["2008_000001.jpg"])
    _touch_images(tmp_path / "database" / "blur", ["a b.jpg"])
    _touch_images(tmp_path / "database" / "ava", ["3.jpg"])
    table = read_mos(tmp_path / "labels_image.csv", root=tmp_path / "database")
    assert table.dataset == "flive" and table.mos == [72.5, 61.25, 55.0]
    assert table.images[1] == str(tmp_path / "database" / "blur" / "a b.jpg")


def test_spaq_layout_exported_from_excel(tmp_path):
    # Excel's "CSV UTF-8" export starts with a byte-order mark.
    (tmp_path / "MOS and Image attribute scores.csv").write_bytes(
        "Image name,MOS,Brightness,Colorfulness,Contrast,Noisiness,Sharpness\n"
        "00001.png,42.65,43.2,33.5,44.1,49.2,44.3\n00002.png,44.29,44.4,41.6,49.3,48.8,45.4\n".encode("utf-8-sig"))
    _touch_images(tmp_path / "TestImage", ["00001.png", "00002.png"])
    table = read_mos(tmp_path / "MOS and Image attribute scores.csv")
    assert table.dataset == "spaq" and table.mos == [42.65, 44.29]
    assert table.images == [str(tmp_path / "TestImage" / "00001.png"), str(tmp_path / "TestImage" / "00002.png")]
    with pytest.raises(MosFileError, match="Excel workbook.*export"):
        (tmp_path / "scores.xlsx").write_bytes(b"PK\x03\x04" + b"\0" * 100)
        read_mos(tmp_path / "scores.xlsx", dataset="spaq")


def test_generic_file_reports_every_excluded_row(tmp_path):
    names = [f"img{i}.png" for i in range(10)]
    _touch_images(tmp_path / "pics", names[:8])
    lines = ["file\tquality\textra"] + [f"{name}\t{i / 2}\tx" for i, name in enumerate(names)]
    lines += ["img0.png\t9\tx", "img1.png\tn/a\tx", "\t3\tx", "img2.png", "img3.png\tinf\tx"]
    (tmp_path / "study.tsv").write_text("\n".join(lines) + "\n")
    table = read_mos(tmp_path / "study.tsv", root=tmp_path / "pics", path_col="FILE", mos_col="2")
    assert table.dataset == "csv" and table.rows == 15
    assert [os.path.basename(path) for path in table.images] == names[:8]
    assert table.mos == [i / 2 for i in range(8)]
    assert (table.missing.count, table.missing.examples) == (2, ["img8.png", "img9.png"])
    assert table.duplicates.count == 1 and "line 12: img0.png (first on line 2)" in table.duplicates.examples[0]
    assert table.unreadable.count == 4
    assert table.unreadable.examples == ["line 13: MOS 'n/a' is not a number", "line 14: no image name",
                                         "line 15: 1 fields, expected at least 2",
                                         "line 16: MOS 'inf' is not a number"]
    assert any("4 unreadable rows" in line for line in table.problems())


def test_generic_file_without_header_and_relative_paths(tmp_path):
    _touch_images(tmp_path / "data" / "sub", ["a.png", "b.png"])
    absolute = tmp_path / "elsewhere.png"
    absolute.write_bytes(b"x")
    (tmp_path / "data" / "scores.csv").write_text(f"3.5,sub/a.png\n1.5,sub/b.png\n2,{absolute}\n")
    table = read_mos(tmp_path / "data" / "scores.csv", header=False, path_col=2, mos_col=1, lower_better=True)
    assert table.images == [str(tmp_path / "data" / "sub" / "a.png"), str(tmp_path / "data" / "sub" / "b.png"),
                            str(absolute)]
    assert table.mos == [3.5, 1.5, 2.0] and table.lower_better
    many = [f"m{i}.png" for i in range(8)]
    (tmp_path / "gone.csv").write_text("path,mos\n" + "".join(f"{name},1\n" for name in many))
    gone = read_mos(tmp_path / "gone.csv")
    assert gone.missing.count == 8 and gone.missing.examples == many[:5]
    assert gone.missing.describe().endswith(", ...")


@pytest.mark.parametrize("content, options, message", [
    (None, {}, "No such file"),
    (b"\x89PNG\r\n\x1a\n\0\0\0", {}, "binary file"),
    (b"path,mos\n\xff\xfe bad\n", {}, "not UTF-8"),
    (b"", {}, "no rows"),
    (b"image,score\na.png,1\n", {}, r"no column 'path' \(columns: image, score\); choose one with --path-col$"),
    (b"image,score\na.png,1\n", {"dataset": "kadid10k"}, "read as KADID-10k.*--dataset csv"),
    (b"a.png,1\n", {"header": False, "path_col": "path"}, "no header; give a 1-based column number"),
    (b"path,mos\na.png,1\n", {"mos_col": 7}, "--mos-col 7: no such column"),
    (b'path,mos\n"a.png,1\n', {"delimiter": ","}, None),
])
def test_bad_mos_files_give_one_line_errors(tmp_path, content, options, message):
    path = tmp_path / "mos.csv"
    if content is not None:
        path.write_bytes(content)
    if message is None:  # an unterminated quote swallows the rest: one row, no usable path and MOS
        assert read_mos(path, **options).unreadable.count == 1
        return
    with pytest.raises(MosFileError) as caught:
        read_mos(path, **options)
    text = str(caught.value)
    assert "\n" not in text and str(path) in text
    assert re.search(message, text), text


# ---------------------------------------------------------------------------------------------------------------
# Saved scores


def test_score_files_from_qualiclip_score_and_by_hand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.csv").write_text('path,score,width,height,error\nimgs/a.png,0.5,64,64,\n'
                                      '"imgs/b,c.png",,,,"truncated file"\nimgs/d.png,nan,64,64,\n')
    saved = read_scores("out.csv")
    assert saved[image_key("imgs/a.png")].score == 0.5
    assert saved[image_key("imgs/b,c.png")].score is None
    assert saved[image_key("imgs/b,c.png")].error == "truncated file"
    assert saved[image_key(tmp_path / "imgs" / "d.png")].score is None
    (tmp_path / "other.csv").write_text("name,quality\na.png,1\n")
    with pytest.raises(ScoresFileError, match="no column 'path', 'score'"):
        read_scores("other.csv")


def test_saved_scores_survive_an_interrupted_write(tmp_path):
    class Result:
        def __init__(self, name, score):
            self.name, self.score, self.width, self.height, self.error = name, score, 64, 48, ""

    path = tmp_path / "model.scores.csv"
    cache = ScoreCache(path)
    cache.append([Result(image_key(tmp_path / "a.png"), 0.25), Result(image_key(tmp_path / "b.png"), 0.75)])
    text = path.read_text()
    assert text.splitlines()[0] == ",".join(SCORE_COLUMNS)
    path.write_text(text + f"{image_key(tmp_path / 'c.png')},0.12")  # killed while writing this row
    cache = ScoreCache(path)
    found, todo = cache.lookup([str(tmp_path / name) for name in ("a.png", "b.png", "c.png")])
    assert [saved.score for saved in found.values()] == [0.25, 0.75] and todo == [str(tmp_path / "c.png")]
    cache.append([Result(image_key(tmp_path / "c.png"), 0.5)])
    text = path.read_text()
    assert text.endswith(f"{image_key(tmp_path / 'b.png')},0.75000000,64,48,\n"
                         f"{image_key(tmp_path / 'c.png')},0.50000000,64,48,\n")
    # Killed inside a quoted name that holds a newline: the open quote must not swallow later rows.
    odd = image_key(tmp_path / "d\n,e.png")
    path.write_text(text + '"' + odd.split("\n")[0] + "\n")
    cache = ScoreCache(path)
    assert len(cache.saved) == 3 and path.read_text() == text
    cache.append([Result(odd, 0.125), Result(image_key(tmp_path / "f.png"), 1.0)])
    assert ScoreCache(path).saved[odd].score == 0.125 and len(ScoreCache(path).saved) == 5
    path.write_text("something,else\n1,2\n")
    with pytest.raises(ScoresFileError, match="no header path,score,width,height,error.*--rescore"):
        ScoreCache(path)
    assert ScoreCache(path, fresh=True).saved == {}


# Saved scores are named by a digest of everything that changes the scores (docs/evaluation.md: preset, weights
# path or Hub spec, revision, prompts, logit scale, precision, pixel limit). Each entry changes one of them from
# _BASE: (ModelSpec fields, scorer settings). Changing the preset or the weights folder keeps the file's readable
# part ("w.pth)"), so only the digest can tell the files apart.
_BASE = (dict(model="qualiclip", weights="one/w.pth"),
         dict(revision="main", prompts=[("good photo.", "bad photo.")], logit_scale=100.0, precision="fp32",
              max_image_pixels=48_000_000, prompt_weights="p.pth", prompt_revision="main", device="cpu",
              batch_size=8))
_SCORE_CHANGES = {
    "preset": ({"model": "clipiqa"}, {}),
    "weights": ({"weights": "two/w.pth"}, {}),
    "revision": ({}, {"revision": "v2"}),
    "prompts": ({}, {"prompts": [("sharp photo.", "blurry photo.")]}),
    "logit scale": ({}, {"logit_scale": 50.0}),
    "precision": ({}, {"precision": "bf16"}),
    "pixel limit": ({}, {"max_image_pixels": 1_000_000}),
    "prompt weights": ({}, {"prompt_weights": "q.pth"}),
    "prompt revision": ({}, {"prompt_revision": "v2"}),
}
# Settings that change only how fast images are scored.
_SPEED_CHANGES = {"device": {"device": "cuda"}, "batch size": {"batch_size": 64},
                  "batch pixels": {"max_batch_pixels": 10**6}, "workers": {"workers": 7}, "threads": {"threads": 3},
                  "offline": {"local_files_only": True}, "cache dir": {"cache_dir": "/elsewhere"}}


def _digest_study(folder: Path) -> Path:
    """A MOS file naming five existing (undecodable: the counting scorer never opens them) images."""
    names = [f"im{index}.png" for index in range(5)]
    _touch_images(folder, names)
    (folder / "mos.csv").write_text("path,mos\n" + "".join(f"{name},{index + 1}\n" for index, name in
                                                           enumerate(names)))
    return folder / "mos.csv"


def _run_with_saved_scores(mos: Path, loader: CountingLoader, spec: dict, settings: dict, workers=None) -> dict:
    result = evaluate(mos, models=[ModelSpec(**spec)], scorer_options=settings, load_scorer=loader,
                      cache_dir=mos.parent / "saved", resamples=0, workers=workers)
    return result.report["models"][0]


@pytest.mark.parametrize("change", list(_SCORE_CHANGES))
def test_each_input_that_changes_the_scores_forces_a_rescore(change, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mos, loader = _digest_study(tmp_path), CountingLoader()
    first = _run_with_saved_scores(mos, loader, *_BASE)
    assert (first["scores_computed"], first["scores_reused"], len(loader.scored)) == (5, 0, 5)
    spec_change, settings_change = _SCORE_CHANGES[change]
    changed = _run_with_saved_scores(mos, loader, {**_BASE[0], **spec_change}, {**_BASE[1], **settings_change})
    assert (changed["scores_computed"], changed["scores_reused"], len(loader.scored)) == (5, 0, 10)
    assert changed["scores_file"] != first["scores_file"]
    assert os.path.basename(changed["scores_file"]).startswith("w.pth.")
    # Both sets stay saved: going back to the first settings loads no model.
    again = _run_with_saved_scores(mos, loader, *_BASE)
    assert (again["scores_reused"], again["scores_file"], len(loader.loaded)) == (5, first["scores_file"], 2)


@pytest.mark.parametrize("change", list(_SPEED_CHANGES))
def test_speed_settings_reuse_the_saved_scores(change, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mos, loader = _digest_study(tmp_path), CountingLoader()
    first = _run_with_saved_scores(mos, loader, *_BASE)
    # The same weights by absolute path, other decoding threads, and the speed setting changed.
    spec = {**_BASE[0], "weights": str(tmp_path / "one" / "w.pth")}
    again = _run_with_saved_scores(mos, loader, spec, {**_BASE[1], **_SPEED_CHANGES[change]}, workers=3)
    assert (again["scores_reused"], again["scores_computed"], len(loader.loaded)) == (5, 0, 1)
    assert again["scores_file"] == first["scores_file"]


# ---------------------------------------------------------------------------------------------------------------
# Command line: option handling


def test_models_pair_with_weights_by_position():
    assert model_specs(None, None, scores=False) == [ModelSpec()]
    assert model_specs(None, None, scores=True) == []
    assert model_specs(None, ["a.pth", "b.pth"], False) == [ModelSpec(weights="a.pth"), ModelSpec(weights="b.pth")]
    assert model_specs(["x", "y"], None, False) == [ModelSpec(model="x"), ModelSpec(model="y")]
    assert model_specs(["x", "y"], ["w"], False) == [ModelSpec("x", "w"), ModelSpec("y", "w")]
    assert model_specs(["x", "y"], ["v", "w"], False) == [ModelSpec("x", "v"), ModelSpec("y", "w")]
    with pytest.raises(Exception, match="2 --model and 3 --weights"):
        model_specs(["x", "y"], ["u", "v", "w"], False)
    assert [spec.label for spec in model_specs(["x"], ["w.pth"], False) + model_specs(None, ["w.pth"], False)
            + model_specs(None, None, False)] == ["x (w.pth)", "w.pth", "qualiclip"]


def test_scoring_options_have_the_same_names_as_qualiclip_score():
    from qualiclip_infer.cli import build_parser as score_parser
    from qualiclip_infer.cli import scorer_options

    def options(parser):
        return {option for action in parser._actions for option in action.option_strings}

    shared = options(score_parser()) - {"-o", "--output", "--format", "--resume", "--sort", "--reverse",
                                         "--min-score", "--max-score", "--summary", "--no-recursive", "--hidden",
                                         "--shard", "--maps", "--map-method", "--calibration",  # written besides rows
                                         "--ray", "--actors", "--cpus-per-actor", "--gpus-per-actor",  # where
                                         "--image-col", "--id-col",  # inputs of shards and Parquet files
                                         "--read-timeout", "--info"}  # of the scoring command alone
    assert shared <= options(build_parser())
    args = build_parser().parse_args(["mos.csv", "-o", "r.json", "--model", "clipiqa", "--weights", "w.pth",
                                      "--precision", "bf16", "--max-pixels", "2"])
    assert args.model == ["clipiqa"] and args.weights == ["w.pth"]
    one = build_parser().parse_args(["mos.csv", "-o", "r.json"])
    one.model = None
    assert "model" not in scorer_options(one, None)  # model= goes to QualityScorer only when --model is given
    one.model = "clipiqa"
    assert scorer_options(one, None)["model"] == "clipiqa"


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    (tmp_path / "mos.csv").write_text("path,mos\n")
    status = main([str(tmp_path / "mos.csv"), "-o", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert 'pip install "qualiclip-infer[eval]"' in error


# ---------------------------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Twelve images of a few sizes, a MOS file naming them plus one missing image and one unreadable row, and
    two different tiny checkpoints."""
    root = tmp_path_factory.mktemp("study")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    lines = ["path,mos"]
    for index in range(12):
        save_image(root / "images" / f"im{index:02d}.png", natural_image(64 + 16 * (index % 3), 64, seed=index))
        lines.append(f"images/im{index:02d}.png,{rng.uniform(1, 5):.3f}")
    lines += ["images/gone.png,3.0", "images/im00.png,not-a-number"]
    (root / "mos.csv").write_text("\n".join(lines) + "\n")
    write_checkpoint(root / "first.pth", TINY_CONFIG, seed=0)
    write_checkpoint(root / "second.pth", TINY_CONFIG, seed=1)
    return root


def _eval(*args, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "qualiclip_infer.eval", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=environment, timeout=SUBPROCESS_TIMEOUT)


def _saved_scores(path: str) -> Dict[str, float]:
    with open(path, newline="") as file:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(file)}


def _study_mos(root: Path) -> Dict[str, float]:
    """The study's twelve usable rows, read by hand: absolute image path -> MOS, in file order."""
    mos = {}
    for line in (root / "mos.csv").read_text().splitlines()[1:13]:
        name, value = line.split(",")
        mos[str(root / name)] = float(value)
    return mos


def _independent_metrics(scores: Dict[str, float], root: Path) -> Dict[str, float]:
    """SRCC/KRCC/PLCC of saved scores against the MOS file, with scipy."""
    mos = _study_mos(root)
    x = np.array([scores[name] for name in mos])
    y = np.array(list(mos.values()))
    return {"srcc": stats.spearmanr(x, y)[0], "krcc": stats.kendalltau(x, y)[0], "plcc": stats.pearsonr(x, y)[0]}


def _resampled_srcc(score_sets: List[Dict[str, float]], root: Path, resamples: int, seed: int) -> np.ndarray:
    """scipy's SRCC of each model on each of the evaluator's bootstrap resamples: (models, resamples)."""
    mos = _study_mos(root)
    y = np.array(list(mos.values()))
    rows = np.concatenate(metrics.bootstrap_indices(len(y), resamples, seed))
    return np.array([[stats.spearmanr(x[row], y[row])[0] for row in rows]
                     for x in (np.array([scores[name] for name in mos]) for scores in score_sets)])


def test_eval_end_to_end_two_models_plot_and_reuse(study, tmp_path):
    from qualiclip_infer import QualityScorer

    weights = [shutil.copy(study / "first.pth", tmp_path / "a.pth"), shutil.copy(study / "second.pth",
                                                                                tmp_path / "b.pth")]
    out = tmp_path / "out"
    result = _eval(study / "mos.csv", "--weights", weights[0], "--weights", weights[1], "-o", out / "report.json",
                   "--plot", out / "scatter.png", "--vqeg5", "--resamples", "200", "--device", "cpu", "--workers", "2",
                   "--threads", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 12 and report["rows"] == 14 and report["mos_direction"] == "higher is better"
    assert report["excluded"]["missing_images"] == {"count": 1, "first": ["images/gone.png"]}
    assert report["excluded"]["unreadable_rows"]["count"] == 1
    assert "1 images not found" in result.stderr and "line 15: MOS 'not-a-number'" in result.stderr
    assert report["settings"]["bootstrap_resamples"] == 200 and report["settings"]["fits"] == ["logistic4", "vqeg5"]
    assert [model["label"] for model in report["models"]] == [str(weights[0]), str(weights[1])]

    # Scores saved next to the report, in qualiclip-score's format, equal to the library's.
    library = QualityScorer(weights[0], device="cpu")
    for model, path in zip(report["models"], weights):
        assert model["scores_computed"] == 12 and model["scores_reused"] == 0
        assert os.path.dirname(model["scores_file"]) == str(out)
        scores = _saved_scores(model["scores_file"])
        assert len(scores) == 12
        if path == weights[0]:
            for name, value in scores.items():
                assert value == pytest.approx(library.score(name), abs=1e-6)
        expected = _independent_metrics(scores, study)
        for name, value in expected.items():
            metric = model["metrics"][name]
            assert metric["value"] == pytest.approx(value, abs=1e-9)
            assert metric["ci"][0] <= metric["value"] <= metric["ci"][1]
        assert set(model["metrics"]) == {"srcc", "krcc", "plcc", "rmse", "plcc_logistic4", "rmse_logistic4",
                                         "plcc_vqeg5", "rmse_vqeg5"}
        assert len(model["fits"]["logistic4"]["params"]) == 4 and len(model["fits"]["vqeg5"]["params"]) == 5
    versus = report["models"][1]["srcc_vs_first"]
    assert versus["difference"] == pytest.approx(report["models"][1]["metrics"]["srcc"]["value"]
                                                 - report["models"][0]["metrics"]["srcc"]["value"], abs=1e-12)
    # The paired bootstrap recomputed with scipy on the same resamples (seed 0): the percentile intervals, and the
    # two-sided p-value as twice the smaller share of differences on either side of zero.
    resampled = _resampled_srcc([_saved_scores(model["scores_file"]) for model in report["models"]], study, 200, 0)
    assert np.isfinite(resampled).all()
    for model, samples in zip(report["models"], resampled):
        assert model["metrics"]["srcc"]["ci"] == pytest.approx(np.percentile(samples, [2.5, 97.5]), abs=1e-9)
    delta = resampled[1] - resampled[0]
    assert versus["ci"] == pytest.approx(np.percentile(delta, [2.5, 97.5]), abs=1e-9)
    shares = np.mean(delta <= 0), np.mean(delta >= 0)
    assert 0 < min(shares) < 0.5  # a case where one- and two-sided p-values differ
    assert versus["p_value"] == pytest.approx(2 * min(shares), abs=1e-12)
    assert "srcc_vs_first" not in report["models"][0]

    table = result.stdout.splitlines()
    assert table[0].startswith("| model | n | SRCC | KRCC | PLCC | RMSE | PLCC (logistic4) |")
    assert len(table) == 4 and f"| {weights[1]} | 12 | " in table[3]
    png = (out / "scatter.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

    # Second run: the same images and models; the weights are gone, so loading a model would fail.
    for path in weights:
        os.remove(path)
    again = _eval(study / "mos.csv", "--weights", weights[0], "--weights", weights[1], "-o", out / "again.json",
                  "--vqeg5", "--resamples", "200", "--device", "cpu", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("reusing 12 saved scores") == 2
    second = json.loads((out / "again.json").read_text())
    for before, after in zip(report["models"], second["models"]):
        assert after["scores_reused"] == 12 and after["scores_computed"] == 0
        assert after["metrics"] == before["metrics"] and after["fits"] == before["fits"]
    assert again.stdout == result.stdout

    # --rescore does load the model again.
    forced = _eval(study / "mos.csv", "--weights", weights[0], "-o", out / "forced.json", "--rescore",
                   "--device", "cpu", cwd=tmp_path)
    assert forced.returncode == 2 and "scoring 12 images" in forced.stderr
    assert forced.stderr.splitlines()[-1] == f"qualiclip-eval: error: cannot load the model: weights file not found: " \
                                             f"{weights[0]}"


def test_eval_of_qualiclip_score_output(study, tmp_path):
    score = subprocess.run([sys.executable, "-m", "qualiclip_infer", "images", "--weights", study / "first.pth",
                            "--device", "cpu", "-o", tmp_path / "scores.csv"], capture_output=True, text=True,
                           cwd=study, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=SUBPROCESS_TIMEOUT)
    assert score.returncode == 0, score.stderr
    result = _eval("mos.csv", "--scores", tmp_path / "scores.csv", "-o", tmp_path / "report.json",
                   "--resamples", "0", cwd=study)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    model = report["models"][0]
    assert model["label"] == str(tmp_path / "scores.csv") and model["scores_file"] == str(tmp_path / "scores.csv")
    assert model["metrics"]["srcc"]["ci"] is None
    scores = {str(study / path): value for path, value in _saved_scores(tmp_path / "scores.csv").items()}
    for name, value in _independent_metrics(scores, study).items():
        assert model["metrics"][name]["value"] == pytest.approx(value, abs=1e-9)


def test_python_api_scores_with_the_engine_and_flips_dmos(study, tmp_path):
    table = read_mos(study / "mos.csv", lower_better=True)
    result = evaluate(table, models=[ModelSpec(weights=str(study / "first.pth"))],
                      scorer_options={"device": "cpu", "batch_size": 4}, resamples=50, seed=3)
    assert isinstance(result, Evaluation) and result.report["n"] == 12
    assert result.report["mos_direction"] == "lower is better"
    x = result.scores[str(study / "first.pth")]
    values = result.report["models"][0]["metrics"]
    assert values["srcc"]["value"] == pytest.approx(-stats.spearmanr(x, result.mos)[0], abs=1e-12)
    assert values["plcc"]["value"] == pytest.approx(-stats.pearsonr(x, result.mos)[0], abs=1e-12)
    assert result.table().count("\n") == 2
    json.dumps(result.report, allow_nan=False)


def test_too_few_images_and_constant_scores(study, tmp_path):
    (tmp_path / "two.csv").write_text(f"path,mos\n{study}/images/im00.png,1\n{study}/images/im01.png,2\n")
    with pytest.raises(EvaluationError, match="2 images with a MOS and a score.*at least 3"):
        evaluate(tmp_path / "two.csv", models=[ModelSpec(weights=str(study / "first.pth"))],
                 scorer_options={"device": "cpu"})
    flat = tmp_path / "flat.csv"
    flat.write_text("path,score\n" + "".join(f"{study}/images/im{i:02d}.png,0.5\n" for i in range(12)))
    result = evaluate(study / "mos.csv", scores=[flat], resamples=20)
    metric = result.report["models"][0]["metrics"]
    assert metric["srcc"] == {"value": None, "ci": [None, None]} and metric["plcc_logistic4"]["value"] is None
    assert "n/a" in result.table()
    json.dumps(result.report, allow_nan=False)


def test_every_model_is_evaluated_on_the_images_every_model_scored(study, tmp_path):
    # Three models: the tiny network, which cannot decode the broken file; a score file without one image; a score
    # file with an error row for another. The reference (first) model scores more images than are used.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    paths = [broken, *(study / "images" / f"im{index:02d}.png" for index in range(8))]
    rng = np.random.default_rng(1)
    mos, hand = rng.uniform(1, 5, len(paths)).round(3), rng.uniform(0, 1, len(paths)).round(8)
    (tmp_path / "mos.csv").write_text("path,mos\n" + "".join(f"{path},{value}\n" for path, value in zip(paths, mos)))
    without = write_scores(tmp_path / "without.csv", [(path, score, "") for path, score in zip(paths, hand)
                                                      if path != paths[3]])
    failed = write_scores(tmp_path / "failed.csv", [(path, None if path == paths[6] else 1 - score,
                                                     "truncated file" if path == paths[6] else "")
                                                    for path, score in zip(paths, hand)])
    messages: List[str] = []
    result = evaluate(tmp_path / "mos.csv", models=[ModelSpec(weights=str(study / "first.pth"))],
                      scores=[without, failed], scorer_options={"device": "cpu"}, resamples=0, log=messages.append)

    used = [index for index in range(len(paths)) if index not in (0, 3, 6)]
    report = result.report
    assert result.images == [str(paths[index]) for index in used] and report["n"] == len(used) == 6
    assert report["excluded"]["not_scored"] == {"count": 3, "first": [str(paths[0]), str(paths[3]), str(paths[6])]}
    network, first_missing, first_failed = (model["not_scored"] for model in report["models"])
    assert network["count"] == 1 and network["first"][0].startswith(f"{broken}: ")
    assert first_missing == {"count": 1, "first": [f"{paths[3]}: not in {without}"]}
    assert first_failed == {"count": 1, "first": [f"{paths[6]}: truncated file"]}
    assert sum("1 images not scored, left out" in message for message in messages) == 3
    assert np.array_equal(result.mos, mos[used])
    for label, expected in ((str(without), hand[used]), (str(failed), 1 - hand[used])):
        assert result.scores[label] == pytest.approx(expected, abs=1e-12)
    for model, x in zip(report["models"], result.scores.values()):
        assert len(x) == 6
        assert model["metrics"]["srcc"]["value"] == pytest.approx(stats.spearmanr(x, mos[used])[0], abs=1e-12)
        assert model["metrics"]["plcc"]["value"] == pytest.approx(stats.pearsonr(x, mos[used])[0], abs=1e-12)


# Each MOS-file flag, on a file that only reads right with it: without it the command fails or sees other values.
_FLAG_FILES = {
    # Names hold commas, so the default (comma) splits them.
    "--delimiter": (["--delimiter", "semicolon"], "path;mos\n", "im,{index}.png", "{name};{mos}\n"),
    # Column numbers work with a header too: without the flag the first image would be taken for column names.
    "--no-header": (["--no-header", "--path-col", "1", "--mos-col", "2"], "", "im{index}.png", "{name},{mos}\n"),
    "--lower-better": (["--lower-better"], "path,mos\n", "im{index}.png", "{name},{mos}\n"),
}


@pytest.mark.parametrize("flag", list(_FLAG_FILES))
def test_mos_file_flags(flag, tmp_path):
    options, header, name, row = _FLAG_FILES[flag]
    names = [name.format(index=index) for index in range(6)]
    _touch_images(tmp_path, names)
    rng = np.random.default_rng(2)
    mos, scores = rng.uniform(1, 5, 6).round(3), rng.uniform(0, 1, 6).round(8)
    (tmp_path / "mos.txt").write_text(header + "".join(row.format(name=name, mos=value)
                                                       for name, value in zip(names, mos)))
    write_scores(tmp_path / "scores.csv", [(tmp_path / name, value, "") for name, value in zip(names, scores)])
    result = _eval("mos.txt", *options, "--scores", "scores.csv", "--resamples", "0", "-o", "report.json",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["n"], report["rows"]) == (6, 6)
    sign = -1 if flag == "--lower-better" else 1
    assert report["mos_direction"] == ("lower is better" if sign < 0 else "higher is better")
    values = report["models"][0]["metrics"]
    assert values["srcc"]["value"] == pytest.approx(sign * stats.spearmanr(scores, mos)[0], abs=1e-12)
    assert values["plcc"]["value"] == pytest.approx(sign * stats.pearsonr(scores, mos)[0], abs=1e-12)
