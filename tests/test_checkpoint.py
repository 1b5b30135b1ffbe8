"""A bfloat16 checkpoint is widened to float32 on load: its network holds float32 tensors and scores exactly like the
same weights saved as float32 (the fp16 case is in tests/test_engine.py)."""

from __future__ import annotations

import numpy as np
import torch
from conftest import natural_image

from qualiclip_infer import QualityScorer


def test_bfloat16_checkpoint_scores_like_its_float32_cast(tiny_checkpoint, tmp_path, one_thread):
    state = torch.load(tiny_checkpoint, weights_only=True)
    narrow = {k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(narrow, tmp_path / "bf16.pth")
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in narrow.items()}, tmp_path / "cast.pth")
    arrays = [natural_image(64, 48, seed) for seed in range(3)]
    scorer = QualityScorer(tmp_path / "bf16.pth", device="cpu")
    dtypes = {t.dtype for t in [*scorer.model.parameters(), *scorer.model.buffers()] if t.is_floating_point()}
    assert dtypes == {torch.float32}
    scores = scorer.score(arrays)
    assert np.allclose(scores, QualityScorer(tmp_path / "cast.pth", device="cpu").score(arrays), atol=1e-6, rtol=0)
    # bf16 rounding of the weights matters: the scores are not those of the original fp32 file.
    original = QualityScorer(tiny_checkpoint, device="cpu").score(arrays)
    assert np.abs(np.array(scores) - original).max() > 1e-4
