"""QualiCLIP's three margin ranking losses over image-prompt cosine similarities (the training objective; the
differentiable quality loss for other models is :mod:`qualiclip_infer.loss`).

Similarities are laid out ``B x C x L x P``: sample, crop (two overlapping crops per sample), degradation level
(index 0 the mildest) and antonym prompt pair. With ``MR(a, b, m) = max(0, m - (a - b))``:

* ``L_pos``: for each crop, every pair of levels ``i < k`` pays ``MR(s_pos[i], s_pos[k], m_pos)``: the milder crop
  must be more similar to the positive prompt by at least ``m_pos``.
* ``L_neg``: likewise ``MR(s_neg[k], s_neg[i], m_neg)``: the more degraded crop must be more similar to the
  negative prompt.
* ``L_cons``: at each level and for both prompts of each pair, the two crops pay
  ``max(0, |s[crop 1] - s[crop 2]| - m_cons)``: equally degraded views of one picture should look equally good.

The paper writes these as sums; here each is the *mean* of its terms (over crops, level pairs or levels, prompt
pairs and samples), so the scale of a loss, and with it the meaning of the weights and learning rate, does not
change with the number of levels, prompt pairs or the batch size.

The margins and weights are not published. Our defaults assume CLIP RN50 features: image-text cosines lie within a
few tenths of each other, and the score multiplies cosine differences by 100, so a margin of 0.01 between adjacent
levels moves each pair's logit ``100 (s_pos - s_neg)`` by at least 2 per level (1 from each prompt), i.e. a clear
but not saturating step of the sigmoid. The consistency tolerance is half that step: two crops of one picture may
differ, but by less than one level does.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F

from .config import LossConfig


class LossTerms(NamedTuple):
    """The weighted total and the three unweighted losses, each a scalar tensor."""

    total: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    cons: torch.Tensor


def prompt_similarities(features: torch.Tensor, prompt_features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities of image features to the positive and to the negative prompt of every pair.

    Args:
        features: ``... x D`` image features, not necessarily normalised.
        prompt_features: ``2P x D`` prompt features, rows ``2k``/``2k+1`` the positive/negative prompt of pair ``k``.

    Returns:
        ``(s_pos, s_neg)``, each ``... x P``, in float32.
    """
    similarities = F.normalize(features.float(), dim=-1) @ F.normalize(prompt_features.float(), dim=-1).T
    return similarities[..., 0::2], similarities[..., 1::2]


def margin_ranking(higher: torch.Tensor, lower: torch.Tensor, margin: float) -> torch.Tensor:
    """``MR(a, b, m) = max(0, m - (a - b))``, elementwise: zero once ``higher`` exceeds ``lower`` by ``margin``."""
    return (margin - (higher - lower)).clamp(min=0)


def _level_pairs(similarities: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Similarities at levels ``i`` and ``k`` for every ``i < k``: two ``B x C x L(L-1)/2 x P`` tensors."""
    milder, stronger = torch.triu_indices(similarities.shape[2], similarities.shape[2], offset=1,
                                          device=similarities.device)
    return similarities[:, :, milder], similarities[:, :, stronger]


def qualiclip_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, config: LossConfig = LossConfig()) -> LossTerms:
    """The QualiCLIP training loss: weighted sum of the mean ``L_pos``, ``L_neg`` and ``L_cons``.

    Args:
        s_pos: ``B x C x L x P`` similarities to the positive prompts; level index 0 is the mildest.
        s_neg: The same for the negative prompts.
        config: Margins and weights.

    Returns:
        The total and the three terms, each the mean over its hinge terms (see the module docstring).

    Raises:
        ValueError: Shapes differ, are not 4-D, or give no level pair (``L < 2``) or no crop pair (``C != 2``).
    """
    if s_pos.shape != s_neg.shape or s_pos.ndim != 4:
        raise ValueError(f"s_pos and s_neg must both be B x C x L x P, got {tuple(s_pos.shape)} and "
                         f"{tuple(s_neg.shape)}")
    if s_pos.shape[1] != 2 or s_pos.shape[2] < 2:
        raise ValueError(f"need 2 crops and at least 2 levels, got {s_pos.shape[1]} crops and {s_pos.shape[2]} levels")
    pos_milder, pos_stronger = _level_pairs(s_pos)
    neg_milder, neg_stronger = _level_pairs(s_neg)
    loss_pos = margin_ranking(pos_milder, pos_stronger, config.margin_pos).mean()
    loss_neg = margin_ranking(neg_stronger, neg_milder, config.margin_neg).mean()
    crop_gap = torch.stack([s_pos[:, 0] - s_pos[:, 1], s_neg[:, 0] - s_neg[:, 1]]).abs()
    loss_cons = (crop_gap - config.margin_cons).clamp(min=0).mean()
    total = config.weight_pos * loss_pos + config.weight_neg * loss_neg + config.weight_cons * loss_cons
    return LossTerms(total, loss_pos, loss_neg, loss_cons)
