"""Equal-size batching: images equal in width but not in height (or the reverse) never share a batch, in
``engine.group_by_size`` and through ``iter_scores``, whose scores stay those of each image alone."""

from __future__ import annotations

import numpy as np
from helpers import natural_image

from qualiclip_infer import QualityScorer
from qualiclip_infer.engine import group_by_size


def test_sizes_equal_in_one_side_only_are_split():
    sizes = [(64, 48), (64, 56), (64, 48), (48, 64), (56, 64), (64, 56)]
    assert group_by_size(sizes, batch_size=8, max_batch_pixels=10**6) == [[0, 2], [1, 5], [3], [4]]


def test_iter_scores_batches_only_equal_sizes(tiny_checkpoint, monkeypatch, one_thread):
    scorer = QualityScorer(tiny_checkpoint, device="cpu", batch_size=8)
    arrays = [natural_image(w, h, seed) for seed, (w, h) in enumerate([(64, 48), (64, 56), (64, 48), (56, 48)])]
    alone = [scorer.score(a) for a in arrays]
    shapes = []
    real = scorer.score_tensor
    monkeypatch.setattr(scorer, "score_tensor", lambda images: shapes.append(tuple(images.shape)) or real(images))
    results = list(scorer.iter_scores(arrays))
    assert sorted(shapes) == sorted([(2, 3, 48, 64), (1, 3, 56, 64), (1, 3, 48, 56)])
    assert np.allclose([r.score for r in results], alone, atol=1e-6, rtol=0)
    assert [(r.width, r.height) for r in results] == [(64, 48), (64, 56), (64, 48), (56, 48)]
