"""qualiclip-infer: fast, exact QualiCLIP no-reference image quality scoring.

Quick start::

    from qualiclip_infer import QualityScorer
    scorer = QualityScorer()            # official weights, downloaded once from the Hugging Face Hub
    scorer.score("photo.jpg")           # float in [0, 1], higher is better
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__

if TYPE_CHECKING:
    from .allocator import keep_freed_memory
    from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from .eval import evaluate, read_mos
    from .hub import WeightsNotFoundError, resolve_weights
    from .images import ImageError
    from .loading import load_model
    from .loss import QualiCLIPLoss
    from .maps import QualityMap
    from .model import QualiCLIP
    from .presets import OFFICIAL_PROMPT_PAIRS, PRESETS
    from .ray_scoring import score_dataset
    from .render import render_map, save_map
    from .scorer import QualityScorer

# Public names and their submodules, imported on first use so that importing the package, e.g. for
# `qualiclip-score --help`, does not pay for torch and open_clip (several seconds).
_EXPORTS = {
    "QualityScorer": "scorer",
    "QualiCLIP": "model",
    "load_model": "loading",
    "OFFICIAL_PROMPT_PAIRS": "presets",
    "PRESETS": "presets",
    "ImageError": "images",
    "CheckpointError": "checkpoint",
    "WeightsNotFoundError": "hub",
    "load_checkpoint": "checkpoint",
    "resolve_weights": "hub",
    "save_checkpoint": "checkpoint",
    "score_dataset": "ray_scoring",
    "evaluate": "eval",
    "read_mos": "eval",
    "QualityMap": "maps",
    "save_map": "render",
    "render_map": "render",
    "QualiCLIPLoss": "loss",
    "keep_freed_memory": "allocator",
}

__all__ = [*_EXPORTS, "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
