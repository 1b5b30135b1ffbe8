"""Reading a CLIP ResNet checkpoint safely (no pickled code) and strictly (every key and shape checked), and writing
one in the official format.

The official file (``QualiCLIP.pth`` in ``chaofengc/IQA-PyTorch-Weights``) is a flat dict of tensors:
``clip_model.<OpenAI CLIP key>`` for every tensor of a CLIP RN50 model, plus ``prompts_features`` ``(14, 1024)``,
the L2-normalised text features of the seven antonym prompt pairs, positive and negative interleaved.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from .atomic import atomic_write
from .hub import file_sha256  # noqa: F401 (this module's API since 0.1)
from .messages import first_line
from .model import ClipArchitecture

CLIP_PREFIX = "clip_model."
PROMPT_FEATURES_KEY = "prompts_features"
# OpenAI's original CLIP files carry these scalars beside the tensors; they are sizes, not weights.
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
_MAX_LISTED_KEYS = 8


class CheckpointError(ValueError):
    """A weights file that is not a QualiCLIP checkpoint in the official format."""


@dataclass(frozen=True)
class Checkpoint:
    """A CLIP ResNet checkpoint, read and checked: QualiCLIP's official format or a plain OpenAI-layout CLIP file.

    Attributes:
        path: The file it was read from.
        clip_state: OpenAI-layout CLIP tensors, keys without the ``clip_model.`` prefix.
        prompt_features: ``(2P, D)`` features of the prompt pairs stored with the weights; ``None`` for a plain
            CLIP file (open_clip's layout of OpenAI's weights), which stores none.
        architecture: Sizes inferred from ``clip_state``.
    """

    path: Path
    clip_state: Mapping[str, torch.Tensor]
    prompt_features: Optional[torch.Tensor]
    architecture: ClipArchitecture
    _digest: dict = field(default_factory=dict, repr=False, compare=False)

    def image_tower_state(self) -> dict[str, torch.Tensor]:
        """The image tower's tensors, keys relative to the tower, in fp32.

        Files saved in fp16/bf16 are widened here: the tower is built in fp32 and autocast chooses precisions. Other
        tensors are the checkpoint's own, not copies: for a ``.pth`` file, views of the memory-mapped file. Copy them
        (``load_state_dict`` without ``assign`` does) before changing them or keeping them for long.
        """
        prefix = "visual."
        return {k[len(prefix):]: v.float() if v.is_floating_point() else v
                for k, v in self.clip_state.items() if k.startswith(prefix)}

    @property
    def stored_logit_scale(self) -> float:
        """``exp(logit_scale)``: the scale CLIP itself (and pyiqa) puts on the cosine similarities."""
        return float(self.clip_state["logit_scale"].double().exp())

    def sha256(self) -> str:
        """SHA-256 of the file, computed once: it keys caches derived from these weights."""
        if "sha256" not in self._digest:
            self._digest["sha256"] = file_sha256(self.path)
        return self._digest["sha256"]


def load_checkpoint(path: Union[str, os.PathLike]) -> Checkpoint:
    """Reads a checkpoint without executing any pickled code and checks every key and shape.

    Two layouts are accepted: QualiCLIP's official one (``clip_model.<OpenAI CLIP key>`` plus ``prompts_features``)
    and a plain OpenAI-layout CLIP state dict with no prefix and no prompt features, as open_clip publishes
    OpenAI's weights on the Hub (``timm/resnet50_clip.openai``).

    Raises:
        CheckpointError: The file is not a checkpoint, or its keys or shapes are not those of either layout; the
            message names the file and the offending keys.
    """
    path = Path(path)
    tensors = _read_tensors(path)
    official = PROMPT_FEATURES_KEY in tensors or any(k.startswith(CLIP_PREFIX) for k in tensors)
    if not official and any(k.startswith("visual.") for k in tensors):
        return _plain_clip_checkpoint(path, tensors)
    if PROMPT_FEATURES_KEY not in tensors:
        found = _listing(sorted(tensors))
        hint = "" if official else f" and no '{CLIP_PREFIX}*' or 'visual.*' CLIP keys (found {found})"
        raise CheckpointError(f"{path}: no '{PROMPT_FEATURES_KEY}' tensor{hint}; not a QualiCLIP checkpoint")
    unexpected = sorted(k for k in tensors if k != PROMPT_FEATURES_KEY and not k.startswith(CLIP_PREFIX))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected keys {_listing(unexpected)} (expected '{CLIP_PREFIX}*' and "
                              f"'{PROMPT_FEATURES_KEY}')")
    clip_state = {k[len(CLIP_PREFIX):]: v for k, v in tensors.items() if k.startswith(CLIP_PREFIX)}
    architecture = _checked_architecture(path, clip_state, CLIP_PREFIX)
    prompt_features = tensors[PROMPT_FEATURES_KEY]
    if (prompt_features.ndim != 2 or prompt_features.shape[0] % 2 or prompt_features.shape[0] == 0
            or prompt_features.shape[1] != architecture.embed_dim):
        raise CheckpointError(f"{path}: '{PROMPT_FEATURES_KEY}' has shape {tuple(prompt_features.shape)}, expected "
                              f"(2P, {architecture.embed_dim}): positive/negative prompt features interleaved")
    return Checkpoint(path, clip_state, prompt_features.float(), architecture)


def _plain_clip_checkpoint(path: Path, tensors: dict[str, torch.Tensor]) -> Checkpoint:
    """An OpenAI-layout CLIP state dict without prefix, as open_clip stores OpenAI's weights."""
    clip_state = dict(tensors)
    return Checkpoint(path, clip_state, None, _checked_architecture(path, clip_state, ""))


def _checked_architecture(path: Path, clip_state: dict[str, torch.Tensor], prefix: str) -> ClipArchitecture:
    for key in _OPENAI_METADATA_KEYS:
        clip_state.pop(key, None)
    try:
        architecture = ClipArchitecture.from_state_dict(clip_state)
    except KeyError as error:
        raise CheckpointError(f"{path}: missing key {prefix}{error.args[0]}; not an OpenAI-layout CLIP "
                              f"ResNet checkpoint") from error
    _check_clip_state(path, clip_state, architecture, prefix)
    return architecture


def save_checkpoint(path: Union[str, os.PathLike], clip_state: Mapping[str, torch.Tensor],
                    prompt_features: torch.Tensor) -> Path:
    """Writes a checkpoint in the official format (atomically: a reader never sees half a file).

    Args:
        path: Destination ``.pth`` file.
        clip_state: OpenAI-layout CLIP tensors (keys without prefix).
        prompt_features: ``(2P, D)`` L2-normalised prompt features, positive/negative interleaved.
    """
    path = Path(path)
    tensors = {CLIP_PREFIX + k: v.detach().cpu().contiguous() for k, v in clip_state.items()}
    tensors[PROMPT_FEATURES_KEY] = prompt_features.detach().float().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save(tensors, f)
    return path


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError as error:
            raise CheckpointError(f"{path}: reading .safetensors files needs the 'safetensors' package "
                                  f"(pip install safetensors)") from error

        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path}: not a safetensors file ({first_line(error)})") from error
    tensors = read_tensor_file(path)
    if isinstance(tensors, torch.Tensor) or (isinstance(tensors, Mapping) and "params" in tensors):
        raise CheckpointError(f"{path}: holds learned prompts ({describe_content(tensors)}), not CLIP weights; "
                              f"pass it as prompt_weights (--prompt-weights)")
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"{path}: holds a {type(tensors).__name__}, not a dict of tensors")
    bad = sorted(str(k) for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {_listing(bad)}")
    return dict(tensors)


def read_tensor_file(path: Union[str, os.PathLike]) -> object:
    """Unpickles a ``.pth`` file that may hold only tensors and plain containers, never code.

    Raises:
        CheckpointError: The file is not a PyTorch file, or it holds anything else than tensors, dicts, lists and
            numbers.
    """
    path = Path(path)
    try:
        # mmap pages in only the tensors that are used: the text tower stays on disk unless needed.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: refused to load: it is not a plain tensor checkpoint "
                              f"({first_line(error)})") from error
    except Exception as error:  # torch.load fails on garbage with almost any exception type
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({first_line(error)})") from error


def describe_content(content: object) -> str:
    """What a loaded file holds, in a few words for error messages: its keys, or its tensor's dtype and shape."""
    if isinstance(content, torch.Tensor):
        return f"one {str(content.dtype).replace('torch.', '')} tensor of shape {tuple(content.shape)}"
    if isinstance(content, Mapping):
        return f"keys {_listing(sorted(map(str, content)))}"
    return f"a {type(content).__name__}"


def _check_clip_state(path: Path, state: dict[str, torch.Tensor], architecture: ClipArchitecture,
                      prefix: str = CLIP_PREFIX) -> None:
    """Completes ``state`` with absent batch counters, then raises on any other missing, extra or misshapen key."""
    expected = architecture.state_shapes()
    # OpenAI's own files lack BatchNorm's batch counters; inference never reads them.
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    wrong_shape = sorted(f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
                         if k in state and tuple(state[k].shape) != expected[k])
    problems = [f"{what} {_listing([prefix + k for k in keys])}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("wrong shapes", wrong_shape)) if keys]
    if problems:
        raise CheckpointError(f"{path}: does not match a CLIP ResNet ({'; '.join(problems)})")


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return f"[{shown}{f', ... {len(keys) - _MAX_LISTED_KEYS} more' if len(keys) > _MAX_LISTED_KEYS else ''}]"
