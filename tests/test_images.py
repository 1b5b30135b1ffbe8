"""Decoding defaults a user relies on: the 48 Mpx per-image limit of the default options, read from the header (no
decode), and EXIF orientations 1-8 in JPEG, PNG, WEBP and TIFF files scored like the upright picture."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import natural_image
from helpers import as_displayed, png_header_only
from PIL import Image

from qualiclip_infer import QualityScorer
from qualiclip_infer.images import ImageError, probe


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return QualityScorer(tiny_checkpoint, device="cpu")  # default options: max_image_pixels included


def test_default_limit_is_48_megapixels_from_the_header(scorer, tmp_path):
    at_limit = png_header_only(tmp_path / "8000x6000.png", 8000, 6000)  # 48,000,000 pixels
    above = png_header_only(tmp_path / "8000x6001.png", 8000, 6001)
    assert probe(at_limit, "at", scorer.max_image_pixels) == (8000, 6000)
    with pytest.raises(ImageError, match="over the limit of 48 Mpx"):
        probe(above, "above", scorer.max_image_pixels)
    row = next(scorer.iter_scores([above]))  # refused from its header: no 48 Mpx decode
    assert (row.score, row.width, row.height) == (None, 8000, 6001)
    assert row.error == ("image is 8000x6001 (48 Mpx), over the limit of 48 Mpx per image "
                         "(max_image_pixels / --max-pixels)")


SAVE_OPTIONS = {
    "JPEG": lambda k: {"exif": _exif(k), "quality": 95},
    "PNG": lambda k: {"exif": _exif(k)},
    "WEBP": lambda k: {"exif": _exif(k), "lossless": True},
    "TIFF": lambda k: {"tiffinfo": {0x0112: k}},
}


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("fmt", sorted(SAVE_OPTIONS))
def test_every_exif_orientation_scores_like_its_upright_twin(scorer, tmp_path, fmt, one_thread):
    stored = natural_image(56, 40, seed=3)  # not square: a turned picture has another size
    files, twins = [], []
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.{fmt.lower()}"
        Image.fromarray(stored).save(path, format=fmt, **SAVE_OPTIONS[fmt](orientation))
        pixels = stored
        if fmt == "JPEG":  # lossy: the twin is what the file holds, read without its orientation
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
        files.append(path)
        twins.append(as_displayed(pixels, orientation))
    results = list(scorer.iter_scores(files))
    assert [r.error for r in results] == [""] * 8
    assert [(r.width, r.height) for r in results] == [(t.shape[1], t.shape[0]) for t in twins]
    assert np.allclose([r.score for r in results], scorer.score(twins), atol=1e-6, rtol=0)
    assert len({round(s, 4) for s in scorer.score(twins)}) > 4  # the orientations give different pictures
