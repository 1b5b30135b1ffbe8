"""QualiCLIP as a self-contained ONNX file, and a check that ONNX Runtime scores it as torch does.

The file maps ``images``, float32 ``N x 3 x H x W`` in [0, 1] (RGB, any N and any H, W >= 32), to ``scores``, ``N``
floats in [0, 1]: CLIP normalisation, the (folded) image tower and the score head with the prompt features baked in.
Its metadata say which model it is (preset, weights file and SHA-256, prompts, logit scale, package version) and under
which licence its weights are.

Writing the metadata needs the ``onnx`` package and verifying ``onnxruntime`` (``pip install
"qualiclip-infer[onnx]"``).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Dict, Sequence, Tuple, Union

import torch

from ._version import __version__
from .atomic import atomic_write
from .calibration import scorer_identity
from .extras import require
from .messages import first_line
from .model import QualiCLIP
from .onnx_graph import ImagesToScores, onnx_bytes
from .presets import get_preset

if TYPE_CHECKING:
    from .scorer import QualityScorer

INPUT_NAME, OUTPUT_NAME = "images", "scores"
# Scores may differ from torch's by float rounding only; anything more is a broken export.
VERIFY_TOLERANCE = 1e-5
# Square, non-square and odd sizes: the dynamic height and width must hold at each.
VERIFY_SIZES: Tuple[Tuple[int, int], ...] = ((224, 224), (320, 192), (97, 131))
class ExportVerificationError(Exception):
    """The exported file's scores differ from the torch path's by more than :data:`VERIFY_TOLERANCE`."""


def export_metadata(scorer: "QualityScorer") -> Dict[str, str]:
    """The metadata written into the ONNX file: what model, from which file, under which licence, and the I/O."""
    identity = scorer_identity(scorer)
    return {
        "qualiclip.preset": scorer.model_name,
        "qualiclip.weights_file": scorer.weights_path.name,
        "qualiclip.weights_sha256": identity["weights_sha256"],
        "qualiclip.prompts": json.dumps(None if scorer.prompts is None else [list(pair) for pair in scorer.prompts]),
        "qualiclip.prompt_features_sha256": identity["prompt_features_sha256"],
        "qualiclip.logit_scale": repr(scorer.model.logit_scale),
        "qualiclip.package_version": __version__,
        "qualiclip.weights_licence": get_preset(scorer.model_name).licence,
        "qualiclip.input": f"{INPUT_NAME}: float32 N x 3 x H x W, RGB in [0, 1], H and W >= 32, "
                           f"normalisation inside; one size per batch",
        "qualiclip.output": f"{OUTPUT_NAME}: float32 N, quality in [0, 1], higher is better",
    }


def export_onnx(scorer: "QualityScorer", path: Union[str, os.PathLike]) -> Dict[str, str]:
    """Writes ``scorer``'s network as ONNX (opset 18) to ``path``, with :func:`export_metadata`.

    The network is exported as the scorer holds it (BatchNorms folded), on the CPU in float32, whatever the
    scorer's device, precision or backend.

    Returns:
        The metadata written.

    Raises:
        ImportError: The ``onnx`` package is missing.
        OSError: ``path`` cannot be written.
    """
    onnx = _import("onnx")
    metadata = export_metadata(scorer)
    model = scorer.model
    device = next(model.parameters()).device
    try:
        graph = onnx_bytes(ImagesToScores(model.to("cpu")), INPUT_NAME, OUTPUT_NAME)
    finally:
        model.to(device)
    proto = onnx.load_from_string(graph)
    proto.producer_name, proto.producer_version = "qualiclip-infer", __version__
    proto.doc_string = "QualiCLIP no-reference image quality: images in [0, 1] to scores in [0, 1]"
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_write(path) as f:  # a reader never sees half a file
        f.write(proto.SerializeToString())  # what onnx.save_model writes for a graph without external data
    return metadata


def verify_onnx(path: Union[str, os.PathLike], scorer: "QualityScorer", *,
                sizes: Sequence[Tuple[int, int]] = VERIFY_SIZES, per_size: int = 2, seed: int = 0) -> float:
    """Scores generated images at each of ``sizes`` with ONNX Runtime and with ``scorer``'s network in torch, fp32
    (whatever the scorer's precision and backend); returns the largest difference.

    The images are smooth random fields with noise (not constant), generated from ``seed``.

    Raises:
        ExportVerificationError: A score differs by more than :data:`VERIFY_TOLERANCE`, the file cannot be run, or
            it gives no finite score; the message says which.
        ImportError: ``onnxruntime`` is missing.
    """
    onnxruntime = _import("onnxruntime")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own classes for unreadable and invalid files
        raise ExportVerificationError(f"{path}: ONNX Runtime cannot load it: {first_line(error)}") from error
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for width, height in sizes:
        images = _test_images(per_size, width, height, generator)
        expected = _torch_scores(scorer.model, images)
        try:
            got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]).float()
        except Exception as error:
            raise ExportVerificationError(f"{path}: ONNX Runtime fails at {width}x{height}: "
                                          f"{first_line(error)}") from error
        if got.shape != expected.shape or not torch.isfinite(got).all():
            raise ExportVerificationError(f"{path}: at {width}x{height} ONNX Runtime gives {tuple(got.shape)} "
                                          f"scores {got.tolist()}, torch {expected.tolist()}")
        difference = float((got - expected).abs().max())
        if difference > VERIFY_TOLERANCE:
            raise ExportVerificationError(f"{path}: at {width}x{height} ONNX Runtime's scores differ from torch's by "
                                          f"{difference:.2e} (more than {VERIFY_TOLERANCE:.0e})")
        worst = max(worst, difference)
    return worst


def _torch_scores(model: QualiCLIP, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        device = next(model.parameters()).device
        return model(model.normalize(images.to(device))).float().cpu()


def _test_images(count: int, width: int, height: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` images in [0, 1]: coarse random colour fields upsampled smoothly, plus fine noise."""
    coarse = torch.rand(count, 3, max(2, height // 16), max(2, width // 16), generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (smooth + 0.05 * torch.randn(count, 3, height, width, generator=generator)).clamp(0, 1)


def _import(name: str):
    return require(name, "onnx", "ONNX export")
