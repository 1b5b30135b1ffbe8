"""Building and loading the QualiCLIP network of a preset: weights file, image tower, text features, logit scale.

Where files come from is :mod:`~qualiclip_infer.hub`'s job, reading them :mod:`~qualiclip_infer.checkpoint`'s and
encoding prompts :mod:`~qualiclip_infer.prompts`'; this module puts a network together from them. The facade
(:class:`~qualiclip_infer.scorer.QualityScorer`), the loss and the trainer all load through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .checkpoint import Checkpoint, load_checkpoint
from .hub import WeightsSpec, resolve_weights
from .model import QualiCLIP, fold_batch_norms
from .presets import DEFAULT_MODEL, Preset, PromptPair, get_preset
from .prompts import as_prompt_pairs, learned_prompt_features, prompt_features


class LoadedNetwork(NamedTuple):
    """A loaded network and where it came from.

    Attributes:
        model: The network, on the CPU, in eval mode, without gradients.
        prompts: The prompt pairs its text features stand for; ``None`` when the checkpoint's stored features are
            not those of the preset's pairs.
        weights_path: The local weights file.
    """

    model: QualiCLIP
    prompts: Optional[Tuple[PromptPair, ...]]
    weights_path: Path


def load_model(
    weights: WeightsSpec = None,
    *,
    model: str = DEFAULT_MODEL,
    prompt_weights: WeightsSpec = None,
    prompts: Optional[Sequence[Sequence[str]]] = None,
    logit_scale: Optional[float] = None,
    revision: Optional[str] = None,
    prompt_revision: Optional[str] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    local_files_only: bool = False,
) -> QualiCLIP:
    """Loads the QualiCLIP network (image tower + score head) on the CPU, in eval mode, without gradients.

    It maps CLIP-normalised ``N x 3 x H x W`` tensors to ``(N,)`` scores, like the official torch.hub model.
    Arguments are those of :class:`~qualiclip_infer.scorer.QualityScorer`.
    """
    return load_network(weights, model=model, prompt_weights=prompt_weights, prompts=prompts,
                        logit_scale=logit_scale, revision=revision, prompt_revision=prompt_revision,
                        cache_dir=cache_dir, local_files_only=local_files_only).model


def load_network(
    weights: WeightsSpec = None,
    *,
    model: str = DEFAULT_MODEL,
    prompt_weights: WeightsSpec = None,
    prompts: Optional[Sequence[Sequence[str]]] = None,
    logit_scale: Optional[float] = None,
    revision: Optional[str] = None,
    prompt_revision: Optional[str] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    local_files_only: bool = False,
    fold_into: Optional[torch.memory_format] = None,
) -> LoadedNetwork:
    """:func:`load_model`, also saying which prompts and file it used; optionally with BatchNorms folded.

    With ``fold_into`` set, BatchNorms are folded into the convolutions (:func:`~qualiclip_infer.model.fold_batch_norms`),
    whose weights are written once, in that memory format. Either way every tensor of the model is its own memory,
    not the checkpoint file's, and each is written once: on a CPU the first write of fresh memory costs more than the
    copy.
    """
    preset = get_preset(model)
    custom_pairs = None if prompts is None else as_prompt_pairs(prompts)
    preset.check_options(custom_pairs, prompt_weights, prompt_revision)
    path = resolve_weights(weights, default=preset.weights, revision=revision, cache_dir=cache_dir,
                           local_files_only=local_files_only)
    checkpoint = load_checkpoint(path)
    prompt_file = None
    if preset.prompt_file is not None:
        prompt_file = resolve_weights(prompt_weights, default=preset.prompt_file, revision=prompt_revision,
                                      cache_dir=cache_dir, local_files_only=local_files_only,
                                      option="prompt_weights")
    with torch.device("meta"):
        image_tower = checkpoint.architecture.build_image_tower()
    image_tower.load_state_dict(checkpoint.image_tower_state(), strict=True, assign=True)
    if fold_into is not None:
        fold_batch_norms(image_tower, fold_into)
    _copy_out_of(checkpoint.clip_state.values(), image_tower)
    features, pairs = preset_text_features(preset, checkpoint, custom_pairs, prompt_file)
    scale = preset.logit_scale(checkpoint.stored_logit_scale) if logit_scale is None else logit_scale
    network = QualiCLIP(image_tower, features, scale).eval().requires_grad_(False)
    return LoadedNetwork(network, pairs, path)


def preset_text_features(preset: Preset, checkpoint: Checkpoint, pairs: Optional[Tuple[PromptPair, ...]],
                         prompt_file: Optional[Path],
                         cache_dir: Union[str, os.PathLike, None] = None
                         ) -> Tuple[torch.Tensor, Optional[Tuple[PromptPair, ...]]]:
    """The text features a preset scores against, and the prompt pairs they stand for (``None`` if unknown).

    Args:
        preset: The model preset.
        checkpoint: The weights.
        pairs: Custom prompt pairs replacing the preset's (not for learned prompts), or ``None``.
        prompt_file: The learned-context file, for a preset with learned prompts.
        cache_dir: Prompt-feature cache folder (default :func:`~qualiclip_infer.prompts.prompt_cache_dir`).
    """
    if preset.text_side == "learned":
        return learned_prompt_features(checkpoint, prompt_file, preset.pairs, preset.name, cache_dir), preset.pairs
    if pairs is None and preset.text_side == "encoded":
        pairs = preset.pairs
    features = prompt_features(checkpoint, pairs, cache_dir)
    if pairs is None and features.shape[0] == 2 * len(preset.pairs):
        pairs = preset.pairs
    return features, pairs


def _copy_out_of(file_tensors: Iterable[torch.Tensor], module: nn.Module) -> None:
    """Gives each parameter and buffer of ``module`` that still shares memory with ``file_tensors`` its own copy.

    A memory-mapped checkpoint's tensors read the file itself: one overwritten in place would change (or, truncated,
    crash) a model in use.
    """
    file_memory = {tensor.untyped_storage().data_ptr() for tensor in file_tensors}
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.untyped_storage().data_ptr() in file_memory:
                tensor.data = tensor.data.clone()
