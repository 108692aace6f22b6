"""What an image is to the library: a file path, a folder of them, encoded bytes (JPEG, PNG,
BMP), a PIL image, or a decoded uint8 HxWx3 array. Every verb that takes images (predict,
features, search) turns them into paths and bytes here, and the DALI graph that decodes the
training images decodes these too (decoded pixels are encoded as PNG first: lossless, so the
network sees exactly those pixels)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AlexnetError


def image_source(image: Any) -> str | bytes:
    """One image as a path or encoded bytes; pixels (an array, a PIL image) become PNG bytes."""
    if isinstance(image, (str, Path)):
        return str(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise AlexnetError(
                f"an image array must be uint8 HxWx3, got {image.dtype} {image.shape}"
            )
        return _png(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, not imported here
        return _png(np.asarray(image.convert("RGB")))
    raise AlexnetError(
        f"cannot use a {type(image).__name__} as an image: pass a path, a folder, encoded "
        "bytes, a PIL image or a uint8 HxWx3 array"
    )


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def image_sources(images: Any) -> tuple[list[str | bytes], list[str]]:
    """Images (one, or a sequence) as paths and bytes, folders expanded to the usable images
    below them, and a name for each (its path, else "image N"). Files that do not decode are
    refused with their reason."""
    from .imagecheck import check_image
    from .walk import image_files

    one = not isinstance(images, Sequence) or isinstance(images, (str, bytes, bytearray))
    items = [images] if one or isinstance(images, np.ndarray) else list(images)
    sources: list[str | bytes] = []
    for item in items:
        if isinstance(item, (str, Path)):
            files, skipped = image_files([item])
            if skipped:
                path, why = skipped[0]
                raise AlexnetError(f"{path} {why}")
            sources += files
        else:
            source = image_source(item)
            reason = check_image(source, min_size=1)  # before DALI meets bytes from outside
            if reason:
                raise AlexnetError(f"image {len(sources) + 1} cannot be used: {reason}")
            sources.append(source)
    names = [s if isinstance(s, str) else f"image {i + 1}" for i, s in enumerate(sources)]
    return sources, names
