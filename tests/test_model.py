"""Scores equal an independent implementation of the official QualiCLIP forward (reference_qualiclip.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIG, random_clip
from reference_qualiclip import image_features as reference_features
from reference_qualiclip import score as reference_score

from qualiclip_infer import QualityScorer, load_checkpoint, load_model
from qualiclip_infer.model import PositionFreeAttentionPool

SIZES = [(224, 224), (320, 192), (97, 133)]  # square, non-square (W > H), odd


def _images(width: int, height: int, count: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(width * 1000 + height)
    smooth = torch.nn.functional.interpolate(torch.rand(count, 3, 8, 8, generator=generator), (height, width),
                                             mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(count, 3, height, width, generator=generator)).clamp(0, 1)


def _check_against_reference(checkpoint_path, width, height, logit_scales=(100.0,)):
    checkpoint = load_checkpoint(checkpoint_path)
    images = _images(width, height)
    expected_features = reference_features(checkpoint.clip_state, (images - 0.45) / 0.27)
    model = load_model(checkpoint_path)
    with torch.no_grad():
        features = model.encode_image(((images - 0.45) / 0.27).float()).double()
    relative = (features - expected_features).norm(dim=-1) / expected_features.norm(dim=-1)
    assert relative.max() < 1e-5
    for scale in logit_scales:
        scorer = QualityScorer(checkpoint_path, device="cpu", logit_scale=scale)
        expected = reference_score(checkpoint.clip_state, checkpoint.prompt_features, images, scale)
        got = scorer.score(images).double()
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got, expected)
        assert 0.02 < expected.mean() < 0.98  # not saturated, so the comparison has teeth


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
    checkpoint = load_checkpoint(tiny_checkpoint)
    model = load_model(tiny_checkpoint)
    off_norm = type(model)(model.visual, checkpoint.prompt_features * 1.01)
    images = _images(64, 64, 2)
    expected = reference_score(checkpoint.clip_state, checkpoint.prompt_features * 1.01, images)
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
