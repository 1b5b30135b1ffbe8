"""Calibration files: fitted on synthetic scores and MOS with known parameters, applied back, refused for another
model or settings; saved by ``qualiclip-eval --save-calibration`` and applied by ``qualiclip-score --calibration``
and ``QualityScorer(calibration=...)``."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
from scipy import optimize, stats

from helpers import TINY_CONFIG, write_checkpoint
from helpers_report import make_photos, read_csv, run
from qualiclip_infer.calibration import (QUANTILES, CalibrationError, fit_calibration, load_calibration,
                                         save_calibration, scorer_identity)
from qualiclip_infer.report import build_report, read_rows
from qualiclip_infer.scorer import QualityScorer

TRUE = (4.6, 1.3, 0.55, 0.08)  # b1 (top), b2 (bottom), b3 (centre), b4 (width)
IDENTITY = {"model": "qualiclip", "weights_file": "QualiCLIP.pth", "weights_sha256": "a" * 64,
            "prompt_features_sha256": "b" * 64, "logit_scale": 100.0, "precision": "fp32"}


def logistic(x, b1, b2, b3, b4):
    """The reference logistic, written out here rather than taken from the package."""
    return (b1 - b2) / (1 + np.exp(-(np.asarray(x) - b3) / b4)) + b2


def synthetic(n: int = 4000, seed: int = 0, noise: float = 0.1):
    rng = np.random.default_rng(seed)
    x = rng.beta(4, 3, n)
    return x, logistic(x, *TRUE), logistic(x, *TRUE) + rng.normal(0, noise, n)


def test_the_fit_recovers_the_mos_and_the_percentile_the_rank():
    x, clean, noisy = synthetic()
    calibration = fit_calibration(x, noisy, dataset="synthetic", identity=IDENTITY)
    np.testing.assert_allclose(calibration.params[:3], TRUE[:3], atol=0.03)
    assert abs(calibration.params[3] / TRUE[3] - 1) < 0.1
    # Stated tolerance: the predicted MOS within 0.05 (1.5% of the 1.3-4.6 range) of the noise-free MOS.
    assert np.abs(calibration.mos(x) - clean).max() < 0.05
    # ... and the percentile within half a point of each image's rank among the calibration images.
    rank = (stats.rankdata(x) - 1) / (len(x) - 1) * 100
    assert np.abs(calibration.percentile(x) - rank).max() < 0.5
    # New images from the same distribution: their percentile is the distribution's CDF, to sampling error.
    fresh = np.random.default_rng(1).beta(4, 3, 500)
    assert np.abs(calibration.percentile(fresh) - 100 * stats.beta.cdf(fresh, 4, 3)).max() < 3
    assert calibration.percentile([-1.0, 2.0]).tolist() == [0.0, 100.0]
    assert calibration.mos_range == (noisy.min(), noisy.max()) and calibration.images == len(x)


def test_a_lower_is_better_dataset_gets_a_falling_curve():
    x, clean, noisy = synthetic(seed=2)
    dmos = 6 - noisy
    calibration = fit_calibration(x, dmos, dataset="dmos", identity=IDENTITY, lower_better=True)
    assert np.abs(calibration.mos(x) - (6 - clean)).max() < 0.05
    assert calibration.mos(0.9) < calibration.mos(0.2) and calibration.lower_better
    assert calibration.percentile(0.9) > calibration.percentile(0.2)  # a percentile of quality, whatever the MOS


def test_tied_scores_share_the_middle_of_their_percentiles():
    x = np.array([0.2] * 50 + [0.4] * 50 + [0.6] * 100)
    calibration = fit_calibration(x, 2 + 3 * x, dataset="ties", identity=IDENTITY)
    # The middle ranks of each tied run (0-49, 50-99, 100-199 of 0-199), to the quantiles' resolution of a point.
    middle_ranks = np.array([24.5, 74.5, 149.5]) / 199 * 100
    np.testing.assert_allclose(calibration.percentile([0.2, 0.4, 0.6]), middle_ranks, atol=0.5)


def test_saved_and_loaded_unchanged(tmp_path):
    x, _, noisy = synthetic(n=300)
    calibration = fit_calibration(x, noisy, dataset="synthetic", identity=IDENTITY)
    save_calibration(calibration, tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["fit"]["formula"] == "(b1 - b2) / (1 + exp(-(x - b3) / b4)) + b2"
    assert len(data["quantiles"]) == QUANTILES == 101
    np.testing.assert_allclose(data["quantiles"], np.percentile(x, np.arange(101)))
    assert data["dataset"] == "synthetic" and data["fitted_for"] == IDENTITY
    assert data["mos_direction"] == "higher is better" and data["mos_range"] == [noisy.min(), noisy.max()]
    loaded = load_calibration(tmp_path / "c.json")
    assert loaded.params == calibration.params and loaded.quantiles == calibration.quantiles
    np.testing.assert_array_equal(loaded.mos(x), calibration.mos(x))


@pytest.mark.parametrize("change, cause", [
    (lambda d: "{not json", "not JSON"),
    (lambda d: {**d, "format": "other"}, "not a qualiclip-calibration file"),
    (lambda d: {**d, "quantiles": d["quantiles"][:100]}, "101 quantiles"),
    (lambda d: {**d, "quantiles": d["quantiles"][::-1]}, "ascending"),
    (lambda d: {k: v for k, v in d.items() if k != "fit"}, "missing or malformed"),
])
def test_a_broken_file_is_refused_with_one_line(tmp_path, change, cause):
    x, _, noisy = synthetic(n=100)
    data = fit_calibration(x, noisy, dataset="s", identity=IDENTITY).to_dict()
    changed = change(data)
    (tmp_path / "c.json").write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(CalibrationError) as caught:
        load_calibration(tmp_path / "c.json")
    assert cause in str(caught.value) and "c.json" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("field, value", [("weights_sha256", "c" * 64), ("precision", "fp16"), ("logit_scale", 50.0),
                                          ("model", "clipiqa"), ("prompt_features_sha256", "d" * 64)])
def test_another_model_or_setting_is_refused_naming_it(field, value):
    x, _, noisy = synthetic(n=100)
    calibration = fit_calibration(x, noisy, dataset="koniq", identity=IDENTITY)
    calibration.check(dict(IDENTITY, device="cuda"))  # what does not change scores is not compared
    with pytest.raises(CalibrationError, match=f"fitted for {field} .*but the scorer has {field}"):
        calibration.check(dict(IDENTITY, **{field: value}))


@pytest.fixture(scope="module")
def photos(tmp_path_factory, tiny_checkpoint):
    """Generated photos, their scores by the tiny model, and a MOS that is a known logistic of those scores."""
    root = tmp_path_factory.mktemp("calibration")
    names = sorted(make_photos(root / "photos"))
    scorer = QualityScorer(tiny_checkpoint, device="cpu")
    scores = np.array(scorer.score([root / "photos" / name for name in names]))
    params = (5.0, 1.0, float(np.median(scores)), float(scores.std()))
    mos = logistic(scores, *params)
    (root / "mos.csv").write_text("path,mos\n" + "".join(f"photos/{n},{float(m)!r}\n" for n, m in zip(names, mos)))
    return root, names, scores, scorer


def test_quality_scorer_adds_mos_and_percentile_and_refuses_another_model(photos, tiny_checkpoint, tmp_path,
                                                                          one_thread):
    root, names, scores, scorer = photos
    calibration = fit_calibration(scores, 2 + 3 * scores, dataset="made up", identity=scorer_identity(scorer))
    assert calibration.identity["weights_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    save_calibration(calibration, tmp_path / "c.json")
    calibrated = QualityScorer(tiny_checkpoint, device="cpu", calibration=str(tmp_path / "c.json"))
    paths = [root / "photos" / name for name in names] + [root / "photos" / "broken.jpg"]
    results = list(calibrated.iter_scores(paths))
    np.testing.assert_allclose([r.mos for r in results[:-1]], 2 + 3 * scores, atol=1e-3)
    rank = (stats.rankdata(scores) - 1) / (len(scores) - 1) * 100
    # Within half a point: 101 quantiles of 7 images fall on the images' own scores only at 0, 50 and 100.
    np.testing.assert_allclose([r.percentile for r in results[:-1]], rank, atol=0.5)
    assert results[-1].mos is None and results[-1].percentile is None and results[-1].error
    other = write_checkpoint(tmp_path / "other.pth", TINY_CONFIG, seed=3)
    with pytest.raises(CalibrationError, match=r"weights_sha256 .*\(tiny.pth\).*\(other.pth\)"):
        QualityScorer(other, device="cpu", calibration=calibration)
    with pytest.raises(CalibrationError, match="logit_scale 100.0, but the scorer has logit_scale 50.0"):
        QualityScorer(tiny_checkpoint, device="cpu", logit_scale=50, calibration=calibration)
    with pytest.raises(CalibrationError, match="precision 'fp32', but the scorer has precision 'bf16'"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without native bf16 warns; the refusal is what counts
        QualityScorer(tiny_checkpoint, device="cpu", precision="bf16", calibration=calibration)


def test_eval_saves_a_calibration_that_score_applies(photos, tiny_checkpoint, tmp_path):
    root, names, scores, _ = photos
    done = run("qualiclip_infer.eval", "mos.csv", "--weights", tiny_checkpoint, "-o", tmp_path / "eval.json",
               "--save-calibration", tmp_path / "cal.json", "--resamples", "0", "--threads", "1", "-q", cwd=root)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "cal.json").read_text())
    assert data["dataset"] == "mos.csv" and data["images"] == len(names)
    assert data["fitted_for"]["weights_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    np.testing.assert_allclose(data["quantiles"], np.percentile(scores, np.arange(101)), atol=1e-6)
    mos = np.array([float(row["mos"]) for row in read_csv(root / "mos.csv")])
    reference, _ = optimize.curve_fit(logistic, scores, mos, p0=(5, 1, np.median(scores), scores.std()))
    grid = np.linspace(scores.min(), scores.max(), 50)
    np.testing.assert_allclose(logistic(grid, *data["fit"]["params"]), logistic(grid, *reference), atol=1e-3)

    for output in ("cal.csv", "cal.parquet"):
        done = run("qualiclip_infer", "photos", "--weights", tiny_checkpoint, "--calibration", tmp_path / "cal.json",
                   "-o", tmp_path / output, "--threads", "1", "-q", cwd=root)
        assert done.returncode == 1, done.stderr  # the broken files; every photo scored
        rows = {row.path: row for row in read_rows(str(tmp_path / output))}
        got = np.array([[rows[f"photos/{n}"].mos, rows[f"photos/{n}"].percentile] for n in names])
        np.testing.assert_allclose(got[:, 0], mos, atol=1e-3)
        np.testing.assert_allclose(got[:, 1], (stats.rankdata(scores) - 1) / (len(scores) - 1) * 100, atol=0.5)
        assert rows["photos/broken.jpg"].mos is None
    assert read_csv(tmp_path / "cal.csv")[0].keys() >= {"mos", "percentile"}
    result = build_report(read_rows(str(tmp_path / "cal.csv")), str(tmp_path / "r.html"), root=str(root))
    assert result.scored == len(names)
    page = (tmp_path / "r.html").read_text()
    data_rows = json.loads(page.split('type="application/json">', 1)[1].split("</script>", 1)[0])["rows"]
    assert sorted(round(row[8], 3) for row in data_rows) == sorted(np.round(mos, 3))


def test_score_refuses_a_calibration_for_another_model_in_one_line(photos, tmp_path):
    root, names, scores, scorer = photos
    save_calibration(fit_calibration(scores, 2 + 3 * scores, dataset="made up", identity=scorer_identity(scorer)),
                     tmp_path / "c.json")
    other = write_checkpoint(tmp_path / "other.pth", TINY_CONFIG, seed=3)
    done = run("qualiclip_infer", "photos", "--weights", other, "--calibration", tmp_path / "c.json", "-o",
               tmp_path / "out.csv", "--threads", "1", cwd=root)
    assert done.returncode == 2 and not (tmp_path / "out.csv").exists()
    assert done.stderr.count("\n") == 1 and "weights_sha256" in done.stderr and "other.pth" in done.stderr
    done = run("qualiclip_infer.eval", "mos.csv", "--scores", tmp_path / "x.csv", "-o", tmp_path / "e.json",
               "--save-calibration", tmp_path / "k.json", cwd=root)
    assert done.returncode == 2 and "--save-calibration needs the model" in done.stderr
