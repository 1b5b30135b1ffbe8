"""Turning user inputs (paths, PIL images, arrays, tensors) into RGB float tensors, and grouping them by size.

Images keep their native resolution: QualiCLIP scores the whole picture, and resizing or padding would change
the score.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from ._errors import first_line
from .model import MIN_IMAGE_SIDE

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageError(ValueError):
    """An input that cannot be scored; the message names the input and the cause on one line."""


def open_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Decodes an image file to RGB, upright according to its EXIF orientation.

    Raises:
        ImageError: The file is missing, unreadable, not an image, truncated or a decompression bomb.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as error:
        raise ImageError(f"{os.fspath(path)}: {describe_error(error)}") from error


def image_size(path: Union[str, os.PathLike]) -> Tuple[int, int]:
    """``(width, height)`` of an image file once upright, read from its header without decoding pixels.

    Raises:
        ImageError: The file is missing or not an image.
    """
    try:
        with Image.open(path) as img:
            return upright_size(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as error:
        raise ImageError(f"{os.fspath(path)}: {describe_error(error)}") from error


def upright_size(img: Image.Image) -> Tuple[int, int]:
    """``(width, height)`` of a PIL image after its EXIF orientation is applied."""
    width, height = img.size
    if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def input_size(image: ImageInput, name: str = "image") -> Tuple[int, int]:
    """``(width, height)`` an input will have once converted, without decoding files.

    Raises:
        ImageError: An unsupported type, or a file that is missing or not an image.
    """
    if isinstance(image, (str, os.PathLike)):
        return image_size(image)
    if isinstance(image, Image.Image):
        return upright_size(image)
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim >= 2:
        height_axis = 0 if isinstance(image, np.ndarray) else -2
        return int(image.shape[height_axis + 1]), int(image.shape[height_axis])
    raise unsupported_input(image, name)


def unsupported_input(image: object, name: str) -> ImageError:
    """The error for an input of a type the scorer does not take."""
    return ImageError(f"{name}: unsupported input type {type(image).__name__}; expected a path, PIL image, "
                      f"uint8 numpy array or float tensor")


def describe_error(error: BaseException) -> str:
    """A one-line cause for a decoding failure."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, Image.DecompressionBombError):
        return "refused: too many pixels (possible decompression bomb)"
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image file Pillow can read"
    return f"cannot decode: {first_line(error)}"


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image to a ``3 x H x W`` float tensor in [0, 1] (the arithmetic of torchvision's ``ToTensor``)."""
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)


def array_to_image(array: np.ndarray, name: str = "array") -> Image.Image:
    """A uint8 ``H x W``, ``H x W x 1``, ``H x W x 3`` or ``H x W x 4`` array as an RGB PIL image.

    Raises:
        ImageError: Another dtype or shape.
    """
    if array.dtype != np.uint8:
        raise ImageError(f"{name}: numpy images must be uint8 (0-255), got {array.dtype}; "
                         f"pass float images as a torch tensor in [0, 1]")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"{name}: expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def check_tensor(tensor: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """Checks a float image tensor ``3 x H x W`` or ``N x 3 x H x W`` with values in [0, 1].

    Raises:
        ImageError: Wrong rank, channel count, dtype, size or value range.
    """
    if not tensor.is_floating_point():
        raise ImageError(f"{name}: image tensors must be float in [0, 1], got {tensor.dtype}")
    if tensor.ndim not in (3, 4) or tensor.shape[-3] != 3:
        raise ImageError(f"{name}: expected a 3xHxW or Nx3xHxW tensor, got shape {tuple(tensor.shape)}")
    check_size(tensor.shape[-1], tensor.shape[-2], name)
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise ImageError(f"{name}: values must lie in [0, 1], got [{tensor.min():.3g}, {tensor.max():.3g}]")
    return tensor


def check_size(width: int, height: int, name: str) -> None:
    """Raises :class:`ImageError` for an image the network cannot pool (a side under 32 pixels)."""
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(f"{name}: image is {width}x{height}; QualiCLIP needs at least "
                         f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels")


def to_tensor(image: ImageInput, name: str = "image") -> torch.Tensor:
    """Any single supported input as a ``3 x H x W`` float tensor in [0, 1] on the CPU (tensors stay put).

    Raises:
        ImageError: An unsupported type, an undecodable file, or an image under 32x32.
    """
    if isinstance(image, (str, os.PathLike)):
        tensor = pil_to_tensor(open_image(image))
    elif isinstance(image, Image.Image):
        tensor = pil_to_tensor(ImageOps.exif_transpose(image))
    elif isinstance(image, np.ndarray):
        tensor = pil_to_tensor(array_to_image(image, name))
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ImageError(f"{name}: inside a list, tensors must be 3xHxW, got shape {tuple(image.shape)}")
        return check_tensor(image, name)
    else:
        raise unsupported_input(image, name)
    check_size(tensor.shape[2], tensor.shape[1], name)
    return tensor


def size_batches(sizes: Sequence[Tuple[int, int]], batch_size: int, max_batch_pixels: int) -> List[List[int]]:
    """Groups indices of equally sized images into batches, in order of first appearance.

    A batch holds at most ``batch_size`` images and, beyond its first image, at most ``max_batch_pixels`` pixels,
    so that large photos do not exhaust memory.
    """
    by_size: dict[Tuple[int, int], List[int]] = {}
    for index, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(index)
    batches = []
    for (width, height), indices in by_size.items():
        per_batch = max(1, min(batch_size, max_batch_pixels // max(1, width * height)))
        batches.extend(indices[i:i + per_batch] for i in range(0, len(indices), per_batch))
    return batches


def name_of(image: ImageInput, index: int) -> str:
    """How errors refer to an input: its path, else its position."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"input[{index}]"

