"""Turning user inputs (paths, encoded bytes, PIL images, arrays, tensors) into RGB float tensors.

Images keep their native resolution: QualiCLIP scores the whole picture, and resizing or padding would change
the score.
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .messages import first_line
from .constants import MIN_IMAGE_SIDE

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray, torch.Tensor]
EncodedImage = (bytes, bytearray, memoryview)

_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageError(ValueError):
    """An input that cannot be scored; the message names the input and the cause on one line."""


def open_image(source: Union[str, os.PathLike, bytes, bytearray, memoryview], name: Optional[str] = None
               ) -> Image.Image:
    """Decodes an image file (a path, or its contents as bytes) to RGB, upright according to its EXIF orientation.

    Raises:
        ImageError: The file is missing, unreadable, not an image, truncated or a decompression bomb.
    """
    name = name or _source_name(source)
    try:
        with _open(source) as img:
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except Exception as error:  # Pillow's plugins raise many types on corrupt data; each is this input's failure
        raise ImageError(f"{name}: {describe_error(error)}") from error


def image_size(source: Union[str, os.PathLike, bytes, bytearray, memoryview], name: Optional[str] = None
               ) -> Tuple[int, int]:
    """``(width, height)`` of an image file once upright, read from its header without decoding pixels.

    Raises:
        ImageError: The file is missing or not an image.
    """
    name = name or _source_name(source)
    try:
        with _open(source) as img:
            return upright_size(img)
    except Exception as error:  # as in open_image: any failure to read a header is this input's failure
        raise ImageError(f"{name}: {describe_error(error)}") from error


def _open(source: Union[str, os.PathLike, bytes, bytearray, memoryview]) -> Image.Image:
    if isinstance(source, EncodedImage):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


def _source_name(source: object) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image bytes"


def upright_size(img: Image.Image) -> Tuple[int, int]:
    """``(width, height)`` of a PIL image after its EXIF orientation is applied, without decoding its pixels."""
    width, height = img.size
    if getattr(img, "_tile_size", None) not in (None, img.size):
        # Newer Pillow TIFF readers report the upright size and rotate while decoding; older ones do neither.
        return width, height
    if _orientation(img) in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def _orientation(img: Image.Image) -> Optional[int]:
    """The EXIF orientation of an opened image, read without loading pixels.

    ``getexif()`` decodes a PNG whose ``eXIf`` chunk was not seen before the image data (Pillow must read past the
    data to find it), so for PNG files the chunks are walked by seeking over the data instead.
    """
    if img.format == "PNG" and "exif" not in img.info and getattr(img, "fp", None) is not None:
        exif = _png_exif_chunk(img.fp)
        if exif is None:
            return Image.Image.getexif(img).get(_EXIF_ORIENTATION)  # XMP orientation, no pixel decode
        parsed = Image.Exif()
        parsed.load(exif)
        return parsed.get(_EXIF_ORIENTATION)
    return img.getexif().get(_EXIF_ORIENTATION)


def _png_exif_chunk(fp: BinaryIO) -> Optional[bytes]:
    """The ``eXIf`` chunk of a PNG file, found by skipping from chunk header to chunk header."""
    position = fp.tell()
    try:
        fp.seek(8)  # the PNG signature
        while True:
            header = fp.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind == b"eXIf":
                data = fp.read(length)
                return data if len(data) == length else None
            if kind == b"IEND":
                return None
            fp.seek(length + 4, os.SEEK_CUR)  # data and CRC
    finally:
        fp.seek(position)


def input_size(image: ImageInput, name: str = "image") -> Tuple[int, int]:
    """``(width, height)`` an input will have once converted, without decoding files.

    Raises:
        ImageError: An unsupported type, or a file that is missing or not an image.
    """
    if isinstance(image, (str, os.PathLike, *EncodedImage)):
        return image_size(image, name)
    if isinstance(image, Image.Image):
        return upright_size(image)
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim >= 2:
        height_axis = 0 if isinstance(image, np.ndarray) else -2
        return int(image.shape[height_axis + 1]), int(image.shape[height_axis])
    raise unsupported_input(image, name)


def probe(image: ImageInput, name: str, max_pixels: Optional[int] = None) -> Tuple[int, int]:
    """The upright ``(width, height)`` of an input, from its header only, once it is known to be scoreable by size.

    Args:
        image: Any supported input.
        name: How the error message names the input.
        max_pixels: Refuse images with more pixels (``None``: no limit).

    Raises:
        ImageError: The input is unreadable, of an unsupported type, under 32 pixels on a side, or over
            ``max_pixels``.
    """
    width, height = input_size(image, name)
    check_size(width, height, name, max_pixels)
    return width, height


def unsupported_input(image: object, name: str) -> ImageError:
    """The error for an input of a type the scorer does not take."""
    return ImageError(f"{name}: unsupported input type {type(image).__name__}; expected a path, encoded image "
                      f"bytes, PIL image, uint8 numpy array or float tensor")


def failure_cause(error: BaseException, name: str) -> str:
    """The one-line reason an input failed, without the ``name: `` prefix an :class:`ImageError` message carries."""
    if not isinstance(error, ImageError):
        return describe_error(error)
    message = first_line(error)
    return message[len(name) + 2:] if message.startswith(f"{name}: ") else message


def describe_error(error: BaseException) -> str:
    """A one-line cause for a decoding failure."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, Image.DecompressionBombError):
        return f"refused by Pillow as a possible decompression bomb: {first_line(error)}"
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


def check_size(width: int, height: int, name: str, max_pixels: Optional[int] = None) -> None:
    """Raises :class:`ImageError` for an image the network cannot pool (a side under 32 pixels) or too large."""
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(f"{name}: image is {width}x{height}; QualiCLIP needs at least "
                         f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{name}: image is {width}x{height} ({width * height / 1e6:.3g} Mpx), over the limit of "
                         f"{max_pixels / 1e6:.3g} Mpx per image (max_image_pixels / --max-pixels)")


def to_tensor(image: ImageInput, name: str = "image") -> torch.Tensor:
    """Any single supported input as a ``3 x H x W`` float tensor in [0, 1] on the CPU (tensors stay put).

    Raises:
        ImageError: An unsupported type, an undecodable file, or an image under 32x32.
    """
    if isinstance(image, (str, os.PathLike, *EncodedImage)):
        tensor = pil_to_tensor(open_image(image, name))
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


def name_of(image: ImageInput, index: int) -> str:
    """How errors refer to an input: its path, else its position in the input list."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"input[{index}]"

