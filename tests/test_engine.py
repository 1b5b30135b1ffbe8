"""The scoring engine: mixed inputs equal ``score_tensor``, input order, streaming, failure isolation, header probes
that decode nothing, pixel limits, out-of-memory retries, the fp32 head, half-precision checkpoints, a fuzzer."""

from __future__ import annotations

import io
import itertools
import math
import random
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from helpers import natural_image, save_image
from PIL import Image, ImageFile

from qualiclip_infer import QualityScorer
from qualiclip_infer.engine import PROBE_WINDOW, ScoreResult, iter_scores
from qualiclip_infer.images import ImageError, probe


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return QualityScorer(tiny_checkpoint, device="cpu", batch_size=3)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_mixed_inputs_equal_score_tensor_in_input_order(scorer, tmp_path):
    sizes = [(64, 48), (96, 64), (64, 48), (40, 90), (64, 48), (96, 64), (64, 48), (33, 200)]
    arrays = [natural_image(w, h, seed) for seed, (w, h) in enumerate(sizes)]
    expected = [float(scorer.score_tensor(_tensor(a)[None])[0]) for a in arrays]
    assert len(set(np.round(expected, 6))) == len(expected)  # distinct, so a swapped row would show
    path = save_image(tmp_path / "p.png", arrays[0])
    inputs = [path, _png_bytes(arrays[1]), Image.fromarray(arrays[2]), arrays[3], _tensor(arrays[4]),
              str(save_image(tmp_path / "q.png", arrays[5])), bytearray(_png_bytes(arrays[6])),
              memoryview(_png_bytes(arrays[7]))]
    results = list(scorer.iter_scores(inputs, workers=2))
    assert [r.index for r in results] == list(range(len(inputs)))
    assert [r.name for r in results] == [str(path), "input[1]", "input[2]", "input[3]", "input[4]",
                                         str(tmp_path / "q.png"), "input[6]", "input[7]"]
    assert [(r.width, r.height) for r in results] == sizes
    assert all(r.ok and r.error == "" for r in results)
    assert np.allclose([r.score for r in results], expected, atol=1e-6, rtol=0)
    assert np.allclose(scorer.score(inputs), expected, atol=1e-6, rtol=0)
    named = list(scorer.iter_scores(inputs[:2], names=["first", "second"]))
    assert [r.name for r in named] == ["first", "second"]


def test_failures_are_confined_to_their_input(scorer, tmp_path):
    good = natural_image(64, 48)
    broken = tmp_path / "broken.png"
    broken.write_bytes(_png_bytes(good)[:120])
    inputs = [good, broken, b"not an image", natural_image(20, 80), 42, tmp_path / "missing.jpg", good]
    results = list(scorer.iter_scores(inputs))
    assert [r.ok for r in results] == [True, False, False, False, False, False, True]
    assert results[0].score == pytest.approx(results[6].score, abs=1e-7)
    errors = [r.error for r in results]
    assert "cannot decode" in errors[1] or "truncated" in errors[1]
    assert errors[2] == "not an image file Pillow can read"
    assert errors[3] == "image is 20x80; QualiCLIP needs at least 32x32 pixels"
    assert errors[4].startswith("unsupported input type int") and errors[5] == "no such file"
    assert (results[3].width, results[3].height) == (20, 80)
    assert all("\n" not in e for e in errors)


def test_unexpected_pillow_exception_becomes_nan_with_a_warning(scorer, tmp_path, monkeypatch):
    paths = [save_image(tmp_path / f"{i}.png", natural_image(64, 48, i)) for i in range(3)]
    real_open = Image.open

    def flaky_open(fp, *args, **kwargs):
        if str(fp).endswith("1.png"):
            raise ZeroDivisionError("a plugin bug")
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", flaky_open)
    with pytest.warns(UserWarning, match=r"1\.png: cannot decode: a plugin bug"):
        scores = scorer.score(paths, on_error="nan")
    assert math.isnan(scores[1]) and not math.isnan(scores[0]) and not math.isnan(scores[2])
    with pytest.raises(ImageError, match=r"1\.png: cannot decode: a plugin bug"):
        scorer.score(paths)


def test_inputs_are_consumed_a_window_at_a_time(scorer):
    pulled = 0

    def inputs():
        nonlocal pulled
        for seed in itertools.count():
            pulled += 1
            yield torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed))

    stream = scorer.iter_scores(itertools.islice(inputs(), 5 * PROBE_WINDOW))
    first = next(stream)
    assert first.index == 0 and first.ok
    assert pulled <= 2 * PROBE_WINDOW  # a generator over millions of files is never drained up front
    stream.close()


def test_pixel_limit_refuses_large_images_and_names_size_and_limit(tiny_checkpoint, tmp_path):
    scorer = QualityScorer(tiny_checkpoint, device="cpu", max_image_pixels=64 * 64)
    small, large = natural_image(64, 64), natural_image(65, 64)
    path = save_image(tmp_path / "large.png", large)
    results = list(scorer.iter_scores([small, path, large]))
    assert [r.ok for r in results] == [True, False, False]
    assert results[1].error == ("image is 65x64 (0.00416 Mpx), over the limit of 0.0041 Mpx per image "
                                "(max_image_pixels / --max-pixels)")
    assert (results[1].width, results[1].height) == (65, 64)
    with pytest.raises(ImageError, match="over the limit"):
        scorer.score(torch.rand(2, 3, 64, 65))
    unlimited = QualityScorer(tiny_checkpoint, device="cpu", max_image_pixels=None)
    expected = float(unlimited.score_tensor(torch.from_numpy(large).permute(2, 0, 1)[None].float() / 255)[0])
    assert unlimited.score(large) == pytest.approx(expected, abs=1e-6)


def test_out_of_memory_batch_is_retried_image_by_image(scorer, monkeypatch):
    arrays = [natural_image(64, 48, seed) for seed in range(3)] + [natural_image(96, 64, 9)]
    expected = [float(scorer.score_tensor(_tensor(a)[None])[0]) for a in arrays]
    real = scorer.score_tensor
    calls = []

    def score_tensor(images):
        calls.append(tuple(images.shape))
        if images.shape[0] > 1 or images.shape[-1] == 96:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(images)

    monkeypatch.setattr(scorer, "score_tensor", score_tensor)
    results = list(iter_scores(scorer, arrays))
    assert calls[0] == (3, 3, 48, 64) and calls.count((1, 3, 48, 64)) == 3
    assert np.allclose([r.score for r in results[:3]], expected[:3], atol=1e-6, rtol=0)
    assert results[3].score is None
    assert results[3].error.startswith("out of memory scoring a 96x64 image on its own: CUDA out of memory")


# ---------------------------------------------------------------------------------------------------------------
# Header probe: sizes and orientation without decoding pixels


def _png_with_exif_after_data(array: np.ndarray, orientation: int) -> bytes:
    """A PNG whose eXIf chunk follows the image data, where Pillow only sees it after decoding."""
    data = _png_bytes(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + chunk + data[iend:]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP", "PNG-late-exif"])
def test_probe_reads_orientation_without_decoding(fmt, tmp_path, monkeypatch):
    array = natural_image(80, 48)
    path = tmp_path / f"image.{fmt.lower()}"
    if fmt == "PNG-late-exif":
        path.write_bytes(_png_with_exif_after_data(array, orientation=6))
        transposed = True
    else:
        exif = Image.Exif()
        exif[0x0112] = 6
        transposes = fmt in ("JPEG", "PNG", "WEBP", "TIFF")  # GIF and BMP carry no EXIF
        options = {"tiffinfo": {0x0112: 6}} if fmt == "TIFF" else {"exif": exif} if transposes else {}
        Image.fromarray(array).save(path, format=fmt, **options)
        transposed = transposes
    loads = []
    for cls in (Image.Image, ImageFile.ImageFile):
        original = cls.load
        monkeypatch.setattr(cls, "load", lambda self, _original=original: loads.append(1) or _original(self))
    size = probe(path, str(path))
    assert loads == []
    assert size == ((48, 80) if transposed else (80, 48))
    monkeypatch.undo()
    with Image.open(path) as img:  # and the decoder agrees once it does decode
        from PIL import ImageOps
        assert ImageOps.exif_transpose(img).size == size


# ---------------------------------------------------------------------------------------------------------------
# Numerics


def test_head_runs_in_fp32_under_autocast(scorer):
    images = torch.stack([_tensor(natural_image(64, 64, seed)) for seed in range(3)])
    for dtype in (torch.bfloat16, torch.float16):
        captured = {}
        handle = scorer.model.visual.register_forward_hook(lambda m, i, out: captured.update(features=out))
        try:
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
                scores = scorer.model(scorer.model.normalize(images).contiguous(memory_format=torch.channels_last))
        finally:
            handle.remove()
        assert captured["features"].dtype == dtype  # the trunk did run in reduced precision
        assert scores.dtype == torch.float32
        features = captured["features"].double()
        features = features / features.norm(dim=-1, keepdim=True)
        logits = scorer.model.logit_scale * features @ scorer.model.prompt_features.double().T
        reference = torch.sigmoid(logits[:, 0::2] - logits[:, 1::2]).mean(dim=1)
        assert torch.allclose(scores.double(), reference, atol=1e-6, rtol=0)


def test_half_precision_checkpoint_scores_like_its_fp32_cast(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(half, tmp_path / "half.pth")
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in half.items()}, tmp_path / "cast.pth")
    arrays = [natural_image(64, 48, seed) for seed in range(3)]
    half_scores = QualityScorer(tmp_path / "half.pth", device="cpu").score(arrays, on_error="raise")
    cast_scores = QualityScorer(tmp_path / "cast.pth", device="cpu").score(arrays)
    assert np.allclose(half_scores, cast_scores, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Fuzzing: no input can crash a run


def _fuzzed_files(folder, count: int, seed: int):
    rng = random.Random(seed)
    array = natural_image(48, 40, seed)
    originals = {}
    for fmt, suffix in (("JPEG", ".jpg"), ("PNG", ".png"), ("GIF", ".gif"), ("TIFF", ".tif"), ("WEBP", ".webp"),
                        ("BMP", ".bmp")):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt)
        originals[suffix] = buffer.getvalue()
    paths = []
    for number in range(count):
        suffix = rng.choice(sorted(originals))
        data = bytearray(originals[suffix])
        if rng.random() < 0.5:
            data = data[:rng.randrange(0, len(data))]
        for _ in range(rng.randrange(1, 8)):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path = folder / f"fuzz{number:03d}{suffix}"
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths


def test_fuzzed_files_each_get_a_result(scorer, tmp_path):
    paths = _fuzzed_files(tmp_path, 300, seed=0)
    with np.errstate(all="ignore"):
        results = list(scorer.iter_scores(paths))
    assert [r.index for r in results] == list(range(len(paths)))
    assert all(isinstance(r, ScoreResult) and (r.ok or r.error) and "\n" not in r.error for r in results)
    assert any(not r.ok for r in results) and any(r.ok for r in results)


def test_cli_survives_fuzzed_files(tiny_checkpoint, tmp_path):
    folder = tmp_path / "fuzz"
    folder.mkdir()
    paths = _fuzzed_files(folder, 200, seed=1)
    paths.append(save_image(folder / "large.png", natural_image(120, 100)))  # over --max-pixels 0.01 (10,000 px)
    out = tmp_path / "rows.csv"
    process = subprocess.run([sys.executable, "-m", "qualiclip_infer", str(folder), "--weights", str(tiny_checkpoint),
                              "--device", "cpu", "-o", str(out), "-q", "--max-pixels", "0.01"],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr
    import csv
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["path"] for row in rows) == sorted(map(str, paths))
    assert all(row["score"] or row["error"] for row in rows)
    large = next(row for row in rows if row["path"].endswith("large.png"))
    assert (large["score"], large["width"], large["height"]) == ("", "120", "100")
    assert large["error"] == "image is 120x100 (0.012 Mpx), over the limit of 0.01 Mpx per image (max_image_pixels / --max-pixels)"
