"""Fine-tuning QualiCLIP without human scores: synthetic degradations, ranking losses and a training loop.

Quick start::

    from qualiclip_infer.train import TrainConfig, fit
    history = fit(TrainConfig(images="pristine/", out="model.pth"))
    # model.pth is an official-format checkpoint: QualityScorer(weights="model.pth")

The names below are imported on first use, so that importing one submodule (e.g. ``degradations``) does not pull
in the training loop.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "DISTORTIONS": "degradations",
    "DISTORTION_GROUPS": "degradations",
    "NUM_LEVELS": "degradations",
    "degrade": "degradations",
    "degradation_grid": "degradations",
    "LossConfig": "losses",
    "qualiclip_loss": "losses",
    "TrainConfig": "loop",
    "Trainer": "loop",
    "fit": "loop",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
