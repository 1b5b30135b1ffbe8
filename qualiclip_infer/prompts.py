"""Text features of antonym prompt pairs, encoded once per checkpoint and cached in memory and on disk.

Besides plain prompt strings, this module encodes *learned* prompts (QualiCLIP+, CLIP-IQA+): each prompt's own
tokens sit between two halves of a learned context of word embeddings, in this order: the start token, the first
half of the context, the prompt's tokens, the second half, then the end token and padding. The text feature is the
text tower's output at the end token, projected, as for any CLIP prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write, write_text_atomically
from .checkpoint import Checkpoint, CheckpointError, describe_content, file_sha256, read_tensor_file
from .presets import PromptPair

if TYPE_CHECKING:
    from open_clip import CLIP

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


def build_text_tower(checkpoint: Checkpoint) -> CLIP:
    """open_clip's CLIP with the checkpoint's weights, for its frozen text tower; callers free it after use."""
    clip = checkpoint.architecture.build_clip()
    clip.load_state_dict(checkpoint.clip_state, strict=True)
    return clip.eval().requires_grad_(False)


def encode_prompts(checkpoint: Checkpoint, pairs: Sequence[PromptPair]) -> torch.Tensor:
    """Runs CLIP's text tower on the prompts: ``(2P, D)`` L2-normalised features, pairs interleaved.

    The text tower is built and loaded only here, and freed on return.
    """
    import open_clip

    clip = build_text_tower(checkpoint)
    tokens = open_clip.tokenize(interleave(pairs), context_length=checkpoint.architecture.context_length)
    with torch.no_grad():
        return clip.encode_text(tokens, normalize=True).float()


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

    Raises:
        CheckpointError: ``pairs`` is ``None`` but the checkpoint stores no prompt features (a plain CLIP file).
    """
    if pairs is None:
        if checkpoint.prompt_features is None:
            raise CheckpointError(f"{checkpoint.path}: stores no prompt features (a plain CLIP file, not a QualiCLIP "
                                  f"checkpoint); pass prompts, or use model='clipiqa'")
        return checkpoint.prompt_features
    pairs = as_prompt_pairs(pairs)
    key = {"weights": _weights_digest(checkpoint, cache_dir), "prompts": pairs}
    return _cached(key, pairs, checkpoint.architecture.embed_dim, cache_dir, lambda: encode_prompts(checkpoint, pairs))


def _cached(key: dict, pairs: Tuple[PromptPair, ...], embed_dim: int, cache_dir: Union[str, os.PathLike, None],
            encode: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Features from the memory cache, else the disk cache, else ``encode()`` (then stored in both)."""
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    if digest in _memory_cache:
        return _memory_cache[digest]
    file = Path(cache_dir or prompt_cache_dir()) / "prompt_features" / f"{digest}.pt"
    features = _read_cached(file, pairs, embed_dim)
    if features is None:
        features = encode()
        _write_cached(file, pairs, features)
    _memory_cache[digest] = features
    return features


# ---------------------------------------------------------------------------------------------------------------
# Learned prompts (QualiCLIP+, CLIP-IQA+)

# The official prompt learners tokenise "X X ... X <prompt>" so that the context slots have token positions.
_CONTEXT_PLACEHOLDER = "X"
_PER_PROMPT_KEYS = ("prompt_learner.ctx", "prompt_learner.token_prefix", "prompt_learner.token_suffix")


@dataclass(frozen=True)
class LearnedContext:
    """A learned prompt context, read and checked.

    Attributes:
        path: The file it was read from.
        context: ``(n_ctx, W)`` shared by every prompt (CLIP-IQA+), or ``(P, n_ctx, W)``, one per prompt
            (QualiCLIP+), in float32.
        prefix: ``(P, 1, W)`` start-token embeddings stored with a per-prompt context, else ``None``.
        suffix: ``(P, L - 1 - n_ctx, W)`` embeddings of the prompt's tokens, end token and padding stored with a
            per-prompt context, else ``None``.
    """

    path: Path
    context: torch.Tensor
    prefix: Optional[torch.Tensor] = None
    suffix: Optional[torch.Tensor] = None

    @property
    def n_ctx(self) -> int:
        return self.context.shape[-2]


def read_learned_context(path: Union[str, os.PathLike]) -> LearnedContext:
    """Reads a learned-prompt file safely: a CLIP-IQA+ context tensor or a QualiCLIP+ prompt learner.

    The two published formats: ``CLIP-IQA+_learned_prompts-*.pth`` holds one ``(16, 512)`` tensor;
    ``QualiCLIP+_*.pth`` holds ``{"params": {"prompt_learner.ctx": (14, 16, 512), "prompt_learner.token_prefix":
    (14, 1, 512), "prompt_learner.token_suffix": (14, 60, 512)}}``. Half precision is cast to float32.

    Raises:
        CheckpointError: Anything else; the message names the file and what it holds.
    """
    path = Path(path)
    content = read_tensor_file(path)
    expected = (f"expected one (n_ctx, width) context tensor (CLIP-IQA+) or "
                f"{{'params': {{{', '.join(_PER_PROMPT_KEYS)}}}}} (QualiCLIP+)")
    if isinstance(content, torch.Tensor):
        if content.ndim != 2 or not content.is_floating_point():
            raise CheckpointError(f"{path}: not a learned prompt context: holds {describe_content(content)}; "
                                  f"{expected}")
        return LearnedContext(path, content.float())
    params = content.get("params") if isinstance(content, Mapping) else None
    if not isinstance(params, Mapping):
        raise CheckpointError(f"{path}: not a learned prompt file: holds {describe_content(content)}; {expected}")
    if sorted(map(str, params)) != sorted(_PER_PROMPT_KEYS) or not all(isinstance(v, torch.Tensor)
                                                                       for v in params.values()):
        raise CheckpointError(f"{path}: not a QualiCLIP+ prompt learner: 'params' holds "
                              f"{describe_content(params)}; {expected}")
    context, prefix, suffix = (params[key].float() for key in _PER_PROMPT_KEYS)
    prompts = context.shape[0] if context.ndim == 3 else -1
    width = context.shape[-1]
    if (context.ndim != 3 or tuple(prefix.shape) != (prompts, 1, width) or suffix.ndim != 3
            or tuple(suffix.shape[::2]) != (prompts, width)):
        raise CheckpointError(f"{path}: prompt learner shapes ctx {tuple(context.shape)}, token_prefix "
                              f"{tuple(prefix.shape)}, token_suffix {tuple(suffix.shape)}; expected (P, n_ctx, W), "
                              f"(P, 1, W) and (P, L - 1 - n_ctx, W)")
    return LearnedContext(path, context, prefix, suffix)


def learned_prompt_embeddings(checkpoint: Checkpoint, learned: LearnedContext,
                              pairs: Sequence[PromptPair]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The token embeddings of the learned prompts and their token ids (for the end-token position).

    Returns:
        ``(2P, L, W)`` embeddings in the order start token, ``context[:n_ctx // 2]``, the prompt's tokens,
        ``context[n_ctx // 2:]``, end token and padding; and the ``(2P, L)`` token ids of
        ``"X " * n_ctx + prompt``, whose largest value marks the end token, as CLIP reads it.

    Raises:
        CheckpointError: The context does not fit the checkpoint's text tower or the number of prompts.
    """
    import open_clip

    texts = interleave(pairs)
    arch = checkpoint.architecture
    n_ctx, half = learned.n_ctx, learned.n_ctx // 2
    if learned.context.shape[-1] != arch.text_width:
        raise CheckpointError(f"{learned.path}: context width {learned.context.shape[-1]} does not match the text "
                              f"tower of {checkpoint.path} (width {arch.text_width})")
    if learned.context.ndim == 3 and learned.context.shape[0] != len(texts):
        raise CheckpointError(f"{learned.path}: holds contexts for {learned.context.shape[0]} prompts, the model has "
                              f"{len(texts)}")
    placeholders = " ".join([_CONTEXT_PLACEHOLDER] * n_ctx)
    tokens = open_clip.tokenize([f"{placeholders} {text}" for text in texts], context_length=arch.context_length)
    alone = open_clip.tokenize(texts, context_length=arch.context_length)
    prompt_lengths = [int((ids != 0).sum()) - 2 for ids in alone]  # without the start and end tokens
    for text, ids, length in zip(texts, tokens, prompt_lengths):
        if int(ids.argmax()) != 1 + n_ctx + length:
            raise CheckpointError(f"{learned.path}: the prompt {text!r} with {n_ctx} context tokens does not fit "
                                  f"{arch.context_length} tokens")
    if learned.prefix is None:
        embedded = F.embedding(tokens, checkpoint.clip_state["token_embedding.weight"].float())
        prefix, suffix = embedded[:, :1], embedded[:, 1 + n_ctx:]
        context = learned.context.expand(len(texts), -1, -1)
    else:
        if 1 + n_ctx + learned.suffix.shape[1] != arch.context_length:
            raise CheckpointError(f"{learned.path}: 1 + {n_ctx} + {learned.suffix.shape[1]} prompt positions, the text "
                                  f"tower of {checkpoint.path} has {arch.context_length}")
        prefix, suffix, context = learned.prefix, learned.suffix, learned.context
    embeddings = torch.stack([
        torch.cat([prefix[i], context[i, :half], suffix[i, :length], context[i, half:], suffix[i, length:]])
        for i, length in enumerate(prompt_lengths)
    ])
    return embeddings, tokens


class _GivenEmbeddings(nn.Module):
    """Stands in for the token-embedding table: returns prepared embeddings for the token ids they belong to."""

    def __init__(self, embeddings: torch.Tensor, tokens: torch.Tensor):
        super().__init__()
        self.embeddings, self.tokens = embeddings, tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not torch.equal(tokens, self.tokens):
            raise RuntimeError("learned prompt embeddings were asked for other tokens than they were built for")
        return self.embeddings


def encode_learned_prompts(checkpoint: Checkpoint, learned: LearnedContext,
                           pairs: Sequence[PromptPair]) -> torch.Tensor:
    """``(2P, D)`` L2-normalised features of learned prompts, through the checkpoint's frozen text tower.

    open_clip's own ``encode_text`` runs them (positional embedding, causal transformer, final norm, end-token
    feature, projection), fed the assembled embeddings in place of its token-embedding lookup.
    """
    embeddings, tokens = learned_prompt_embeddings(checkpoint, learned, pairs)
    clip = build_text_tower(checkpoint)
    clip.token_embedding = _GivenEmbeddings(embeddings, tokens)
    with torch.no_grad():
        return clip.encode_text(tokens, normalize=True).float()


def learned_prompt_features(checkpoint: Checkpoint, prompt_file: Union[str, os.PathLike],
                            pairs: Sequence[PromptPair], model: str,
                            cache_dir: Union[str, os.PathLike, None] = None) -> torch.Tensor:
    """Features of learned prompts, encoded once per (weights file, prompt file, model) and cached like custom ones.

    On a cache hit neither the prompt file is read nor the text tower built.
    """
    pairs = as_prompt_pairs(pairs)
    key = {"weights": _weights_digest(checkpoint, cache_dir), "prompt_weights": file_sha256(prompt_file),
           "model": model, "prompts": pairs}
    return _cached(key, pairs, checkpoint.architecture.embed_dim, cache_dir,
                   lambda: encode_learned_prompts(checkpoint, read_learned_context(prompt_file), pairs))


def _weights_digest(checkpoint: Checkpoint, cache_dir: Union[str, os.PathLike, None]) -> str:
    """``checkpoint.sha256()``, remembered under the cache folder by the file's identity (path, device, inode, size and
    modification time), so that a later process with the same local file pays a ``stat`` instead of reading and
    hashing the whole file (400 MB for RN50: a few tenths of a second on every start with custom prompts).
    """
    try:
        info = os.stat(checkpoint.path)
    except OSError:
        return checkpoint.sha256()
    identity = json.dumps([os.path.realpath(checkpoint.path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns])
    memo = Path(cache_dir or prompt_cache_dir()) / "weights_sha256" / hashlib.sha256(identity.encode()).hexdigest()
    try:
        remembered = memo.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        remembered = ""
    if re.fullmatch(r"[0-9a-f]{64}", remembered):
        return remembered
    digest = checkpoint.sha256()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(memo, digest, encoding="ascii")
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
        with atomic_write(file) as f:
            torch.save({"prompts": [list(p) for p in pairs], "features": features}, f)
    except OSError:
        pass  # A read-only cache only costs a re-encode next time.
