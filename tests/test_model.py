"""Scores equal an independent implementation of the official QualiCLIP forward (reference_qualiclip.py)."""

from __future__ import annotations

import open_clip
import pytest
import torch
from helpers import RN50_CONFIG, TINY_CONFIG, natural_image, random_clip
from reference_qualiclip import image_features as reference_features
from reference_qualiclip import pair_probabilities as reference_pair_probabilities
from reference_qualiclip import read_checkpoint
from reference_qualiclip import score as reference_score

from qualiclip_infer import QualityScorer, load_checkpoint, load_model
from qualiclip_infer.model import ClipArchitecture, PositionFreeAttentionPool

SIZES = [(224, 224), (320, 192), (97, 133)]  # square, non-square (W > H), odd
TOLERANCE = 1e-5  # scores against the float64 reference


def _images(width: int, height: int, count: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(width * 1000 + height)
    smooth = torch.nn.functional.interpolate(torch.rand(count, 3, 8, 8, generator=generator), (height, width),
                                             mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(count, 3, height, width, generator=generator)).clamp(0, 1)


def _test_images() -> list:
    """The pictures the tests score: this module's, conftest's natural images, uniform noise."""
    natural = [torch.from_numpy(natural_image(w, h, seed)).permute(2, 0, 1)[None].float() / 255
               for seed, (w, h) in enumerate([(64, 64), (96, 72), (224, 224), (80, 64), (64, 48)])]
    noise = [torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) for seed in range(5)]
    return [_images(w, h) for w, h in SIZES] + natural + noise


def _check_against_reference(checkpoint_path, width, height, logit_scales=(100.0,)):
    clip_state, stored_features = read_checkpoint(checkpoint_path)
    images = _images(width, height)
    expected_features = reference_features(clip_state, (images - 0.45) / 0.27)
    # The network's math, in float64: exact up to float64 rounding. (In float32 a full-size RN50 whose features vary
    # over the image, as the fixture's do, accumulates ~1e-4 relative error over its 16 blocks; scores, below, stay
    # within the tolerance.)
    model = load_model(checkpoint_path).double()
    with torch.no_grad():
        features = model.encode_image(((images - 0.45) / 0.27).double())
    relative = (features - expected_features).norm(dim=-1) / expected_features.norm(dim=-1)
    assert relative.max() < 1e-10
    for scale in logit_scales:
        scorer = QualityScorer(checkpoint_path, device="cpu", logit_scale=scale)
        expected = reference_score(clip_state, stored_features, images, scale)
        got = scorer.score(images).double()
        assert torch.allclose(got, expected, atol=TOLERANCE, rtol=0), (got, expected)


@pytest.mark.parametrize("width, height", SIZES)
def test_tiny_model_matches_reference(tiny_checkpoint, width, height):
    _check_against_reference(tiny_checkpoint, width, height, logit_scales=(100.0, 50.0, 7.0))


@pytest.mark.slow
@pytest.mark.parametrize("width, height", SIZES)
def test_full_rn50_matches_reference(rn50_checkpoint, width, height):
    _check_against_reference(rn50_checkpoint, width, height)


def test_pool_equals_full_attention_without_positions():
    """The folded single-query pool equals torch's multi-head attention over all tokens, token 0 read."""
    torch.manual_seed(0)
    pool = PositionFreeAttentionPool(grid=7, embed_dim=128, num_heads=4, output_dim=16).eval()
    for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
        torch.nn.init.normal_(linear.bias, std=0.5)
    pool.positional_embedding.data.normal_()
    x = torch.randn(3, 128, 5, 9)
    tokens = x.flatten(2).permute(2, 0, 1)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens])
    expected, _ = torch.nn.functional.multi_head_attention_forward(
        query=tokens, key=tokens, value=tokens, embed_dim_to_check=128, num_heads=4,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False)
    with torch.no_grad():
        assert torch.allclose(pool(x), expected[0], atol=1e-5)


def test_everything_moves_with_to(tiny_checkpoint):
    """Every tensor the forward needs is a parameter or buffer: on the meta device, nothing stays behind."""
    model = load_model(tiny_checkpoint).to("meta")
    assert all(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert model(torch.zeros(2, 3, 64, 96, device="meta")).shape == (2,)


def test_forward_is_pure_and_official_shaped(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    images = _images(64, 64, 3)
    first, second = model(model.normalize(images)), model(model.normalize(images))
    assert first.shape == (3,) and torch.equal(first, second)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


class _UniformAttentionPool(torch.nn.Module):
    """The pool with every token weighted equally: what the model computes if its attention is lost."""

    def __init__(self, pool: PositionFreeAttentionPool):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool.c_proj(self.pool.v_proj(x.flatten(2).mean(dim=2)))


@pytest.mark.parametrize("width, height", SIZES)
def test_uniform_attention_misses_the_reference_by_far(tiny_checkpoint, width, height):
    """Guards the fixture: attention matters, so a pool that lost it cannot pass the reference comparison."""
    clip_state, stored_features = read_checkpoint(tiny_checkpoint)
    images = _images(width, height)
    expected = reference_score(clip_state, stored_features, images)
    model = load_model(tiny_checkpoint)
    model.visual.attnpool = _UniformAttentionPool(model.visual.attnpool)
    with torch.no_grad():
        uniform = model(model.normalize(images)).double()
    assert (uniform - expected).abs().max() > 100 * TOLERANCE


def test_no_prompt_pair_is_saturated_on_the_test_images(tiny_checkpoint):
    """Guards the fixture: every pair's probability lies in (0.05, 0.95), so every pair moves the scores."""
    clip_state, stored_features = read_checkpoint(tiny_checkpoint)
    for images in _test_images():
        probabilities = reference_pair_probabilities(clip_state, stored_features, images)
        assert probabilities.shape == (len(images), 7)
        assert 0.05 < probabilities.min() and probabilities.max() < 0.95, (tuple(images.shape), probabilities)


def test_trunk_matches_open_clips_modified_resnet():
    """Our ModifiedResNet has open_clip's (OpenAI's) module names, tensors and outputs."""
    clip = random_clip(TINY_CONFIG, 5)
    reference = clip.visual
    state = {k[len("visual."):]: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    tower = ClipArchitecture.from_state_dict(clip.state_dict()).build_image_tower()
    tower.load_state_dict(state, strict=True)
    tower.eval()
    assert [name for name, _ in tower.named_modules()] == [name for name, _ in reference.named_modules()]
    images = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(reference.stem(images)))))
        trunk = tower.layer4(tower.layer3(tower.layer2(tower.layer1(
            tower.avgpool(tower.act3(tower.bn3(tower.conv3(tower.act2(tower.bn2(tower.conv2(
                tower.act1(tower.bn1(tower.conv1(images))))))))))))))
    assert expected.shape == (2, 256, 3, 5)
    assert (trunk - expected).abs().max() <= 1e-6 * expected.abs().max()


@pytest.mark.parametrize("config", [TINY_CONFIG, RN50_CONFIG], ids=["tiny", "rn50"])
def test_state_shapes_are_open_clips(config):
    """The key and shape table that checks checkpoints equals open_clip's CLIP state dict, text tower included."""
    with torch.device("meta"):
        clip = open_clip.CLIP(**config)
    expected = {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    assert ClipArchitecture.from_state_dict(clip.state_dict()).state_shapes() == expected


def test_official_pair_order(tiny_checkpoint):
    """Swapping positive and negative of every pair turns each score s into 1 - s."""
    checkpoint = load_checkpoint(tiny_checkpoint)
    model = load_model(tiny_checkpoint)
    swapped = type(model)(model.visual, checkpoint.prompt_features.view(7, 2, -1).flip(1).reshape(14, -1))
    images = model.normalize(_images(64, 80, 2))
    with torch.no_grad():
        assert torch.allclose(model(images) + swapped(images), torch.ones(2), atol=1e-6)


def test_stored_prompt_features_are_used_as_stored(tiny_checkpoint):
    """The official model does not re-normalise the checkpoint's features; neither may we."""
    clip_state, stored_features = read_checkpoint(tiny_checkpoint)
    model = load_model(tiny_checkpoint)
    off_norm = type(model)(model.visual, stored_features * 1.01)
    images = _images(64, 64, 2)
    expected = reference_score(clip_state, stored_features * 1.01, images)
    with torch.no_grad():
        got = off_norm(off_norm.normalize(images)).double()
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, model(model.normalize(images)).double(), atol=1e-4)


def test_bad_prompt_feature_shapes(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    with pytest.raises(ValueError, match=r"\(2P, D\)"):
        type(model)(model.visual, torch.zeros(3, 32))


def test_random_clip_differs_from_checkpoint_used(tiny_checkpoint):
    """Guards the fixture: a different seed gives different weights, so matching the reference means something."""
    other = random_clip(TINY_CONFIG, 99).state_dict()["visual.conv1.weight"]
    assert not torch.equal(other, load_checkpoint(tiny_checkpoint).clip_state["visual.conv1.weight"])
