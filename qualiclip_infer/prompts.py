"""Antonym prompt pairs and their text features, encoded once per checkpoint and cached in memory and on disk."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch

from .weights import Checkpoint

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

_memory_cache: dict[str, torch.Tensor] = {}


def as_prompt_pairs(prompts: Sequence[Sequence[str]]) -> Tuple[PromptPair, ...]:
    """Validates ``(positive, negative)`` string pairs.

    Raises:
        ValueError: Not a non-empty sequence of pairs of non-empty strings.
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of (positive, negative) string pairs")
    pairs = []
    for pair in prompts:
        if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(p, str) and p.strip() for p in pair):
            raise ValueError(f"prompt pair {pair!r} is not a (positive, negative) pair of non-empty strings")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def interleave(pairs: Sequence[PromptPair]) -> list[str]:
    """Flattens pairs into the order of the score head: positive, negative, positive, negative, ..."""
    return [text for pair in pairs for text in pair]


def encode_prompts(checkpoint: Checkpoint, pairs: Sequence[PromptPair]) -> torch.Tensor:
    """Runs CLIP's text tower on the prompts: ``(2P, D)`` L2-normalised features, pairs interleaved.

    The text tower is built and loaded only here, and freed on return.
    """
    import open_clip

    clip = checkpoint.architecture.build_clip()
    clip.load_state_dict(checkpoint.clip_state, strict=True)
    tokens = open_clip.tokenize(interleave(pairs), context_length=checkpoint.architecture.context_length)
    with torch.no_grad():
        return clip.eval().encode_text(tokens, normalize=True).float()


def prompt_cache_dir() -> Path:
    """Folder of the on-disk prompt-feature cache: ``$QUALICLIP_INFER_CACHE``, else the user cache folder."""
    if os.environ.get("QUALICLIP_INFER_CACHE"):
        return Path(os.environ["QUALICLIP_INFER_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qualiclip_infer"


def prompt_features(checkpoint: Checkpoint, pairs: Optional[Sequence[Sequence[str]]] = None,
                    cache_dir: Union[str, os.PathLike, None] = None) -> torch.Tensor:
    """Text features for ``pairs``: those stored in the checkpoint when ``pairs`` is ``None``, else encoded once.

    Encoded features are keyed by the checkpoint file's hash and the exact prompt strings, and kept in memory and
    under ``cache_dir`` (default :func:`prompt_cache_dir`), so the text tower runs once per (weights, prompts).
    """
    if pairs is None:
        return checkpoint.prompt_features
    pairs = as_prompt_pairs(pairs)
    cache_dir = Path(cache_dir or prompt_cache_dir())
    weights = _weights_digest(checkpoint, cache_dir)
    key = hashlib.sha256(json.dumps({"weights": weights, "prompts": pairs}).encode()).hexdigest()
    if key in _memory_cache:
        return _memory_cache[key]
    file = cache_dir / "prompt_features" / f"{key}.pt"
    features = _read_cached(file, pairs, checkpoint.architecture.embed_dim)
    if features is None:
        features = encode_prompts(checkpoint, pairs)
        _write_cached(file, pairs, features)
    _memory_cache[key] = features
    return features


def _weights_digest(checkpoint: Checkpoint, cache_dir: Path) -> str:
    """``checkpoint.sha256()``, remembered under ``cache_dir`` by the file's identity (path, device, inode, size and
    modification time), so that a later process with the same file pays a ``stat`` instead of reading and hashing the
    whole file (400 MB for RN50: a few tenths of a second on every start with custom prompts).
    """
    try:
        info = os.stat(checkpoint.path)
    except OSError:
        return checkpoint.sha256()
    identity = json.dumps([os.path.realpath(checkpoint.path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns])
    memo = cache_dir / "weights_sha256" / hashlib.sha256(identity.encode()).hexdigest()
    try:
        remembered = memo.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        remembered = ""
    if re.fullmatch(r"[0-9a-f]{64}", remembered):
        return remembered
    digest = checkpoint.sha256()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        partial = memo.with_name(f"{memo.name}.{os.getpid()}.partial")
        partial.write_text(digest, encoding="ascii")
        os.replace(partial, memo)
    except OSError:
        pass  # A read-only cache only costs hashing again next time.
    return digest


def _read_cached(file: Path, pairs: Tuple[PromptPair, ...], embed_dim: int) -> Optional[torch.Tensor]:
    try:
        entry = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # A missing or corrupt cache entry is rebuilt, never fatal.
        return None
    valid = (isinstance(entry, Mapping) and [tuple(p) for p in entry.get("prompts", ())] == list(pairs)
             and isinstance(entry.get("features"), torch.Tensor)
             and tuple(entry["features"].shape) == (2 * len(pairs), embed_dim))
    return entry["features"] if valid else None


def _write_cached(file: Path, pairs: Tuple[PromptPair, ...], features: torch.Tensor) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(f"{file.name}.{os.getpid()}.partial")
        torch.save({"prompts": [list(p) for p in pairs], "features": features}, partial)
        os.replace(partial, file)
    except OSError:
        pass  # A read-only cache only costs a re-encode next time.
