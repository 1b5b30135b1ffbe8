"""qualiclip-infer: fast, exact QualiCLIP no-reference image quality scoring.

Quick start::

    from qualiclip_infer import QualityScorer
    scorer = QualityScorer()            # official weights, downloaded once from the Hugging Face Hub
    scorer.score("photo.jpg")           # float in [0, 1], higher is better
"""

from ._version import __version__
from .images import ImageError
from .model import QualiCLIP
from .prompts import OFFICIAL_PROMPT_PAIRS
from .scorer import QualityScorer, load_model
from .weights import CheckpointError, WeightsNotFoundError, load_checkpoint, resolve_weights, save_checkpoint

__all__ = [
    "QualityScorer",
    "QualiCLIP",
    "load_model",
    "OFFICIAL_PROMPT_PAIRS",
    "ImageError",
    "CheckpointError",
    "WeightsNotFoundError",
    "load_checkpoint",
    "resolve_weights",
    "save_checkpoint",
    "__version__",
]
