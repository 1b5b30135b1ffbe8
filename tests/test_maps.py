"""Quality maps: windows cells are crop scores, tokens maps equal an independent computation, PNGs and the CLI."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import natural_image, save_image
from lively_checkpoint import write_lively_checkpoint
from PIL import Image, ImageFont
from reference_qualiclip import MEAN, STD, trunk_features
from reference_qualiclip import score as reference_score

from qualiclip_infer import ImageError, QualityMap, QualityScorer, render_map, save_map
from qualiclip_infer.files import mirrored_paths
from qualiclip_infer.maps import window_starts
from qualiclip_infer.render import colormap_table, upsample

@pytest.fixture(scope="module")
def lively(tmp_path_factory) -> Path:
    return write_lively_checkpoint(tmp_path_factory.mktemp("weights") / "lively.pth")


@pytest.fixture(scope="module")
def scorer(lively) -> QualityScorer:
    return QualityScorer(lively, device="cpu")


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A natural picture whose right half is noisy, so that local quality differs."""
    image = natural_image(width, height, seed).astype(np.float64)
    image[:, width // 2:] += np.random.default_rng(seed).normal(0, 30, image[:, width // 2:].shape)
    return image.clip(0, 255).astype(np.uint8)


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


# ---------------------------------------------------------------------------------------------------------------
# Windows


def test_window_starts_default_photo_and_edge_cases():
    assert window_starts(1024, 224, 112) == [0, 112, 224, 336, 448, 560, 672, 800]  # 16 left over: last moved
    assert window_starts(768, 224, 112) == [0, 112, 224, 336, 448, 544]  # 96 left over: one more window
    assert len(window_starts(1024, 224, 112)) * len(window_starts(768, 224, 112)) == 48
    assert window_starts(448, 224, 112) == [0, 112, 224]
    assert window_starts(224, 224, 112) == window_starts(100, 224, 112) == [0]
    assert window_starts(230, 224, 224) == [0, 6]


def test_window_starts_cover_every_pixel_with_regular_steps():
    for length, window, stride in itertools.product(range(32, 420, 7), (32, 64, 100, 224), (1, 16, 50, 64, 100, 224)):
        if stride > window:
            continue
        starts = window_starts(length, window, stride)
        assert starts[0] == 0 and starts[-1] == max(0, length - window)
        steps = np.diff(starts)
        assert (steps > 0).all() and (steps <= window).all() and (steps <= 1.5 * stride).all()
        assert (steps[:-1] == stride).all()


@pytest.mark.parametrize("width, height, window, stride", [(1024, 768, 224, 112), (200, 141, 64, 40)])
def test_windows_cells_are_the_scores_of_their_crops(scorer, width, height, window, stride, one_thread):
    # With two oneDNN threads, batched and single crops round differently: up to 1.2e-6 measured at 1024x768.
    image = photo(width, height)
    tensor = as_tensor(image)
    result = scorer.quality_map(image, window=window, stride=stride)
    rows, columns = len(window_starts(height, window, stride)), len(window_starts(width, window, stride))
    assert result.values.shape == (rows, columns) and result.boxes.shape == (rows, columns, 4)
    assert result.method == "windows" and result.image_size == (width, height)
    assert result.score == pytest.approx(scorer.score(image), abs=1e-6)
    shifted_differences = []
    for (row, column) in itertools.product(range(rows), range(columns)):
        left, top, right, bottom = result.boxes[row, column].tolist()
        assert (right - left, bottom - top) == (window, window)
        assert abs(result.values[row, column].item() - scorer.score(tensor[:, top:bottom, left:right])) <= 1e-6
        if right < width:
            shifted_differences.append(abs(result.values[row, column].item()
                                           - scorer.score(tensor[:, top:bottom, left + 1:right + 1])))
    # The comparison has teeth: a crop one pixel off scores measurably differently, and cells differ.
    assert max(shifted_differences) > 1e-4
    assert result.values.std() > 0.02


@pytest.mark.parametrize("batch_size, max_batch_pixels, expected",
                         [(4, 10**6, [4, 4, 4]), (16, 5 * 64 * 64, [5, 5, 2])])
def test_windows_share_batches_within_the_scorers_limits(lively, monkeypatch, batch_size, max_batch_pixels, expected):
    scorer = QualityScorer(lively, device="cpu", batch_size=batch_size, max_batch_pixels=max_batch_pixels)
    batches = []
    score_tensor = scorer.score_tensor
    monkeypatch.setattr(scorer, "score_tensor", lambda images: batches.append(images.shape) or score_tensor(images))
    result = scorer.quality_map(photo(200, 141), window=64, stride=40)
    assert result.values.shape == (3, 4)
    assert [shape[0] for shape in batches if shape[-2:] == (64, 64)] == expected
    assert [tuple(shape) for shape in batches if shape[-2:] != (64, 64)] == [(1, 3, 141, 200)]  # the whole image


def test_boxes_cover_the_image_and_align_to_the_border(scorer):
    width, height = 331, 250
    result = scorer.quality_map(photo(width, height), window=96, stride=64)
    covered = np.zeros((height, width), dtype=int)
    for left, top, right, bottom in result.boxes.view(-1, 4).tolist():
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1
    boxes = result.boxes
    assert (boxes[:, 0, 0] == 0).all() and (boxes[0, :, 1] == 0).all()
    assert (boxes[:, -1, 2] == width).all() and (boxes[-1, :, 3] == height).all()
    # A grid: the cells of a column share left and right, those of a row share top and bottom.
    assert (boxes[:, :, [0, 2]] == boxes[:1, :, [0, 2]]).all() and (boxes[:, :, [1, 3]] == boxes[:, :1, [1, 3]]).all()


def test_images_smaller_than_the_window_give_one_cell(scorer):
    image = photo(150, 100)
    result = scorer.quality_map(image)
    assert result.values.shape == (1, 1) and result.boxes.tolist() == [[[0, 0, 150, 100]]]
    assert result.values[0, 0].item() == pytest.approx(scorer.score(image), abs=1e-6)
    assert result.score == pytest.approx(scorer.score(image), abs=1e-6)

    wide = photo(500, 100)  # shorter than the window on one side only: one row of 224 x 100 cells
    result = scorer.quality_map(wide)
    assert result.values.shape == (1, 3)
    assert [box[0] for box in result.boxes[0].tolist()] == [0, 112, 276]
    assert [(box[2] - box[0], box[3] - box[1]) for box in result.boxes[0].tolist()] == [(224, 100)] * 3


def test_every_input_type_gives_the_same_map(scorer, tmp_path):
    image = photo(130, 97)
    path = save_image(tmp_path / "photo.png", image)
    expected = scorer.quality_map(image, window=64, stride=32)
    for given in (path, str(path), Image.fromarray(image), as_tensor(image)):
        result = scorer.quality_map(given, window=64, stride=32)
        assert torch.equal(result.boxes, expected.boxes)
        assert torch.allclose(result.values, expected.values, atol=1e-6)


def test_bad_arguments_and_images(scorer):
    image = photo(64, 64)
    with pytest.raises(ValueError, match="method"):
        scorer.quality_map(image, method="patches")
    with pytest.raises(ValueError, match="window"):
        scorer.quality_map(image, window=16)
    for stride in (0, 225):
        with pytest.raises(ValueError, match="stride"):
            scorer.quality_map(image, stride=stride)
    with pytest.raises(ImageError, match="32x32"):
        scorer.quality_map(photo(40, 20))


def test_the_scorers_pixel_limit_applies(lively):
    limited = QualityScorer(lively, device="cpu", max_image_pixels=100 * 80)
    assert limited.quality_map(photo(100, 80), method="tokens").values.shape == (2, 3)
    for method in ("windows", "tokens"):
        with pytest.raises(ImageError, match="over the limit"):
            limited.quality_map(photo(100, 81), method=method)


# ---------------------------------------------------------------------------------------------------------------
# Tokens


def reference_token_map(checkpoint: Path, images01: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """Per-position scores from the raw checkpoint tensors: trunk, then value and output projections of every
    position, then the per-pair softmax of ``logit_scale * cos``, averaged over pairs."""
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = {k[len("clip_model."):]: v for k, v in raw.items() if k.startswith("clip_model.")}
    trunk = trunk_features(state, (images01.double() - MEAN.double()) / STD.double())  # N, C, h, w
    tokens = trunk.permute(0, 2, 3, 1)
    pool = {name: state[f"visual.attnpool.{name}"].double() for name in
            ("v_proj.weight", "v_proj.bias", "c_proj.weight", "c_proj.bias")}
    values = tokens @ pool["v_proj.weight"].T + pool["v_proj.bias"]
    features = values @ pool["c_proj.weight"].T + pool["c_proj.bias"]
    features = features / features.norm(dim=-1, keepdim=True)
    logits = logit_scale * features @ raw["prompts_features"].double().T  # N, h, w, 2P
    probabilities = logits.view(*logits.shape[:-1], -1, 2).softmax(dim=-1)[..., 0]
    return probabilities.mean(dim=-1)


@pytest.mark.parametrize("width, height", [(224, 224), (320, 192), (161, 97)])  # square, non-square, odd
def test_tokens_map_equals_an_independent_computation(lively, scorer, width, height):
    image = photo(width, height, seed=width)
    result = scorer.quality_map(image, method="tokens")
    tensor = as_tensor(image)[None]
    expected = reference_token_map(lively, tensor)[0]
    assert expected.shape == ((height + 1) // 2 // 16, (width + 1) // 2 // 16)
    assert result.values.shape == expected.shape and result.method == "tokens"
    assert torch.allclose(result.values.double(), expected, atol=1e-5, rtol=0)
    raw = torch.load(lively, weights_only=True)
    clip = {k[len("clip_model."):]: v for k, v in raw.items() if k.startswith("clip_model.")}
    assert result.score == pytest.approx(reference_score(clip, raw["prompts_features"], tensor).item(), abs=1e-5)
    assert expected.std() > 0.02 and 0.05 < expected.mean() < 0.95  # varies and is not saturated: the check bites


def test_tokens_boxes_are_the_32_pixel_grid(scorer):
    result = scorer.quality_map(photo(161, 97), method="tokens")  # grid 5 x 3 (the first convolution rounds up)
    assert result.values.shape == (3, 5)
    assert [box[0] for box in result.boxes[0].tolist()] == [0, 32, 64, 96, 128]
    assert [box[2] for box in result.boxes[0].tolist()] == [32, 64, 96, 128, 161]
    assert [box[1] for box in result.boxes[:, 0].tolist()] == [0, 32, 64]
    assert [box[3] for box in result.boxes[:, 0].tolist()] == [32, 64, 97]


def test_token_scores_share_one_trunk_pass_and_are_pure(scorer):
    model = scorer.model
    images = model.normalize(as_tensor(photo(128, 96))[None].repeat(2, 1, 1, 1))
    images[1] = images[1].flip(-1)
    calls = []
    handle = model.visual.layer4.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            scores, tokens = model.scores_and_token_scores(images)
    finally:
        handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        assert torch.allclose(scores, model(images), atol=1e-6)
        assert torch.equal(tokens, model.token_scores(images))
        single = model.token_scores(images[1:])
    assert tokens.shape == (2, 3, 4) and torch.allclose(tokens[1], single[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def lightness(pixels: np.ndarray) -> np.ndarray:
    """CIE L* (0 black to 100 white) of sRGB uint8 colours: perceived lightness."""
    srgb = pixels.astype(np.float64) / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > 216 / 24389, 116 * np.cbrt(y) - 16, y * 24389 / 27)


def ramp_map(width: int, height: int, columns: int) -> QualityMap:
    """A one-row map rising from 0 to 1 across the image, on a regular grid of cells."""
    edges = np.linspace(0, width, columns + 1).round().astype(int)
    boxes = torch.tensor([[(edges[k], 0, edges[k + 1], height) for k in range(columns)]])
    return QualityMap(torch.linspace(0, 1, columns)[None], boxes, 0.5, "windows", (width, height))


def test_png_is_the_photo_plus_the_legend(scorer, tmp_path):
    image = photo(320, 240)
    result = scorer.quality_map(image, window=96, stride=48)
    save_map(image, result, tmp_path / "map.png")
    with Image.open(tmp_path / "map.png") as png:
        assert png.format == "PNG" and png.mode == "RGB"
        assert png.height == 240 and 320 + 40 < png.width < 320 + 200
        drawn = np.asarray(png)
    # The photo area holds the photo: with the map invisible it is the grey photo.
    plain = np.asarray(render_map(image, result, alpha=0.0))
    grey = np.round(image.astype(np.float64) @ [0.299, 0.587, 0.114])  # BT.601, as Pillow's convert("L")
    assert np.abs(plain[:, :320].astype(int) - grey[..., None]).max() <= 1
    assert not np.array_equal(drawn[:, :320], plain[:, :320])

    tiny = photo(40, 32)
    tall_enough = render_map(tiny, scorer.quality_map(tiny))
    assert tall_enough.width > 40 and tall_enough.height > 32  # the legend needs more room than the photo


def test_colours_rise_monotonically_with_the_map_value():
    table = lightness(colormap_table())
    # Lighter always means better; 8-bit rounding of the colours moves lightness by at most ~0.05.
    assert (np.diff(table) > -0.05).all() and (np.diff(table[::8]) > 0).all() and table[-1] - table[0] > 60
    width, height = 300, 60
    grey = np.full((height, width, 3), 128, np.uint8)
    for alpha in (1.0, 0.6):
        drawn = np.asarray(render_map(grey, ramp_map(width, height, columns=6), alpha=alpha))
        row = lightness(drawn[height // 2, :width])  # cells are 50 pixels wide, their centres at 25, 75, ...
        assert (np.diff(row) > -0.5).all() and (np.diff(row[25:276:25]) > 0).all() and row[-1] - row[0] > 50 * alpha
    # The colour bar in the panel runs from 1 (top, lightest) to 0 (bottom).
    panel = drawn[:, width:]
    colours = {tuple(colour) for colour in colormap_table()}
    in_colour_map = np.array([[tuple(pixel) in colours for pixel in row] for row in panel])
    column = np.argmax(in_colour_map.sum(axis=0))
    bar = lightness(panel[in_colour_map[:, column], column])
    assert len(bar) > height // 2 and bar[0] - bar[-1] > 60 and (np.diff(bar) < 0.05).all()


def test_upsampling_is_linear_between_cell_centres():
    result = QualityMap(torch.tensor([[0.0, 1.0, 0.5]]), torch.tensor([[(0, 0, 100, 50), (50, 0, 150, 50),
                                                                          (100, 0, 200, 50)]]), 0.5, "windows",
                        (200, 50))
    dense = upsample(result, 200, 50)
    assert dense.shape == (50, 200)
    x = np.arange(200) + 0.5
    assert np.allclose(dense[0], np.interp(x, [50, 100, 150], [0.0, 1.0, 0.5]))
    assert np.allclose(dense[0, :50], 0) and np.allclose(dense[:, 99:101], 0.99, atol=0.011)


def test_whole_image_score_is_written():
    grey = np.full((200, 200, 3), 128, np.uint8)
    low, high = ramp_map(200, 200, 4), ramp_map(200, 200, 4)
    high = QualityMap(high.values, high.boxes, 0.987, high.method, high.image_size)
    low = QualityMap(low.values, low.boxes, 0.123, low.method, low.image_size)
    first, second = np.asarray(render_map(grey, low)), np.asarray(render_map(grey, high))
    assert first.shape == second.shape
    changed = np.argwhere((first != second).any(axis=-1))
    assert len(changed) and changed[:, 1].min() >= 200  # only the panel's text differs
    assert changed[:, 0].max() < 200 // 2  # in its header


def test_rendering_without_freetype_uses_the_bitmap_font(monkeypatch):
    original = ImageFont.load_default

    def without_freetype(size=None):
        if size is not None:  # what Pillow raises when built without FreeType
            raise ImportError("The _imagingft C module is not installed")
        return original()

    monkeypatch.setattr(ImageFont, "load_default", without_freetype)
    drawn = render_map(np.full((160, 160, 3), 90, np.uint8), ramp_map(160, 160, 3))
    assert drawn.width > 160 and drawn.height == 160


def test_rendering_checks_sizes(scorer):
    image = photo(100, 80)
    result = scorer.quality_map(image)
    with pytest.raises(ValueError, match="100x80"):
        render_map(photo(80, 100), result)
    with pytest.raises(ValueError, match="alpha"):
        render_map(image, result, alpha=1.5)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def test_mirrored_paths_never_collide():
    inputs = ["a/x.jpg", "b/x.jpg", "x.jpg", "x.png", "X.JPG", "y", "y.png/z.jpg"]
    outputs = mirrored_paths(inputs, "out", ".png")
    assert outputs["a/x.jpg"] == os.path.join("out", "a", "x.jpg.png")
    assert outputs["x.png"] == os.path.join("out", "x.png.png")
    assert outputs["X.JPG"] == os.path.join("out", "X.JPG~2.png")  # x.jpg.png on a case-insensitive disk
    assert outputs["y"] == os.path.join("out", "y~2.png")  # y.png is a folder of another output
    assert len({path.casefold() for path in outputs.values()}) == len(inputs)
    assert mirrored_paths(["p/q/one.jpg", "p/q/two.jpg"], "out", ".png") == {
        "p/q/one.jpg": os.path.join("out", "one.jpg.png"), "p/q/two.jpg": os.path.join("out", "two.jpg.png")}


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qualiclip_infer", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def test_cli_writes_one_map_per_scored_image(lively, tmp_path):
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "b" / "deep").mkdir(parents=True)
    sizes = {"a/x.jpg": (260, 200), "b/x.jpg": (96, 64), "x.jpg": (64, 96), "x.png": (120, 90),
             "b/deep/y.webp": (70, 50)}
    for name, (width, height) in sizes.items():
        save_image(root / name, photo(width, height, seed=width))
    (root / "b" / "broken.jpg").write_bytes((root / "a" / "x.jpg").read_bytes()[:500])
    save_image(root / "small.png", photo(20, 20))
    out = tmp_path / "maps"
    result = cli(root, "--weights", lively, "--maps", out, "-o", tmp_path / "scores.csv")
    assert result.returncode == 1, result.stderr  # two images could not be scored
    assert "quality map" not in result.stderr  # no map was even attempted for them
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    assert written == sorted(f"{name}.png" for name in sizes)
    for name, (width, height) in sizes.items():
        with Image.open(out / f"{name}.png") as png:
            assert png.height >= height and png.width > width
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + len(sizes) + 2


def test_cli_tokens_maps_of_two_folders_and_a_bad_maps_folder(lively, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        save_image(tmp_path / folder / "x.jpg", photo(64, 64))
    result = cli(tmp_path / "a", tmp_path / "b" / "x.jpg", "--weights", lively, "--maps", tmp_path / "out",
                 "--map-method", "tokens")
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "a/x.jpg.png", "b/x.jpg.png"]
    (tmp_path / "file").write_text("")
    result = cli(tmp_path / "a", "--weights", lively, "--maps", tmp_path / "file")
    assert result.returncode == 2 and "not a folder" in result.stderr
