"""torch.hub entry points, loaded from this checkout as ``torch.hub.load(<repo dir>, ..., source="local")``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from helpers import natural_image, save_image
from PIL import Image
from reference_qualiclip import score as reference_score
from torchvision.transforms import Normalize, ToTensor

from qualiclip_infer import QualiCLIP, QualityScorer, WeightsNotFoundError, load_model
from qualiclip_infer.model import CLIP_MEAN, CLIP_STD, PositionFreeAttentionPool

REPO = Path(__file__).resolve().parents[1]


def hub_load(entry_point: str, *args, **kwargs):
    return torch.hub.load(str(REPO), entry_point, *args, source="local", trust_repo=True, **kwargs)


def test_dependencies_are_importable_and_importing_hubconf_is_light():
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import hubconf; "
             "print(hubconf.dependencies, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, str(REPO)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['torch', 'open_clip', 'PIL', 'huggingface_hub', 'numpy'] False"
    for name in ("torch", "open_clip", "PIL", "huggingface_hub", "numpy"):
        assert importlib.util.find_spec(name) is not None


def test_qualiclip_is_load_model(tiny_checkpoint):
    model = hub_load("QualiCLIP", weights=tiny_checkpoint)
    assert isinstance(model, QualiCLIP) and not model.training
    images = Normalize(CLIP_MEAN, CLIP_STD)(torch.rand(2, 3, 64, 96))
    scores = model(images)
    assert scores.shape == (2,)
    assert torch.equal(scores, load_model(tiny_checkpoint)(images))


def test_qualiclip_passes_prompts_and_logit_scale(tiny_checkpoint):
    options = dict(weights=tiny_checkpoint, prompts=[("Sharp.", "Blurry.")], logit_scale=50.0)
    model = hub_load("QualiCLIP", **options)
    assert model.num_pairs == 1 and model.logit_scale == 50.0
    images = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(images), load_model(**options)(images))


def test_qualiclip_passes_hub_options():
    with pytest.raises(WeightsNotFoundError, match="offline"):  # the isolated cache is empty
        hub_load("QualiCLIP", revision="main", local_files_only=True)


def test_official_readme_usage(tiny_checkpoint, tmp_path):
    """``model.eval().to(device)``, ``normalize(ToTensor()(img)).unsqueeze(0)``, ``no_grad`` + CUDA autocast."""
    path = save_image(tmp_path / "photo.jpg", natural_image(96, 64, 3))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = hub_load("QualiCLIP", weights=tiny_checkpoint)
    model.eval().to(device)
    normalize = Normalize(mean=CLIP_MEAN, std=CLIP_STD)
    img = normalize(ToTensor()(Image.open(path).convert("RGB"))).unsqueeze(0).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.cuda.amp.autocast is deprecated, and a no-op without CUDA
        with torch.no_grad(), torch.cuda.amp.autocast():
            score = model(img)
    assert score.shape == (1,)
    exact = QualityScorer(tiny_checkpoint, device=device).score(path)
    assert score.item() == pytest.approx(exact, abs=1e-6 if device == "cpu" else 5e-3)  # fp16 under CUDA


def test_untrained_qualiclip_is_rn50_with_random_prompt_features():
    model = hub_load("QualiCLIP", pretrained=False)
    with torch.device("meta"):
        rn50 = open_clip.CLIP(**open_clip.get_model_config("RN50-quickgelu"))
    assert {k: v.shape for k, v in model.visual.state_dict().items()} == {
        k: v.shape for k, v in rn50.visual.state_dict().items()}
    assert isinstance(model.visual.attnpool, PositionFreeAttentionPool)
    assert model.prompt_features.shape == (14, 1024)
    assert torch.allclose(model.prompt_features.norm(dim=1), torch.ones(14))
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = model(model.normalize(images)).double()
    state = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    assert torch.allclose(scores, reference_score(state, model.prompt_features, images), atol=1e-5, rtol=0)
    assert hub_load("QualiCLIP", pretrained=False, logit_scale=50.0).logit_scale == 50.0


def test_untrained_qualiclip_refuses_weights_options(tiny_checkpoint):
    with pytest.raises(TypeError, match="only logit_scale"):
        hub_load("QualiCLIP", pretrained=False, weights=tiny_checkpoint)


def test_qualiclip_scorer(tiny_checkpoint, tmp_path):
    path = save_image(tmp_path / "photo.png", natural_image(64, 80, 4))
    scorer = hub_load("qualiclip_scorer", weights=tiny_checkpoint, device="cpu", batch_size=4)
    assert isinstance(scorer, QualityScorer) and scorer.batch_size == 4
    assert scorer.score(path) == QualityScorer(tiny_checkpoint, device="cpu").score(path)
