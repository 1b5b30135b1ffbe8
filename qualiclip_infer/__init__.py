"""qualiclip-infer: fast, exact QualiCLIP no-reference image quality scoring.

Quick start::

    from qualiclip_infer import QualityScorer
    scorer = QualityScorer()            # official weights, downloaded once from the Hugging Face Hub
    scorer.score("photo.jpg")           # float in [0, 1], higher is better
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .images import ImageError
    from .loss import QualiCLIPLoss
    from .maps import QualityMap
    from .model import QualiCLIP
    from .presets import PRESETS
    from .distributed import score_dataset
    from .prompts import OFFICIAL_PROMPT_PAIRS
    from .render import render_map, save_map
    from .scorer import QualityScorer, load_model
    from .weights import CheckpointError, WeightsNotFoundError, load_checkpoint, resolve_weights, save_checkpoint
    from .eval import evaluate, read_mos

# Public names and their submodules. They are imported on first use (PEP 562) so that importing the package,
# e.g. for `qualiclip-score --help`, does not pay for torch and open_clip (several seconds).
_EXPORTS = {
    "QualityScorer": "scorer",
    "QualiCLIP": "model",
    "load_model": "scorer",
    "OFFICIAL_PROMPT_PAIRS": "prompts",
    "PRESETS": "presets",
    "ImageError": "images",
    "CheckpointError": "weights",
    "WeightsNotFoundError": "weights",
    "load_checkpoint": "weights",
    "resolve_weights": "weights",
    "save_checkpoint": "weights",
    "score_dataset": "distributed",
    "evaluate": "eval",
    "read_mos": "eval",
    "QualityMap": "maps",
    "save_map": "render",
    "render_map": "render",
    "QualiCLIPLoss": "loss",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted({*globals(), *_EXPORTS})
