"""``QualiCLIPLoss``: exact gradients to the pixels, a frozen network in any mode, batches, autocast, the example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import natural_image, save_image
from lively_checkpoint import write_lively_checkpoint
from reference_qualiclip import score as reference_score

import qualiclip_infer
from qualiclip_infer import QualiCLIPLoss, QualityScorer, load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lively(tmp_path_factory) -> Path:
    return write_lively_checkpoint(tmp_path_factory.mktemp("weights") / "lively.pth")


def pictures(count: int, width: int, height: int, noise: float = 0.0) -> torch.Tensor:
    images = torch.stack([torch.from_numpy(natural_image(width, height, seed)).permute(2, 0, 1) for seed in
                          range(count)]).float() / 255
    generator = torch.Generator().manual_seed(count)
    return (images + noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def raw_checkpoint(path: Path):
    raw = torch.load(path, weights_only=True)
    return {k[len("clip_model."):]: v for k, v in raw.items() if k.startswith("clip_model.")}, raw["prompts_features"]


def test_gradcheck_in_float64(lively):
    """Analytic gradients equal finite differences for a block of pixels of one image in a batch of two: through the
    score head, the pool, the trunk (BatchNorms included) and the normalisation; none leak to the other image."""
    loss_fn = QualiCLIPLoss(lively, reduction="none").double()
    base = pictures(2, 35, 33).double()  # odd sizes

    def losses(patch: torch.Tensor) -> torch.Tensor:
        images = base.clone()
        images[1, :, 14:19, 15:21] = patch
        return loss_fn(images)

    patch = base[1, :, 14:19, 15:21].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(losses, (patch,), eps=1e-6, atol=1e-8, rtol=1e-5)
    gradient, = torch.autograd.grad(losses(patch)[1], patch)
    assert gradient.abs().max() > 1e-3  # the check compared real, non-zero gradients


def test_loss_is_one_minus_the_official_score_and_batches_average(lively):
    images = pictures(3, 64, 48, noise=0.05)
    clip, prompts = raw_checkpoint(lively)
    expected = 1 - reference_score(clip, prompts, images)
    assert expected.std() > 0.01  # distinct images, distinct losses
    per_image = QualiCLIPLoss(lively, reduction="none")(images)
    assert per_image.shape == (3,) and torch.allclose(per_image.double(), expected, atol=1e-5)
    assert torch.allclose(per_image, 1 - QualityScorer(lively, device="cpu").score(images), atol=1e-5)
    single = torch.stack([QualiCLIPLoss(lively)(image[None]) for image in images])
    assert torch.allclose(QualiCLIPLoss(lively)(images), single.mean(), atol=1e-6)
    assert torch.allclose(QualiCLIPLoss(lively, reduction="sum")(images), single.sum(), atol=1e-6)


def test_network_stays_frozen_and_in_eval_mode_inside_a_model_in_train_mode(lively):
    class Restorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.quality = QualiCLIPLoss(lively)

        def forward(self, images):
            return self.quality(torch.sigmoid(self.conv(images)))

    model = Restorer().train()
    batch_norms = [m for m in model.quality.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batch_norms and model.quality.training and not any(m.training for m in model.quality.model.modules())
    before = {k: v.clone() for k, v in model.quality.state_dict().items()}
    model(pictures(2, 64, 64)).backward()
    after = model.quality.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics and counters untouched
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.quality.parameters())
    assert model.eval() is model and not model.quality.training


def test_thirty_adam_steps_raise_the_score_of_a_noisy_picture(lively):
    loss_fn = QualiCLIPLoss(lively)
    noisy = pictures(1, 96, 80, noise=0.15)
    pixels = noisy.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=0.01)
    for _ in range(30):
        optimizer.zero_grad()
        loss_fn(pixels).backward()
        optimizer.step()
        with torch.no_grad():
            pixels.clamp_(0, 1)
    scorer = QualityScorer(lively, device="cpu")
    assert scorer.score(pixels.detach()).item() > scorer.score(noisy).item() + 0.1


def test_autocast_runs_the_head_in_float32(lively):
    loss_fn = QualiCLIPLoss(lively, reduction="none")
    images = pictures(2, 64, 64).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = loss_fn(images)
        features = loss_fn.model.encode_image(loss_fn.model.normalize(images))
    assert features.dtype == torch.bfloat16 and losses.dtype == torch.float32
    # The score head of the bf16 features, in float32 outside autocast: the same numbers, not bf16-rounded ones.
    assert torch.allclose(losses, 1 - loss_fn.model.score_features(features.float()), atol=1e-6)
    losses.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert torch.allclose(losses, loss_fn(images), atol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_fp16_autocast(lively):
    loss_fn = QualiCLIPLoss(lively).to("cuda")
    images = pictures(2, 96, 64).cuda().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = loss_fn(images)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert loss.item() == pytest.approx(QualiCLIPLoss(lively)(images.detach().cpu()).item(), abs=0.02)


def test_model_options_reach_the_network(lively):
    images = pictures(2, 64, 64, noise=0.05)
    for options in (dict(logit_scale=20.0), dict(model="clipiqa")):
        network = load_model(lively, **options)
        expected = 1 - network(network.normalize(images))
        assert torch.allclose(QualiCLIPLoss(lively, reduction="none", **options)(images), expected, atol=1e-6)
        assert not torch.allclose(QualiCLIPLoss(lively, reduction="none")(images), expected, atol=1e-3)


def test_bad_inputs(lively):
    loss_fn = QualiCLIPLoss(lively)
    for bad, message in [(torch.rand(3, 64, 64), "N x 3 x H x W"), (torch.rand(1, 1, 64, 64), "N x 3 x H x W"),
                         (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float"), (torch.rand(1, 3, 31, 64), "32x32")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            loss_fn(bad)
    with pytest.raises(ValueError, match="reduction"):
        QualiCLIPLoss(lively, reduction="max")


def test_exported_and_on_torch_hub(lively):
    assert "QualiCLIPLoss" in qualiclip_infer.__all__ and qualiclip_infer.QualiCLIPLoss is QualiCLIPLoss
    hub_loss = torch.hub.load(str(REPO), "qualiclip_loss", weights=lively, reduction="sum", source="local",
                              trust_repo=True)
    images = pictures(2, 64, 64)
    assert isinstance(hub_loss, QualiCLIPLoss)
    assert torch.equal(hub_loss(images), QualiCLIPLoss(lively, reduction="sum")(images))


def test_example_script_improves_a_degraded_picture(lively, tmp_path):
    photo = save_image(tmp_path / "photo.jpg", natural_image(96, 72, 5))
    result = subprocess.run([sys.executable, str(REPO / "examples" / "improve_with_qualiclip_loss.py"), str(photo),
                             str(tmp_path / "improved.png"), "--weights", str(lively), "--steps", "30",
                             "--lr", "0.01"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    before, after = map(float, re.search(r"score before ([\d.]+)\s+after ([\d.]+)", result.stdout).groups())
    assert after > before + 0.05
    improved = QualityScorer(lively, device="cpu").score(tmp_path / "improved.png")
    assert improved == pytest.approx(after, abs=0.01)  # what was written is what was scored (8-bit rounding aside)
