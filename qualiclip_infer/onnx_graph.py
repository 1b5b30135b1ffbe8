"""The QualiCLIP network as an ONNX graph with dynamic batch size, height and width.

Both the runtime backends (:mod:`qualiclip_infer.backends`) and the export command (:mod:`qualiclip_infer.export`)
start from this graph. It is traced with torch's TorchScript-based exporter: 2-3 s for RN50 where the
``torch.export``-based one takes several times longer for the same graph, and it needs no package beyond torch.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from .model import QualiCLIP

# Opset 18 has every operator the network uses (its AvgPool and ReduceMean forms), and ONNX Runtime, OpenVINO and
# TensorRT 8.6+ read it.
OPSET = 18
# Tracing needs one example; every size the graph later runs at is dynamic, so any valid size does.
_EXAMPLE_SIZE = (1, 3, 64, 64)


class ImageTower(nn.Module):
    """The image tower alone: CLIP-normalised ``N x 3 x H x W`` images to ``N x D`` image features."""

    def __init__(self, model: QualiCLIP):
        super().__init__()
        self.visual = model.visual

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        return self.visual(normalized)


class ImagesToScores(nn.Module):
    """The whole scoring path: ``N x 3 x H x W`` images in [0, 1] to ``(N,)`` scores, CLIP normalisation included."""

    def __init__(self, model: QualiCLIP):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.model.normalize(images))


def onnx_bytes(module: nn.Module, input_name: str, output_name: str) -> bytes:
    """Serialised ONNX model of ``module`` (float32 ``N x 3 x H x W`` in, ``N`` or ``N x D`` out), all of N, H and
    W dynamic.

    The module's weights are written as float32, whatever its memory format. torch's exporter warns that it is
    deprecated; that is the exporter's business, not the caller's, so the warnings are silenced.
    """
    buffer = io.BytesIO()
    example = torch.rand(_EXAMPLE_SIZE)
    output_axes = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buffer, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch", 2: "height", 3: "width"}, output_name: output_axes},
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()
