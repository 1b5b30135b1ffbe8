"""QualityScorer: every input type, PIL modes, EXIF orientation, batching, prompts and their cache, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import open_clip
import pytest
import torch
from helpers import natural_image, save_image
from PIL import Image, ImageOps
from reference_qualiclip import read_checkpoint
from reference_qualiclip import score as reference_score

import qualiclip_infer.prompts as prompts_module
from qualiclip_infer import OFFICIAL_PROMPT_PAIRS, ImageError, QualityScorer
from qualiclip_infer.engine import group_by_size
from qualiclip_infer.images import image_size


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return QualityScorer(tiny_checkpoint, device="cpu", batch_size=4)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def test_every_input_type_gives_the_same_score(scorer, tmp_path):
    array = natural_image(96, 72)
    path = save_image(tmp_path / "a.png", array)
    expected = scorer.score(_tensor(array)[None])
    assert isinstance(expected, torch.Tensor) and expected.shape == (1,)
    for image in (str(path), path, Image.open(path), array, _tensor(array)):
        value = scorer.score(image)
        assert isinstance(value, float) and abs(value - float(expected[0])) < 1e-6
    gray = natural_image(96, 72)[..., 0]
    assert scorer.score(gray) == pytest.approx(scorer.score(np.stack([gray] * 3, axis=-1)), abs=1e-7)
    assert scorer.score(gray[..., None]) == pytest.approx(scorer.score(gray), abs=1e-7)


def test_list_keeps_input_order_and_batch_invariance(tiny_checkpoint, tmp_path):
    arrays = [natural_image(w, h, seed) for seed, (w, h) in enumerate([(64, 64), (96, 64), (64, 64), (40, 90),
                                                                       (96, 64), (64, 64), (64, 64)])]
    singles = [QualityScorer(tiny_checkpoint, device="cpu", batch_size=1).score(a) for a in arrays]
    for batch_size in (1, 2, 16):
        scores = QualityScorer(tiny_checkpoint, device="cpu", batch_size=batch_size).score(arrays)
        assert isinstance(scores, list) and len(scores) == len(arrays)
        assert np.allclose(scores, singles, atol=1e-6, rtol=0)
    assert len(set(np.round(singles, 7))) == len(singles)  # distinct images, so order is really checked


def test_batch_tensor_is_split_by_batch_size(tiny_checkpoint):
    images = torch.rand(5, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    small = QualityScorer(tiny_checkpoint, device="cpu", batch_size=2).score(images)
    large = QualityScorer(tiny_checkpoint, device="cpu", batch_size=8).score(images)
    assert small.shape == (5,) and torch.allclose(small, large, atol=1e-6)


def test_size_batches_group_equal_sizes_under_limits():
    sizes = [(10, 10), (20, 10), (10, 10), (10, 10), (20, 10)]
    assert group_by_size(sizes, batch_size=2, max_batch_pixels=10**6) == [[0, 2], [3], [1, 4]]
    assert group_by_size(sizes, batch_size=8, max_batch_pixels=250) == [[0, 2], [3], [1], [4]]
    assert group_by_size([(5000, 5000)], batch_size=8, max_batch_pixels=10) == [[0]]


def test_the_documented_defaults(tiny_checkpoint, monkeypatch):
    """docs/python-api.md and docs/cli.md: batches of 16 equal sizes, at most 0.5 Mpx beyond a batch's first image
    on the CPU (ten 224x224 images), 48 Mpx per image, 30 s per read, one decoding thread per CPU up to 8."""
    import inspect

    from qualiclip_infer import constants

    scorer = QualityScorer(tiny_checkpoint, device="cpu")
    assert (scorer.batch_size, scorer.max_batch_pixels, scorer.max_image_pixels) == (16, 2**19, 48_000_000)
    assert [len(batch) for batch in group_by_size([(224, 224)] * 24, scorer.batch_size, scorer.max_batch_pixels)] \
        == [10, 10, 4]
    assert [len(batch) for batch in group_by_size([(64, 64)] * 40, scorer.batch_size, scorer.max_batch_pixels)] \
        == [16, 16, 8]
    assert inspect.signature(scorer.iter_scores).parameters["read_timeout"].default == 30
    for cpus, workers in ((1, 1), (3, 3), (8, 8), (64, 8)):
        monkeypatch.setattr(constants, "available_cpus", lambda: cpus)
        assert constants.default_workers() == workers


@pytest.mark.parametrize("mode, suffix", [("L", ".png"), ("LA", ".png"), ("P", ".png"), ("RGBA", ".png"),
                                          ("CMYK", ".jpg"), ("I;16", ".png"), ("1", ".png"), ("I", ".tif"),
                                          ("F", ".tif"), ("YCbCr", ".jpg")])
def test_pil_modes_convert_like_pillow(scorer, tmp_path, mode, suffix):
    rgb = Image.fromarray(natural_image(80, 64, 3))
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16))
    path = tmp_path / f"image{suffix}"
    image.save(path)
    with Image.open(path) as reopened:
        expected_rgb = np.asarray(reopened.convert("RGB"))
    expected = scorer.score(expected_rgb)
    assert scorer.score(path) == pytest.approx(expected, abs=1e-7)
    assert scorer.score(Image.open(path)) == pytest.approx(expected, abs=1e-7)


def test_exif_orientation_is_applied(scorer, tmp_path):
    array = natural_image(96, 48, 5)  # landscape pixels, stored "rotate 90" -> portrait when upright
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    assert image_size(path) == (48, 96)
    with Image.open(path) as stored:
        upright = np.asarray(ImageOps.exif_transpose(stored))
        sideways = np.asarray(stored.convert("RGB"))
    assert upright.shape == (96, 48, 3)
    assert scorer.score(path) == pytest.approx(scorer.score(upright), abs=1e-7)
    assert scorer.score(Image.open(path)) == pytest.approx(scorer.score(upright), abs=1e-7)
    assert abs(scorer.score(path) - scorer.score(sideways)) > 1e-5
    mixed = scorer.score([path, upright, sideways])
    assert mixed[0] == pytest.approx(mixed[1], abs=1e-6)


def test_errors_name_the_input(scorer, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(natural_image(64, 64)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:300])
    cases = [
        (broken, "broken.jpg: not an image file"),
        (truncated, "truncated.jpg: cannot decode"),
        (tmp_path / "missing.png", "missing.png: no such file"),
        (np.zeros((20, 64, 3), np.uint8), "image is 64x20; QualiCLIP needs at least 32x32"),
        (np.zeros((64, 64, 3), np.float32), "must be uint8"),
        (np.zeros((64, 64, 2), np.uint8), "expected an HxW, HxWx3 or HxWx4 array"),
        (torch.full((3, 64, 64), 2.0), "values must lie in [0, 1]"),
        (torch.zeros(3, 64, 64, dtype=torch.uint8), "must be float"),
        (torch.zeros(1, 64, 64), "expected a 3xHxW or Nx3xHxW"),
        (42, "unsupported input type int"),
    ]
    for image, message in cases:
        with pytest.raises(ImageError) as caught:
            scorer.score(image)
        assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ImageError, match="batch: values must lie"):
        scorer.score(torch.full((2, 3, 64, 64), -1.0))


def test_list_errors_raise_or_become_nan(scorer, tmp_path):
    good = save_image(tmp_path / "good.png", natural_image(64, 64))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    inputs = [good, bad, natural_image(64, 64, 1), np.zeros((8, 8), np.uint8)]
    with pytest.raises(ImageError, match="bad.png"):
        scorer.score(inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = scorer.score(inputs, on_error="nan")
    assert math.isnan(scores[1]) and math.isnan(scores[3])
    assert scores[0] == pytest.approx(scorer.score(good), abs=1e-6)
    assert scores[2] == pytest.approx(scorer.score(inputs[2]), abs=1e-6)
    messages = [str(w.message) for w in caught]
    assert any("bad.png" in m for m in messages) and any("input[3]" in m for m in messages)


def test_truncated_file_found_at_decode_spares_its_batch(scorer, tmp_path):
    """A file whose header reads fine but whose pixels do not: the rest of its batch is still scored."""
    paths = [save_image(tmp_path / f"{i}.jpg", natural_image(64, 64, i), quality=90) for i in range(3)]
    paths[1].write_bytes(paths[1].read_bytes()[:400])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = scorer.score(paths, on_error="nan")
    assert math.isnan(scores[1])
    assert scores[0] == pytest.approx(scorer.score(paths[0]), abs=1e-6)
    assert scores[2] == pytest.approx(scorer.score(paths[2]), abs=1e-6)


def _text_features(tiny_checkpoint, texts):
    from helpers import TINY_CONFIG

    clip = open_clip.CLIP(**TINY_CONFIG).eval()
    clip.load_state_dict(read_checkpoint(tiny_checkpoint)[0])
    with torch.no_grad():
        return clip.encode_text(open_clip.tokenize(texts), normalize=True)


def test_custom_prompts_match_reference(tiny_checkpoint):
    pairs = [("A crisp, clean photo.", "A noisy, blurry photo."), ("Good photo.", "Bad photo.")]
    scorer = QualityScorer(tiny_checkpoint, device="cpu", prompts=pairs)
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    features = _text_features(tiny_checkpoint, [t for pair in pairs for t in pair])
    expected = reference_score(read_checkpoint(tiny_checkpoint)[0], features, images)
    assert torch.allclose(scorer.score(images).double(), expected, atol=1e-5)
    assert scorer.prompts == tuple(pairs) and scorer.model.num_pairs == 2


def test_official_prompts_reencoded_equal_stored_features(tiny_checkpoint):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    stored = QualityScorer(tiny_checkpoint, device="cpu")
    encoded = QualityScorer(tiny_checkpoint, device="cpu", prompts=list(OFFICIAL_PROMPT_PAIRS))
    assert stored.prompts == OFFICIAL_PROMPT_PAIRS
    assert torch.allclose(stored.score(images), encoded.score(images), atol=1e-6)


def test_prompt_features_are_cached_in_memory_and_on_disk(tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("QUALICLIP_INFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prompts_module, "_memory_cache", {})
    calls = []
    real_encode = prompts_module.encode_prompts
    monkeypatch.setattr(prompts_module, "encode_prompts", lambda *a: calls.append(a) or real_encode(*a))
    pairs = [("Sharp.", "Blurry.")]
    first = QualityScorer(tiny_checkpoint, device="cpu", prompts=pairs)
    QualityScorer(tiny_checkpoint, device="cpu", prompts=pairs)
    assert len(calls) == 1
    assert len(list((tmp_path / "cache" / "prompt_features").glob("*.pt"))) == 1

    monkeypatch.setattr(prompts_module, "_memory_cache", {})  # a new process: only the disk cache remains
    from_disk = QualityScorer(tiny_checkpoint, device="cpu", prompts=pairs)
    assert len(calls) == 1
    assert torch.equal(from_disk.model.prompt_features, first.model.prompt_features)

    QualityScorer(tiny_checkpoint, device="cpu", prompts=[("Sharp.", "Blurry!")])
    assert len(calls) == 2  # other strings, other key

    for entry in (tmp_path / "cache" / "prompt_features").glob("*.pt"):
        entry.write_bytes(b"corrupt")
    monkeypatch.setattr(prompts_module, "_memory_cache", {})
    rebuilt = QualityScorer(tiny_checkpoint, device="cpu", prompts=pairs)
    assert len(calls) == 3 and torch.equal(rebuilt.model.prompt_features, first.model.prompt_features)


def test_bad_prompts_are_rejected(tiny_checkpoint):
    for prompts in ([], ["Good photo."], [("Good photo.", "")], "Good photo.", [("a", "b", "c")]):
        with pytest.raises(ValueError, match="prompt"):
            QualityScorer(tiny_checkpoint, device="cpu", prompts=prompts)


def test_logit_scale_50_is_pyiqas_temperature_2(tiny_checkpoint):
    clip_state, stored_features = read_checkpoint(tiny_checkpoint)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    pyiqa_like = QualityScorer(tiny_checkpoint, device="cpu", logit_scale=50).score(images)
    expected = reference_score(clip_state, stored_features, images, logit_scale=100 / 2)
    assert torch.allclose(pyiqa_like.double(), expected, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cpu(tiny_checkpoint, precision):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    exact = QualityScorer(tiny_checkpoint, device="cpu").score(images)
    reduced = QualityScorer(tiny_checkpoint, device="cpu", precision=precision).score(images)
    assert reduced.dtype == torch.float32 and torch.allclose(reduced, exact, atol=0.05)


def test_bad_device_and_precision(tiny_checkpoint):
    with pytest.raises(ValueError, match="precision 'fp8'"):
        QualityScorer(tiny_checkpoint, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="device 'tpu'"):
        QualityScorer(tiny_checkpoint, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            QualityScorer(tiny_checkpoint, device="cuda:0")
    with pytest.raises(ValueError, match="batch_size"):
        QualityScorer(tiny_checkpoint, device="cpu", batch_size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tiny_checkpoint):
    images = torch.rand(3, 3, 96, 64, generator=torch.Generator().manual_seed(5))
    cpu = QualityScorer(tiny_checkpoint, device="cpu").score(images)
    gpu = QualityScorer(tiny_checkpoint, device="cuda").score(images)
    assert torch.allclose(cpu, gpu, atol=1e-4)
    fp16 = QualityScorer(tiny_checkpoint, device="cuda", precision="fp16").score(images.cuda())
    assert torch.allclose(cpu, fp16, atol=0.05)
