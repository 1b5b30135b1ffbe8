"""Reduced precision through the batch core (``BatchRunner.score_tensor`` under autocast), as ``QualityScorer`` users
get it: the convolutions really run in fp16/bf16, the score head in fp32, and the scores move by more than float
rounding while keeping their order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import natural_image

from qualiclip_infer import QualityScorer
from qualiclip_infer.devices import check_precision

REDUCED = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Photos whose fp32 scores lie at least 0.015 apart: bf16 moves the tiny model's scores by up to ~0.008.
SEEDS = (2, 4, 1, 3, 7, 5)


@pytest.fixture(scope="module")
def photos():
    return [natural_image(64 + 16 * (seed % 3), 64, seed=seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def exact(tiny_checkpoint, photos):
    return np.array(QualityScorer(tiny_checkpoint, device="cpu").score(photos))


def _supported(precision: str) -> bool:
    try:
        check_precision(precision, torch.device("cpu"))
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("precision", sorted(REDUCED))
def test_convolutions_run_reduced_and_the_head_in_fp32(tiny_checkpoint, photos, exact, precision, one_thread):
    if not _supported(precision):
        pytest.skip(f"{precision} autocast is not supported on this CPU")
    scorer = QualityScorer(tiny_checkpoint, device="cpu", precision=precision)
    seen, features = [], []
    hooks = [module.register_forward_hook(lambda m, inputs, out: seen.append(out.dtype))
             for module in scorer.model.modules() if isinstance(module, torch.nn.Conv2d)]
    hooks.append(scorer.model.visual.register_forward_hook(lambda m, inputs, out: features.append(out)))
    try:
        scores = np.array(scorer.score(photos))
    finally:
        for hook in hooks:
            hook.remove()
    dtype = REDUCED[precision]
    assert seen and set(seen) == {dtype}  # autocast casts each convolution's fp32 input inside the op
    assert features and all(f.dtype == dtype for f in features)

    # The head in fp32 (or better): its scores equal the head computed in float64 from the reduced features.
    model = scorer.model
    prompts = model.prompt_features.double()
    head = []
    for batch in features:
        f = batch.double()
        f = f / f.norm(dim=-1, keepdim=True)
        logits = model.logit_scale * f @ prompts.T
        head.extend(torch.sigmoid(logits[:, 0::2] - logits[:, 1::2]).mean(dim=1).tolist())
    assert sorted(head) == pytest.approx(sorted(scores.tolist()), abs=1e-6)

    # Not fp32 in disguise: the scores move by far more than float rounding (~1e-7), and keep their order.
    assert np.abs(scores - exact).max() > 1e-5, np.abs(scores - exact)
    assert np.argsort(scores).tolist() == np.argsort(exact).tolist()
