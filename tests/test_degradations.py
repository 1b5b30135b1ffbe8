"""Tests for the synthetic degradation catalogue (qualiclip_infer.train.degradations)."""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import scene_tensor
from PIL import Image

from qualiclip_infer.train.degradations import DISTORTION_GROUPS, DISTORTIONS, NUM_LEVELS, degradation_grid, degrade

RANDOM_TYPES = {
    "motion_blur",
    "color_shift",
    "white_noise",
    "white_noise_ycbcr",
    "impulse_noise",
    "multiplicative_noise",
    "mean_shift",
    "jitter",
    "non_eccentricity_patch",
    "color_block",
}
PILLOW_TYPES = {"jpeg", "jpeg2000"}


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    # The images are tiny: intra-op threads only add overhead, and on a busy machine their spinning can cost 10x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return scene_tensor()


@pytest.fixture(scope="module")
def batch(image: torch.Tensor) -> torch.Tensor:
    # Eight images so that per-image randomness averages out in the severity statistics.
    variants = [image, image.flip(-1), image.flip(-2), image.flip(-1, -2)]
    return torch.stack(variants * 2)


def _seeded(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------------------- statistics


def _laplacian_energy(y: torch.Tensor, x: torch.Tensor) -> float:
    kernel = y.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)
    return F.conv2d(y, kernel, groups=3).pow(2).mean().item()


def _mse(y: torch.Tensor, x: torch.Tensor) -> float:
    return (y - x).pow(2).mean().item()


def _green_mse(y: torch.Tensor, x: torch.Tensor) -> float:
    return (y[:, 1] - x[:, 1]).pow(2).mean().item()


def _residual_variance(y: torch.Tensor, x: torch.Tensor) -> float:
    return (y - x).var().item()


def _chroma(y: torch.Tensor) -> torch.Tensor:
    """Per-pixel RGB vector minus its grey component."""
    return y - y.mean(dim=1, keepdim=True)


def _saturation(y: torch.Tensor, x: torch.Tensor) -> float:
    return _chroma(y).norm(dim=1).mean().item()


def _signed_saturation(y: torch.Tensor, x: torch.Tensor) -> float:
    """Chroma of ``y`` along the original chroma direction: falls through 0 (grey) to negative (complementary hue)."""
    original = _chroma(x)
    norm = original.norm(dim=1)
    along = (_chroma(y) * original).sum(dim=1) / norm.clamp(min=1e-6)
    return along[norm > 0.05].mean().item()


def _chroma_difference(y: torch.Tensor, x: torch.Tensor) -> float:
    return (_chroma(y) - _chroma(x)).norm(dim=1).mean().item()


def _brightness(y: torch.Tensor, x: torch.Tensor) -> float:
    return y.mean().item()


def _mean_shift(y: torch.Tensor, x: torch.Tensor) -> float:
    return (y - x).mean(dim=(1, 2, 3)).abs().mean().item()


def _std(y: torch.Tensor, x: torch.Tensor) -> float:
    return y.std().item()


def _blockiness(y: torch.Tensor, x: torch.Tensor) -> float:
    """Fraction of neighbouring pixel pairs that are identical, i.e. inside one block."""
    same_x = (y[..., 1:] - y[..., :-1]).abs().amax(dim=1) == 0
    same_y = (y[..., 1:, :] - y[..., :-1, :]).abs().amax(dim=1) == 0
    return (same_x.float().mean() + same_y.float().mean()).item() / 2


Statistic = Callable[[torch.Tensor, torch.Tensor], float]
RISES, FALLS = 1, -1

# Per type: statistics that must move strictly in one direction from the original through levels 1..5. Pixelate is
# measured by blockiness, not high-frequency energy: its block edges add Laplacian energy as the blocks grow.
SEVERITY: Dict[str, List[Tuple[Statistic, int]]] = {
    "gaussian_blur": [(_laplacian_energy, FALLS)],
    "lens_blur": [(_laplacian_energy, FALLS)],
    "motion_blur": [(_laplacian_energy, FALLS)],
    "color_diffusion": [(_chroma_difference, RISES)],
    "color_shift": [(_green_mse, RISES)],
    "color_saturation_hsv": [(_signed_saturation, FALLS)],
    "color_saturation_lab": [(_saturation, RISES), (_mse, RISES)],
    "jpeg2000": [(_mse, RISES)],
    "jpeg": [(_mse, RISES)],
    "white_noise": [(_residual_variance, RISES)],
    "white_noise_ycbcr": [(_residual_variance, RISES)],
    "impulse_noise": [(_residual_variance, RISES)],
    "multiplicative_noise": [(_residual_variance, RISES)],
    "brighten": [(_brightness, RISES)],
    "darken": [(_brightness, FALLS)],
    "mean_shift": [(_mean_shift, RISES)],
    "jitter": [(_mse, RISES)],
    "non_eccentricity_patch": [(_mse, RISES)],
    "pixelate": [(_blockiness, RISES)],
    "quantization": [(_mse, RISES)],
    "color_block": [(_mse, RISES)],
    "sharpen": [(_laplacian_energy, RISES)],
    "contrast_change": [(_std, FALLS)],
    "nonlinear_contrast": [(_std, FALLS)],
}


# ----------------------------------------------------------------------------------------- catalogue


def test_catalogue_structure() -> None:
    assert len(DISTORTIONS) == 24 and len(set(DISTORTIONS)) == 24
    assert NUM_LEVELS == 5
    assert len(DISTORTION_GROUPS) == 7
    assert tuple(name for names in DISTORTION_GROUPS.values() for name in names) == DISTORTIONS
    assert set(SEVERITY) == set(DISTORTIONS)
    assert RANDOM_TYPES <= set(DISTORTIONS) and PILLOW_TYPES <= set(DISTORTIONS)


@pytest.mark.parametrize("name", DISTORTIONS)
def test_preserves_shape_dtype_device_range_and_input(name: str, batch: torch.Tensor) -> None:
    original = batch.clone()
    for level in range(1, NUM_LEVELS + 1):
        out = degrade(batch, name, level, _seeded(0))
        assert out.shape == batch.shape and out.dtype == batch.dtype and out.device == batch.device
        assert out.data_ptr() != batch.data_ptr()
        assert torch.isfinite(out).all()
        assert not torch.equal(out, batch), f"{name} level {level} changed nothing"
    assert torch.equal(batch, original), f"{name} modified its input"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", DISTORTIONS)
def test_other_float_dtypes(name: str, dtype: torch.dtype, image: torch.Tensor) -> None:
    x = image[None, :, :48, :64].to(dtype)
    out = degrade(x, name, 3, _seeded(0))
    assert out.dtype == dtype and out.shape == x.shape
    reference = degrade(x.float(), name, 3, _seeded(0))
    assert torch.allclose(out.float(), reference, atol=0.02 if dtype == torch.float64 else 0.05)


@pytest.mark.parametrize("name", DISTORTIONS)
def test_determinism(name: str, batch: torch.Tensor) -> None:
    first = degrade(batch, name, 3, _seeded(1))
    assert torch.equal(first, degrade(batch, name, 3, _seeded(1)))
    other_seed = degrade(batch, name, 3, _seeded(2))
    if name in RANDOM_TYPES:
        assert not torch.equal(first, other_seed)
    else:
        assert torch.equal(first, other_seed)
    # Without a generator the global RNG is used, so seeding it reproduces the output too.
    torch.manual_seed(5)
    global_first = degrade(batch, name, 3)
    torch.manual_seed(5)
    assert torch.equal(global_first, degrade(batch, name, 3))


@pytest.mark.parametrize("name", sorted(set(DISTORTIONS) - RANDOM_TYPES))
def test_images_are_degraded_independently(name: str, batch: torch.Tensor) -> None:
    together = degrade(batch[:4], name, 4)
    for i in range(4):
        alone = degrade(batch[i : i + 1], name, 4)[0]
        assert torch.allclose(together[i], alone, atol=1e-5)


@pytest.mark.parametrize("name", DISTORTIONS)
def test_severity_is_monotone(name: str, batch: torch.Tensor) -> None:
    outputs = [batch] + [degrade(batch, name, level, _seeded(0)) for level in range(1, NUM_LEVELS + 1)]
    for statistic, direction in SEVERITY[name]:
        values = np.array([statistic(out, batch) for out in outputs]) * direction
        steps = np.diff(values)
        assert (steps > 0).all(), f"{name}: {statistic.__name__} by level 0..5 is not monotone: {values * direction}"
        # Level 1 must be a real change, not a rounding error next to level 5.
        assert steps[0] > 1e-3 * (values[-1] - values[0]), f"{name}: level 1 barely differs from the original"


def test_mean_shift_sign_is_random_per_image(batch: torch.Tensor) -> None:
    shift = (degrade(batch, "mean_shift", 1, _seeded(0)) - batch).mean(dim=(1, 2, 3))
    assert (shift > 0).any() and (shift < 0).any()


def test_motion_blur_angle_is_random_per_image(image: torch.Tensor) -> None:
    same = image[None].repeat(4, 1, 1, 1)
    out = degrade(same, "motion_blur", 5, _seeded(0))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[2], out[3])


@pytest.mark.parametrize("name", ["white_noise", "multiplicative_noise", "sharpen", "brighten"])
def test_values_beyond_the_range_are_clipped_to_it(name: str, image: torch.Tensor) -> None:
    # Each of these pushes some of the test image's values past 0 or 1 at level 5: they land exactly on the bound.
    out = degrade(image[None], name, 5, _seeded(0))
    at_bounds = float(((out == 0) | (out == 1)).double().mean())
    assert at_bounds > 1e-3, at_bounds
    assert out.min() == 0 or out.max() == 1
    assert out.min() >= 0 and out.max() <= 1


def test_small_images(image: torch.Tensor) -> None:
    tiny = image[None, :, :7, :9]
    for name in DISTORTIONS:
        out = degrade(tiny, name, 5, _seeded(0))
        assert out.shape == tiny.shape and torch.isfinite(out).all(), name


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "gaussian"}, "unknown degradation"),
        ({"name": "GAUSSIAN_BLUR"}, "unknown degradation"),
        ({"level": 0}, "level"),
        ({"level": 6}, "level"),
        ({"level": 2.0}, "level"),
        ({"level": True}, "level"),
        ({"images": torch.rand(3, 16, 16)}, "shape"),
        ({"images": torch.rand(2, 1, 16, 16)}, "shape"),
        ({"images": torch.rand(2, 4, 16, 16)}, "shape"),
        ({"images": torch.rand(2, 3, 0, 16)}, "shape"),
        ({"images": torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)}, "floating-point"),
        ({"images": torch.zeros(2, 3, 16, 16, dtype=torch.int64)}, "floating-point"),
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    arguments = {"images": torch.rand(2, 3, 16, 16), "name": "gaussian_blur", "level": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        degrade(**arguments)


def test_level_accepts_integer_like_values(image: torch.Tensor) -> None:
    x = image[None]
    expected = degrade(x, "jpeg", 2)
    assert torch.equal(degrade(x, "jpeg", np.int64(2)), expected)
    assert torch.equal(degrade(x, "jpeg", torch.tensor(2)), expected)


# ----------------------------------------------------------------------------------------- devices


@pytest.mark.parametrize("name", sorted(set(DISTORTIONS) - PILLOW_TYPES))
def test_no_tensor_is_created_on_the_cpu(name: str) -> None:
    # Meta tensors have no data, and most ops refuse to mix them with CPU tensors: a cheap device check without a GPU.
    x = torch.empty(2, 3, 40, 48, device="meta")
    out = degrade(x, name, 5)
    assert out.device.type == "meta" and out.shape == x.shape


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", DISTORTIONS)
def test_cuda(name: str, batch: torch.Tensor) -> None:
    x = batch.cuda()
    out = degrade(x, name, 4, _seeded(0, "cuda"))
    assert out.device == x.device and out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(out, degrade(x, name, 4, _seeded(0, "cuda")))
    if name not in RANDOM_TYPES:
        assert torch.allclose(out.cpu(), degrade(batch, name, 4), atol=2e-3)


# ----------------------------------------------------------------------------------------- grid


def test_degradation_grid_layout(image: torch.Tensor) -> None:
    tile = 32
    grid = degradation_grid(image, tile=tile)
    assert isinstance(grid, Image.Image) and grid.mode == "RGB"
    label_width = grid.width - NUM_LEVELS * tile
    header = grid.height - len(DISTORTIONS) * tile
    assert 40 < label_width < 300, "a label column wide enough for the type names"
    assert 0 < header < 40, "a header row for the level numbers"
    pixels = np.asarray(grid)
    assert pixels[:header, label_width:].min() < 128, "level numbers are drawn"
    for row in range(len(DISTORTIONS)):
        top = header + row * tile
        assert pixels[top : top + tile, :label_width].min() < 128, f"row {row} has its label"


def test_degradation_grid_tiles_are_degraded_crops(image: torch.Tensor) -> None:
    tile = 32
    square = image[:, 10 : 10 + tile, 20 : 20 + tile]  # already tile x tile: resizing and cropping keep it as is
    names = ("white_noise", "jpeg", "pixelate")
    grid = np.asarray(degradation_grid(square, names=names, tile=tile, seed=3))
    label_width = grid.shape[1] - NUM_LEVELS * tile
    header = grid.shape[0] - len(names) * tile
    for row, name in enumerate(names):
        for level in range(1, NUM_LEVELS + 1):
            expected = degrade(square[None], name, level, _seeded(3))[0]
            expected = (expected * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            top, left = header + row * tile, label_width + (level - 1) * tile
            drawn = grid[top : top + tile, left : left + tile].astype(int)
            assert np.abs(drawn - expected).max() <= 1, f"{name} level {level}"


def test_degradation_grid_resizes_and_crops(image: torch.Tensor) -> None:
    grid = degradation_grid(image, names=["quantization"], tile=40)
    assert grid.height - 40 > 0 and (grid.width - NUM_LEVELS * 40) > 0
    with pytest.raises(ValueError):
        degradation_grid(image[None], tile=40)
    with pytest.raises(ValueError):
        degradation_grid((image * 255).to(torch.uint8), tile=40)
    with pytest.raises(ValueError):
        degradation_grid(image, names=["blur"], tile=40)


def test_degradation_grid_degrades_at_the_crop_size_then_shrinks_to_the_tile(image: torch.Tensor) -> None:
    crop, tile = 96, 40
    square = image[:, :crop, 16 : 16 + crop]  # already crop x crop: resizing and cropping keep it as is
    names = ("jpeg2000", "pixelate", "white_noise")
    grid = np.asarray(degradation_grid(square, names=names, tile=tile, seed=3, crop_size=crop))
    label_width = grid.shape[1] - NUM_LEVELS * tile
    header = grid.shape[0] - len(names) * tile
    for row, name in enumerate(names):
        for level in range(1, NUM_LEVELS + 1):
            degraded = degrade(square[None], name, level, _seeded(3))
            expected = F.interpolate(degraded, size=(tile, tile), mode="bilinear", antialias=True, align_corners=False)
            expected = (expected[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            top, left = header + row * tile, label_width + (level - 1) * tile
            drawn = grid[top : top + tile, left : left + tile].astype(int)
            assert np.abs(drawn - expected).max() <= 1, f"{name} level {level}"


def test_small_tiles_show_what_a_training_crop_sees(image: torch.Tensor) -> None:
    """JPEG2000 at level 5 on a 224-pixel crop, shrunk to 48, keeps the picture; degraded at 48 it is mush."""
    big = F.interpolate(image[None], size=(224, 224), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    tile = 48

    def level5_tile(crop_size: int) -> np.ndarray:
        grid = np.asarray(degradation_grid(big, names=["jpeg2000"], tile=tile, crop_size=crop_size)).astype(float)
        return grid[-tile:, -tile:]  # the last column: level 5

    shrunk = F.interpolate(big[None], size=(tile, tile), mode="bilinear", antialias=True, align_corners=False)[0]
    clean = (shrunk.permute(1, 2, 0).numpy() * 255).round()
    error_at_crop, error_at_tile = (np.abs(level5_tile(size) - clean).mean() for size in (224, tile))
    print(f"mean error of the level-5 tile: {error_at_crop:.1f} degraded at 224, {error_at_tile:.1f} at {tile}")
    assert error_at_crop < error_at_tile / 2
