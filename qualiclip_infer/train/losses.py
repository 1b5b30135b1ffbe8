"""Former name of :mod:`.ranking` (the training objective), kept so that old imports work."""

from .ranking import LossConfig, LossTerms, margin_ranking, prompt_similarities, qualiclip_loss  # noqa: F401
