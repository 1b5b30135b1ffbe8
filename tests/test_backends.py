"""Runtime backends (OpenVINO, ONNX Runtime) score as the torch path does, everywhere the scorer is used."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import warnings

import pytest
import torch
from helpers_backends import CUSTOM_PROMPTS, folder_with_broken_files, image_batches, write_plus_prompt_file

from qualiclip_infer import QualityScorer

RUNTIMES = ("openvino", "onnxruntime")
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def variants(tiny_checkpoint, tmp_path_factory):
    """Scorer options of the three kinds of text side: stored features, a QualiCLIP+ preset, custom prompts."""
    plus = write_plus_prompt_file(tmp_path_factory.mktemp("plus") / "QualiCLIP+_koniq.pth")
    return {
        "qualiclip": dict(weights=tiny_checkpoint),
        "qualiclip+koniq": dict(weights=tiny_checkpoint, model="qualiclip+koniq", prompt_weights=plus),
        "custom": dict(weights=tiny_checkpoint, prompts=CUSTOM_PROMPTS),
    }


@pytest.fixture(scope="module")
def torch_scores(variants):
    with torch.inference_mode():
        return {name: [QualityScorer(**options, device="cpu").score_tensor(batch) for batch in image_batches()]
                for name, options in variants.items()}


@pytest.mark.parametrize("backend", RUNTIMES)
@pytest.mark.parametrize("variant", ["qualiclip", "qualiclip+koniq", "custom"])
def test_runtime_scores_equal_torch_at_square_non_square_and_odd_sizes(variants, torch_scores, variant, backend,
                                                                       one_thread):
    scorer = QualityScorer(**variants[variant], backend=backend)
    assert scorer.device.type == "cpu" and scorer.backend == backend
    for batch, expected in zip(image_batches(), torch_scores[variant]):
        got = scorer.score_tensor(batch)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_the_variants_score_differently(torch_scores):
    """Otherwise agreement on the prompt variants would prove nothing about their text features."""
    base = torch.cat(torch_scores["qualiclip"])
    for variant in ("qualiclip+koniq", "custom"):
        assert (torch.cat(torch_scores[variant]) - base).abs().max() > 1e-3


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory):
    return folder_with_broken_files(tmp_path_factory.mktemp("broken"))


def _rows(scorer, paths):
    return [(r.name, r.score, r.width, r.height, r.error) for r in scorer.iter_scores(paths, workers=2)]


@pytest.mark.parametrize("backend", RUNTIMES)
def test_engine_error_rows_are_identical_with_either_backend(tiny_checkpoint, broken_folder, backend, one_thread):
    expected = _rows(QualityScorer(tiny_checkpoint, device="cpu"), broken_folder)
    got = _rows(QualityScorer(tiny_checkpoint, backend=backend), broken_folder)
    assert [row[:1] + row[2:] for row in got] == [row[:1] + row[2:] for row in expected]
    assert [row[4] for row in got if row[4]] == [
        "cannot decode: image file is truncated", "not an image file Pillow can read",
        "not an image file Pillow can read", "image is 20x20; QualiCLIP needs at least 32x32 pixels"]
    for (_, score, *_), (_, want, *_) in zip(got, expected):
        assert (score is None) == (want is None)
        if score is not None:
            assert abs(score - want) <= TOLERANCE


def test_a_batch_failing_in_the_runtime_is_retried_one_image_at_a_time(tiny_checkpoint, broken_folder, one_thread):
    scorer = QualityScorer(tiny_checkpoint, backend="openvino")
    compiled = scorer._runtime._features

    shapes = []

    def out_of_memory_for_batches(array):
        shapes.append(array.shape[0])
        if array.shape[0] > 1:
            raise RuntimeError("Out of memory: cannot allocate the activations")
        return compiled(array)

    expected = _rows(scorer, broken_folder)
    scorer._runtime._features = out_of_memory_for_batches
    got = _rows(scorer, broken_folder)
    assert max(shapes) > 1 and shapes.count(1) == 5  # the batches failed, then each good photo was scored alone
    assert [row[4] for row in got] == [row[4] for row in expected]
    for (_, score, *_), (_, want, *_) in zip(got, expected):
        assert (score is None) == (want is None)
        if score is not None:
            assert abs(score - want) <= TOLERANCE


def test_cli_backend_option_writes_the_torch_rows(tiny_checkpoint, broken_folder):
    torch_rows = {name: (score, error) for name, score, _, _, error in
                  _rows(QualityScorer(tiny_checkpoint, device="cpu"), broken_folder)}
    run = subprocess.run([sys.executable, "-m", "qualiclip_infer", str(broken_folder[0].parent), "--weights",
                          str(tiny_checkpoint), "--backend", "openvino", "--format", "csv", "--threads", "1", "-q"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr  # some images failed
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    assert {row["path"] for row in rows} == set(torch_rows)
    for row in rows:
        score, error = torch_rows[row["path"]]
        assert row["error"] == (error or "")
        if score is not None:
            assert abs(float(row["score"]) - score) <= 2e-5  # csv rounds to 6 decimals


def test_windows_maps_use_the_runtime_and_tokens_maps_say_they_use_torch(tiny_checkpoint, one_thread):
    from helpers import natural_image

    image = natural_image(160, 96, seed=3)
    reference = QualityScorer(tiny_checkpoint, device="cpu")
    scorer = QualityScorer(tiny_checkpoint, backend="onnxruntime")
    calls = []
    compiled = scorer._runtime._features
    scorer._runtime._features = lambda array: calls.append(array.shape) or compiled(array)
    windows = scorer.quality_map(image, window=64, stride=48)
    torch.testing.assert_close(torch.as_tensor(windows.values),
                               torch.as_tensor(reference.quality_map(image, window=64, stride=48).values),
                               atol=TOLERANCE, rtol=0)
    assert calls and calls[0][2:] == (64, 64)
    calls.clear()
    with pytest.warns(RuntimeWarning, match="tokens maps run on torch"):
        tokens = scorer.quality_map(image, method="tokens")
    assert not calls
    torch.testing.assert_close(torch.as_tensor(tokens.values),
                               torch.as_tensor(reference.quality_map(image, method="tokens").values))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        scorer.quality_map(image, method="tokens")


@pytest.mark.parametrize("backend, precision, message", [
    ("openvino", "fp16", "not available with backend 'openvino'"),
    ("onnxruntime", "bf16", "not available with backend 'onnxruntime'"),
    ("tensorrt", "fp32", "expected one of torch, openvino, onnxruntime"),
])
def test_unsupported_backend_or_precision_is_refused(tiny_checkpoint, backend, precision, message):
    with pytest.raises(ValueError, match=message):
        QualityScorer(tiny_checkpoint, backend=backend, precision=precision, device="cpu")


def test_a_missing_runtime_names_the_extra_to_install(tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "qualiclip-infer\[openvino\]"'):
        QualityScorer(tiny_checkpoint, backend="openvino")
    # Checked before the weights are looked for (or downloaded): no weights file is needed to learn it.
    with pytest.raises(ImportError, match=r'pip install "qualiclip-infer\[openvino\]"'):
        QualityScorer(tmp_path / "not-there.pth", backend="openvino")


def test_openvino_bf16_stays_close_to_fp32(tiny_checkpoint, one_thread):
    batch = image_batches()[0]
    fp32 = QualityScorer(tiny_checkpoint, device="cpu").score_tensor(batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # on a CPU without native bf16
        bf16 = QualityScorer(tiny_checkpoint, backend="openvino", precision="bf16").score_tensor(batch)
    assert (bf16 - fp32).abs().max() < 0.05


def test_the_graph_is_converted_once_and_a_damaged_cache_entry_is_replaced(tiny_checkpoint, monkeypatch, one_thread):
    from qualiclip_infer import graph_cache

    conversions = []
    real_convert = graph_cache.onnx_bytes
    monkeypatch.setattr(graph_cache, "onnx_bytes", lambda *a: conversions.append(1) or real_convert(*a))
    batch = image_batches()[1]
    expected = QualityScorer(tiny_checkpoint, device="cpu").score_tensor(batch)
    for backend in RUNTIMES:
        torch.testing.assert_close(QualityScorer(tiny_checkpoint, backend=backend).score_tensor(batch), expected,
                                   atol=TOLERANCE, rtol=0)
    assert len(conversions) == 1  # the second backend and any later scorer read the cached file
    (entry,) = graph_cache.backend_cache_dir().iterdir()
    (entry / graph_cache.GRAPH_FILE).write_bytes(b"damaged")
    for backend in RUNTIMES:
        torch.testing.assert_close(QualityScorer(tiny_checkpoint, backend=backend).score_tensor(batch), expected,
                                   atol=TOLERANCE, rtol=0)
    assert len(conversions) == 2  # the damaged entry was converted anew, once, and cached again


def test_an_unwritable_cache_falls_back_to_converting_in_memory(tiny_checkpoint, tmp_path, monkeypatch, one_thread):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("QUALICLIP_INFER_CACHE", str(blocker))
    batch = image_batches()[2]
    torch.testing.assert_close(QualityScorer(tiny_checkpoint, backend="openvino").score_tensor(batch),
                               QualityScorer(tiny_checkpoint, device="cpu").score_tensor(batch), atol=TOLERANCE, rtol=0)


def test_another_network_gets_another_cache_entry(tiny_checkpoint, tmp_path):
    from helpers import TINY_CONFIG, write_checkpoint

    from qualiclip_infer.graph_cache import graph_key
    from qualiclip_infer.onnx_graph import ImageTower

    other = write_checkpoint(tmp_path / "other.pth", TINY_CONFIG, seed=5)
    keys = {graph_key(ImageTower(QualityScorer(path, device="cpu").model)) for path in (tiny_checkpoint, other)}
    assert len(keys) == 2
    assert graph_key(ImageTower(QualityScorer(tiny_checkpoint, device="cpu").model)) in keys


def test_the_cache_keeps_the_four_most_recently_used_networks(tmp_path):
    import os

    from helpers import TINY_CONFIG, write_checkpoint

    from qualiclip_infer import graph_cache
    from qualiclip_infer.onnx_graph import ImageTower

    towers = [ImageTower(QualityScorer(write_checkpoint(tmp_path / f"{seed}.pth", TINY_CONFIG, seed=seed),
                                       device="cpu").model) for seed in range(5)]
    graphs = []
    for age, tower in enumerate(towers[:4]):
        graphs.append(graph_cache.cached_graph(tower, "images", "features"))
        os.utime(graphs[-1].parent, (1_000_000 + age,) * 2)  # used in this order, long ago
    assert graph_cache.cached_graph(towers[0], "images", "features") == graphs[0]  # used again: now the newest
    fifth = graph_cache.cached_graph(towers[4], "images", "features")
    kept = {entry.name for entry in graph_cache.backend_cache_dir().iterdir()}
    assert kept == {graph.parent.name for graph in (graphs[0], graphs[2], graphs[3], fifth)}
