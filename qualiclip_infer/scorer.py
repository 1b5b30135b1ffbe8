"""``QualityScorer``: batched QualiCLIP scoring of paths, PIL images, numpy arrays and tensors."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .backends import build_backend, warn_torch_only
from .engine import ScoreResult, iter_scores
from .images import EncodedImage, ImageError, ImageInput, check_size, check_tensor, unsupported_input
from .model import QualiCLIP
from .presets import DEFAULT_MODEL, get_preset
from .prompts import PromptPair, as_prompt_pairs, preset_text_features
from .weights import WeightsSpec, load_checkpoint, resolve_weights

if TYPE_CHECKING:
    from .maps import QualityMap

Precision = Literal["fp32", "fp16", "bf16"]
# Reduced precisions by name; the trainer uses the same names.
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_BATCH_SIZE = 16
# 16 Mpx of RN50 activations in fp32 peak near 4 GB on the CPU; bigger batches of big photos buy no speed.
DEFAULT_MAX_BATCH_PIXELS = 16 * 2**20
# On the CPU, RN50 gains from batching up to a few 0.1 Mpx, then loses as activations outgrow the caches (measured on
# 2 Xeon cores: 224x224 fastest in batches of 4-8, 512x384 and up no faster in pairs). 0.5 Mpx batches ten 224x224
# images and gives photos of 0.5 Mpx and more a batch each, which also bounds memory.
DEFAULT_MAX_BATCH_PIXELS_CPU = 2**19
# Scoring one image costs about 200 MiB of activations per megapixel in fp32 (benchmarks/RESULTS.md, "Memory per
# megapixel"), on top of ~1.1 GB for the process and model. 48 Mpx (a 8000x6000 photo) then peaks near 11 GB, so a CPU
# run on a 16 GB machine survives the largest image it accepts; larger ones become error rows instead of an OOM kill.
DEFAULT_MAX_IMAGE_PIXELS = 48_000_000


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit device must be present.

    Raises:
        ValueError: An unknown device string, or a device this machine does not have.
    """
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda, cuda:N or mps") from error
    if resolved.type == "cuda" and (not torch.cuda.is_available()
                                    or (resolved.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device!r}: CUDA is not available on this machine "
                         f"({torch.cuda.device_count()} CUDA devices)")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: Apple MPS is not available on this machine")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    return resolved


def _check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp32":
        return
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision {precision!r}: expected fp32, fp16 or bf16")
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"precision {precision!r}: autocast is not supported on {device.type}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bf16': {torch.cuda.get_device_name(device)} does not support bfloat16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]):
            pass
    if caught:
        raise ValueError(f"precision {precision!r} is not supported on {device.type}: {caught[0].message}")


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
    Arguments are those of :class:`QualityScorer`.
    """
    return _load(weights, prompts, logit_scale, model=model, prompt_weights=prompt_weights,
                 prompt_revision=prompt_revision, revision=revision, cache_dir=cache_dir,
                 local_files_only=local_files_only)[0]


def _load(weights: WeightsSpec, prompts, logit_scale: Optional[float], *, model: str = DEFAULT_MODEL,
          prompt_weights: WeightsSpec = None, prompt_revision: Optional[str] = None,
          fold_into: Optional[torch.memory_format] = None,
          **where) -> Tuple[QualiCLIP, Optional[Tuple[PromptPair, ...]], Path]:
    """The model, the prompt pairs it scores against (``None`` if unnamed) and the weights file.

    With ``fold_into`` set, BatchNorms are folded into the convolutions (see :func:`_fold_batch_norms`), whose weights
    are written once, in that memory format. Either way every tensor of the model is its own memory, not the
    checkpoint file's, and each is written once: on a CPU the first write of fresh memory costs more than the copy.
    """
    preset = get_preset(model)
    custom_pairs = None if prompts is None else as_prompt_pairs(prompts)
    preset.check_options(custom_pairs, prompt_weights, prompt_revision)
    path = resolve_weights(weights, default=preset.weights, **where)
    checkpoint = load_checkpoint(path)
    prompt_file = None
    if preset.prompt_file is not None:
        prompt_file = resolve_weights(prompt_weights, **{**where, "revision": prompt_revision},
                                      default=preset.prompt_file, option="prompt_weights")
    with torch.device("meta"):
        image_tower = checkpoint.architecture.build_image_tower()
    image_tower.load_state_dict(checkpoint.image_tower_state(), strict=True, assign=True)
    if fold_into is not None:
        _fold_batch_norms(image_tower, fold_into)
    _copy_out_of(checkpoint.clip_state.values(), image_tower)
    features, pairs = preset_text_features(preset, checkpoint, custom_pairs, prompt_file)
    scale = preset.logit_scale(checkpoint) if logit_scale is None else logit_scale
    return QualiCLIP(image_tower, features, scale).eval().requires_grad_(False), pairs, path


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


def _fold_batch_norms(module: nn.Module, memory_format: torch.memory_format = torch.contiguous_format) -> None:
    """Folds each BatchNorm into the convolution registered just before it, leaving an Identity in its place.

    In CLIP's ModifiedResNet every BatchNorm is registered right after the convolution it normalises (``convK`` then
    ``bnK``; ``downsample`` is ``avgpool, conv, bn``). In eval mode such a pair is one convolution with a bias: the
    same scores to float rounding, without a pass over every activation (about 15% of RN50's time on a CPU). The
    folded weights are new tensors in ``memory_format``; the convolution modules are updated in place.
    """
    for parent in list(module.modules()):
        previous_name, previous = None, None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and isinstance(previous, nn.Conv2d):
                _fold_into_conv(previous, child, memory_format)
                setattr(parent, name, nn.Identity())
            previous_name, previous = name, child


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d, memory_format: torch.memory_format) -> None:
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    weight = torch.empty_like(conv.weight, memory_format=memory_format)
    torch.mul(conv.weight, scale.view(-1, 1, 1, 1), out=weight)
    shift = norm.running_mean if conv.bias is None else norm.running_mean - conv.bias
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(norm.bias - shift * scale, requires_grad=False)


class QualityScorer:
    """Scores image quality with QualiCLIP: a float in [0, 1], higher is better.

    The defaults reproduce the official QualiCLIP model: the published checkpoint, its stored features of the
    seven antonym prompt pairs, a logit scale of 100, each image at its native resolution.

    Example:
        >>> scorer = QualityScorer()
        >>> scorer.score("photo.jpg")
        0.73

    Args:
        weights: ``None`` for the model's published weights from the Hugging Face Hub (downloaded once, then
            cached; ``QualiCLIP.pth`` for ``qualiclip``), a local ``.pth``/``.safetensors`` checkpoint in the
            official format (or, for ``clipiqa``/``clipiqa+``, an OpenAI-layout CLIP file), or
            ``hf-hub:ORG/REPO/FILE[@REVISION]``.
        model: A preset of :data:`qualiclip_infer.presets.PRESETS`: ``qualiclip`` (the official model),
            ``qualiclip+koniq``, ``qualiclip+clive``, ``qualiclip+flive``, ``qualiclip+spaq``, ``clipiqa`` or
            ``clipiqa+``.
        prompt_weights: For the models with learned prompts (``qualiclip+*``, ``clipiqa+``): ``None`` for the
            published file, a local path, or ``hf-hub:ORG/REPO/FILE[@REVISION]``.
        device: ``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``fp32`` (exact), or ``fp16``/``bf16`` autocast where the device supports it.
        prompts: ``None`` for the official pairs (features stored in the checkpoint), or a list of
            ``(positive, negative)`` strings, encoded once with the checkpoint's text tower and cached.
        batch_size: Most images run through the network at once (only images of equal size share a batch).
        revision: Hub branch, tag or commit to pin for ``weights``.
        prompt_revision: Hub branch, tag or commit to pin for ``prompt_weights``.
        cache_dir: Hugging Face cache folder for the downloads.
        local_files_only: Never touch the network; the Hub file must already be cached.
        logit_scale: Scale of the cosine similarities; ``None`` for the model's own (100 for ``qualiclip``, the
            official model; pyiqa's for the others). 50 equals pyiqa's ``qualiclip`` (a temperature of 2).
        max_batch_pixels: Cap on pixels in one batch, so large photos are batched fewer at a time; default 0.5 Mpx
            on the CPU, 16 Mpx elsewhere.
        max_image_pixels: Images with more pixels are refused (an error for that image) rather than risking the
            process running out of memory; default 48 Mpx. ``None`` disables the limit.
        backend: ``torch``, or ``openvino``/``onnxruntime`` to run the image tower in that runtime on the CPU
            (same scores to 1e-5 in fp32; see :mod:`qualiclip_infer.backends`). ``tokens`` maps and QualiCLIPLoss
            stay on torch.

    Raises:
        WeightsNotFoundError: The weights are not available (see the message for how to get them).
        CheckpointError: The file is not a QualiCLIP checkpoint in the official format.
        ValueError: An unknown device, precision or prompt list.
    """

    def __init__(
        self,
        weights: WeightsSpec = None,
        *,
        model: str = DEFAULT_MODEL,
        prompt_weights: WeightsSpec = None,
        device: Union[str, torch.device] = "auto",
        precision: Precision = "fp32",
        prompts: Optional[Sequence[Sequence[str]]] = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        revision: Optional[str] = None,
        prompt_revision: Optional[str] = None,
        cache_dir: Union[str, os.PathLike, None] = None,
        local_files_only: bool = False,
        logit_scale: Optional[float] = None,
        max_batch_pixels: Optional[int] = None,
        max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
        backend: str = "torch",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device("cpu" if backend != "torch" and str(device) == "auto" else device)
        _check_precision(precision, self.device)
        self.precision = precision
        self.batch_size = int(batch_size)
        if max_batch_pixels is None:
            max_batch_pixels = DEFAULT_MAX_BATCH_PIXELS_CPU if self.device.type == "cpu" else DEFAULT_MAX_BATCH_PIXELS
        self.max_batch_pixels = int(max_batch_pixels)
        if max_image_pixels is not None and max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be positive or None, got {max_image_pixels}")
        self.max_image_pixels = None if max_image_pixels is None else int(max_image_pixels)

        self.model_name = model
        # oneDNN and cuDNN convolutions run faster on NHWC tensors (about 1.3x for RN50 on a CPU); same results.
        self._memory_format = torch.channels_last if self.device.type in ("cpu", "cuda") else torch.contiguous_format
        self.model, self.prompts, self.weights_path = _load(
            weights, prompts, logit_scale, model=model, prompt_weights=prompt_weights, prompt_revision=prompt_revision,
            revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, fold_into=self._memory_format)
        self.model.to(self.device, memory_format=self._memory_format)
        self.backend = backend
        self._runtime = build_backend(backend, self.model, device=self.device, precision=precision)

    def __repr__(self) -> str:
        return (f"QualityScorer(model={self.model_name!r}, weights={str(self.weights_path)!r}, "
                f"device={str(self.device)!r}, precision={self.precision!r}, pairs={self.model.num_pairs}, "
                f"logit_scale={self.model.logit_scale})")

    def score_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Scores one batch of equally sized images.

        Args:
            images: Float tensor ``N x 3 x H x W`` with values in [0, 1], on any device (H, W >= 32).

        Returns:
            ``(N,)`` float32 scores on the CPU.
        """
        if self._runtime is not None:
            return self._runtime(self._network_input(images))
        with torch.inference_mode(), self._autocast():
            return self.model(self._network_input(images)).float().cpu()

    def scores_and_token_scores_tensor(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Scores one batch of equally sized images and gives their tokens quality maps, from one forward pass.

        Args:
            images: Float tensor ``N x 3 x H x W`` with values in [0, 1], on any device (H, W >= 32).

        Returns:
            ``(N,)`` float32 scores and ``N x h x w`` float32 :meth:`QualiCLIP.token_scores`, on the CPU.
        """
        if self._runtime is not None:
            warn_torch_only(self.backend, "tokens maps")
        with torch.inference_mode(), self._autocast():
            scores, tokens = self.model.scores_and_token_scores(self._network_input(images))
            return scores.float().cpu(), tokens.float().cpu()

    def quality_map(self, image: ImageInput, *, method: Literal["windows", "tokens"] = "windows",
                    window: int = 224, stride: int = 112) -> "QualityMap":
        """Where the image is good or poor: a grid of local scores, plus the whole image's score.

        Args:
            image: A path, PIL image, uint8 numpy array or float tensor ``3 x H x W`` in [0, 1].
            method: ``windows``: each cell is the exact score of a ``window`` x ``window`` crop (the value
                :meth:`score` gives that crop), crops every ``stride`` pixels, the last row and column aligned to the
                border so every pixel is covered; a side shorter than the window gets one cell spanning it.
                ``tokens``: one forward pass; a cell per 32 x 32 pixels, each position of the trunk's feature grid
                scored as if the attention pool had attended to it alone. A dense approximation, not the score of
                any crop; ``window`` and ``stride`` do not apply.
            window: Crop side in pixels (at least 32), for ``windows``.
            stride: Pixels between crop starts (1 to ``window``), for ``windows``.

        Returns:
            A :class:`~qualiclip_infer.maps.QualityMap`: ``values`` (``h x w`` in [0, 1]), ``boxes`` (each cell's
            ``left, top, right, bottom``), ``score`` (the whole image). Draw it with
            :func:`~qualiclip_infer.render.save_map`.

        Raises:
            ImageError: The image cannot be read or is under 32 x 32 pixels.
            ValueError: An unknown method, or a window or stride out of range.
        """
        from .maps import quality_map

        return quality_map(self, image, method=method, window=window, stride=stride)

    def _network_input(self, images: torch.Tensor) -> torch.Tensor:
        batch = self.model.normalize(images.to(self.device, torch.float32, non_blocking=True))
        return batch.contiguous(memory_format=self._memory_format)

    def score(self, images: Union[ImageInput, Sequence[ImageInput]], *,
              on_error: Literal["raise", "nan"] = "raise") -> Union[float, List[float], torch.Tensor]:
        """Scores one image, a list of images, or a batch tensor.

        Args:
            images: A path, encoded image bytes, PIL image, uint8 numpy array (``HxW``/``HxWx3``), float tensor
                ``3xHxW`` in [0, 1], a list of any of those (sizes may differ), or a float tensor ``Nx3xHxW`` in
                [0, 1].
            on_error: For a list, ``raise`` stops at the first input that cannot be scored; ``nan`` gives that
                input a NaN score (with a warning naming it) and scores the rest.

        Returns:
            A float for one image, a list of floats in input order for a list, or an ``(N,)`` tensor for an
            ``N x 3 x H x W`` tensor.

        Raises:
            ImageError: An input cannot be scored; the message names it and the cause.
        """
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            check_tensor(images, "batch")
            check_size(images.shape[-1], images.shape[-2], "batch", self.max_image_pixels)
            chunks = [self.score_tensor(chunk) for chunk in images.split(self.batch_size)]
            return torch.cat(chunks) if chunks else torch.empty(0)
        if isinstance(images, (str, os.PathLike, *EncodedImage, Image.Image, np.ndarray, torch.Tensor)):
            images, single = [images], True
        else:
            single = False
        if on_error not in ("raise", "nan"):
            raise ValueError(f"on_error must be 'raise' or 'nan', got {on_error!r}")
        try:
            items = list(images)
        except TypeError:
            raise unsupported_input(images, "input") from None
        scores = []
        for result in self.iter_scores(items):
            if not result.ok:
                error = ImageError(f"{result.name}: {result.error}")
                if single or on_error == "raise":
                    raise error
                warnings.warn(f"not scored: {error}", stacklevel=2)
            scores.append(math.nan if result.score is None else result.score)
        return scores[0] if single else scores

    def iter_scores(self, inputs: Iterable[ImageInput], *, names: Optional[Sequence[str]] = None,
                    workers: Optional[int] = None) -> Iterator[ScoreResult]:
        """Scores any number of inputs through the streaming engine, yielding one result per input in input order.

        Headers are read first and images of equal size share batches; a pool of threads decodes the next batches
        while the model runs. An input that cannot be scored (unreadable, corrupt, too small, over
        ``max_image_pixels``, out of memory even on its own) gets a result with an ``error`` and the run goes on.

        Example:
            >>> for result in scorer.iter_scores(paths):
            ...     print(result.name, result.score if result.ok else result.error)

        Args:
            inputs: Paths, encoded image bytes, PIL images, uint8 arrays or ``3xHxW`` float tensors, in any mix;
                any iterable, consumed a window at a time.
            names: How results name each input (default: the path, else ``input[<index>]``).
            workers: Decoding threads (default: one per CPU, at most 8).

        Yields:
            :class:`ScoreResult` (index, name, score, width, height, error), in input order.
        """
        return iter_scores(self, inputs, names=names, workers=workers)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

