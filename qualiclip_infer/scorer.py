"""``QualityScorer``: batched QualiCLIP scoring of paths, PIL images, numpy arrays and tensors.

A facade: it loads the network (:mod:`~qualiclip_infer.loading`) into the batch core it extends
(:class:`~qualiclip_infer.runner.BatchRunner`) and takes its collections through the streaming engine
(:func:`~qualiclip_infer.engine.iter_scores`) and quality maps (:func:`~qualiclip_infer.maps.quality_map`), whose
docstrings are those of its methods.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Iterable, Iterator, List, Literal, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from . import engine, maps
from .backends import require_backend
from .calibration import Calibration, calibrated_results, checked_calibration
from .constants import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_READ_TIMEOUT
from .devices import Precision, check_precision, resolve_device
from .hub import WeightsSpec
from .images import EncodedImage, ImageError, ImageInput, check_size, check_tensor, unsupported_input
from .loading import load_model, load_network  # noqa: F401 (load_model: this module's API since 0.1)
from .presets import DEFAULT_MODEL
from .results import ScoreResult
from .runner import BatchRunner, check_batch_options, network_memory_format


class QualityScorer(BatchRunner):
    """Scores image quality with QualiCLIP: a float in [0, 1], higher is better.

    The defaults reproduce the official QualiCLIP model: the published checkpoint, its stored features of the
    seven antonym prompt pairs, a logit scale of 100, each image at its native resolution.

    Example::

        scorer = QualityScorer()
        scorer.score("photo.jpg")     # a float in [0, 1]

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
            stay on torch; with ``device="auto"`` such a backend runs on the CPU.
        calibration: A :class:`~qualiclip_infer.calibration.Calibration` or its JSON file: :meth:`iter_scores`
            results then carry ``mos`` and ``percentile`` on that dataset's scale. It must have been fitted for this
            model and these settings.

    Raises:
        WeightsNotFoundError: The weights are not available (see the message for how to get them).
        CheckpointError: The file is not a QualiCLIP checkpoint in the official format.
        CalibrationError: The calibration cannot be read or was fitted for another model or settings.
        ValueError: An unknown device, precision or prompt list, or a number out of range.
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
        calibration: Union[Calibration, str, os.PathLike, None] = None,
    ):
        # Everything that can be checked without the weights is, before any download.
        resolved = resolve_device("cpu" if backend != "torch" and str(device) == "auto" else device)
        check_precision(precision, resolved)
        check_batch_options(batch_size, max_batch_pixels, max_image_pixels)
        require_backend(backend)
        self.model_name = model
        network, self.prompts, self.weights_path = load_network(
            weights, model=model, prompt_weights=prompt_weights, prompts=prompts, logit_scale=logit_scale,
            revision=revision, prompt_revision=prompt_revision, cache_dir=cache_dir,
            local_files_only=local_files_only, fold_into=network_memory_format(resolved))
        super().__init__(network, resolved, precision=precision, batch_size=batch_size,
                         max_batch_pixels=max_batch_pixels, max_image_pixels=max_image_pixels, backend=backend)
        self.calibration = None if calibration is None else checked_calibration(calibration, self)

    def __repr__(self) -> str:
        return (f"QualityScorer(model={self.model_name!r}, weights={str(self.weights_path)!r}, "
                f"device={str(self.device)!r}, precision={self.precision!r}, pairs={self.model.num_pairs}, "
                f"logit_scale={self.model.logit_scale})")

    # The maps document this method: it takes the scorer as its first argument.
    quality_map = maps.quality_map

    def iter_scores(self, inputs: Iterable[ImageInput], *, names: Optional[Sequence[str]] = None,
                    workers: Optional[int] = None,
                    read_timeout: Optional[float] = DEFAULT_READ_TIMEOUT) -> Iterator[ScoreResult]:
        """:func:`qualiclip_infer.engine.iter_scores` with this scorer (its docstring says it all); with a
        calibration, each scored result also carries ``mos`` and ``percentile``."""
        results = engine.iter_scores(self, inputs, names=names, workers=workers, read_timeout=read_timeout)
        return results if self.calibration is None else calibrated_results(self.calibration, results)

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
