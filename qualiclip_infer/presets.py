"""The QualiCLIP family by name (torch-free, so that the commands list it in ``--help`` at once): which files each model needs, where its text features come from, its logit scale.

``qualiclip`` is the official model. The others are the published variants pyiqa offers, computed as pyiqa does
(no pyiqa code is used): QualiCLIP+ keeps QualiCLIP's image tower and swaps the stored prompt features for prompts
whose context was learned on a MOS dataset; CLIP-IQA scores with stock OpenAI CLIP RN50, and CLIP-IQA+ adds a
learned context to its prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Literal, Optional, Tuple

from .constants import OFFICIAL_LOGIT_SCALE
from .hub import DEFAULT_REPO_ID, HubFile

DEFAULT_MODEL = "qualiclip"

PromptPair = Tuple[str, str]

# The pairs QualiCLIP was trained with, positive first; their features ship inside the checkpoint.
OFFICIAL_PROMPT_PAIRS: Tuple[PromptPair, ...] = (
    ("Good photo.", "Bad photo."),
    ("Sharp image.", "Blurry image."),
    ("Sharp edges.", "Blurry edges."),
    ("High-resolution image.", "Low-resolution image."),
    ("Noise-free image.", "Noisy image."),
    ("High-quality image.", "Low-quality image."),
    ("Good picture.", "Bad picture."),
)

QUALICLIP_FILE = HubFile(DEFAULT_REPO_ID, "QualiCLIP.pth")
# open_clip's own `pretrained` table names this repository for RN50 / openai; open_clip prefers the safetensors
# file over the pickled one beside it, and so do we (nothing to unpickle).
OPENAI_RN50_FILE = HubFile("timm/resnet50_clip.openai", "open_clip_model.safetensors")

# pyiqa's `clipiqa` pairs (its re-implementation ensembles five; the CLIP-IQA paper itself uses one).
CLIPIQA_PROMPT_PAIRS: Tuple[PromptPair, ...] = (
    ("Good image", "bad image"),
    ("Sharp image", "blurry image"),
    ("sharp edges", "blurry edges"),
    ("High resolution image", "low resolution image"),
    ("Noise-free image", "noisy image"),
)
# CLIP-IQA+ was trained with these words between its learned context halves; the doubled period is the official
# code's, kept because the learned context was fitted around it.
CLIPIQA_PLUS_PROMPT_PAIRS: Tuple[PromptPair, ...] = (("Good photo..", "Bad photo.."),)

TextSide = Literal["stored", "encoded", "learned"]


@dataclass(frozen=True)
class Preset:
    """One named model.

    Attributes:
        name: What users pass as ``model``.
        purpose: One line saying what the model is for (the "for" column of the table in docs/presets.md).
        weights: Default Hub file of the CLIP weights (image tower, and the text tower the text side is
            computed with once).
        text_side: ``stored``: the features saved in the weights file; ``encoded``: ``pairs`` run through the
            frozen text tower; ``learned``: ``pairs`` wrapped in the learned context of ``prompt_file``.
        pairs: The prompt texts, positive first.
        prompt_file: Default Hub file of the learned context (``learned`` only).
        temperature: The logit scale is ``exp(logit_scale) / temperature`` with the weights file's stored
            ``logit_scale``, as pyiqa computes it; ``None`` keeps the official model's fixed scale of 100.
    """

    name: str
    purpose: str
    weights: HubFile
    text_side: TextSide
    pairs: Tuple[PromptPair, ...]
    prompt_file: Optional[HubFile] = None
    temperature: Optional[float] = None

    def check_options(self, prompts: Optional[Tuple[PromptPair, ...]], prompt_weights: object,
                      prompt_revision: Optional[str]) -> None:
        """Rejects options this model cannot honour, before anything is downloaded.

        Raises:
            ValueError: Custom prompts for learned prompts (their context was fitted to the preset's words), or a
                prompt file for a model without learned prompts.
        """
        if self.text_side == "learned" and prompts is not None:
            raise ValueError(f"model {self.name!r} scores with learned prompts; custom prompts apply to "
                             f"'qualiclip' and 'clipiqa' only")
        if self.prompt_file is None and (prompt_weights is not None or prompt_revision is not None):
            raise ValueError(f"model {self.name!r} has no learned prompts; prompt_weights and prompt_revision apply "
                             f"to {', '.join(name for name, p in PRESETS.items() if p.prompt_file)} only")

    def logit_scale(self, stored_logit_scale: float) -> float:
        """The scale of the cosine similarities for this model, given the weights file's ``exp(logit_scale)``."""
        if self.temperature is None:
            return OFFICIAL_LOGIT_SCALE
        return stored_logit_scale / self.temperature


def _qualiclip_plus(dataset: str, label: str) -> Preset:
    return Preset(f"qualiclip+{dataset}", f"QualiCLIP's image tower with prompts learned on {label} MOS",
                  QUALICLIP_FILE, "learned", OFFICIAL_PROMPT_PAIRS,
                  HubFile(DEFAULT_REPO_ID, f"QualiCLIP+_{dataset}.pth"), temperature=2.0)


PRESETS: Dict[str, Preset] = {preset.name: preset for preset in (
    Preset("qualiclip", "the official QualiCLIP model (opinion-unaware)", QUALICLIP_FILE, "stored",
           OFFICIAL_PROMPT_PAIRS),
    _qualiclip_plus("koniq", "KonIQ-10k"),
    _qualiclip_plus("clive", "LIVE-in-the-Wild (CLIVE)"),
    _qualiclip_plus("flive", "FLIVE"),
    _qualiclip_plus("spaq", "SPAQ"),
    Preset("clipiqa", "CLIP-IQA: stock OpenAI CLIP RN50 with antonym prompts (zero-shot)", OPENAI_RN50_FILE,
           "encoded", CLIPIQA_PROMPT_PAIRS, temperature=1.0),
    Preset("clipiqa+", "CLIP-IQA+: OpenAI CLIP RN50 with a prompt context learned on KonIQ-10k MOS",
           OPENAI_RN50_FILE, "learned", CLIPIQA_PLUS_PROMPT_PAIRS,
           HubFile(DEFAULT_REPO_ID, "CLIP-IQA+_learned_prompts-603f3273.pth"), temperature=1.0),
)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: No such preset; the message lists the names.
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"model {name!r}: expected one of {', '.join(PRESETS)}") from None
