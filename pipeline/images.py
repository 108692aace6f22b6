"""The one way in for images: whatever a user passes becomes named, checked images here.

An image is a file path, a folder (the images below it, sorted), encoded bytes (JPEG, PNG,
BMP) as `bytes`, `bytearray` or `memoryview`, a PIL image, or a decoded uint8 HxWx3 array,
alone or in a list. `read_images` lists them at once (types, missing files, folder walks)
and `Images.batches` reads each file once, decode-checks those bytes with PIL and hands the
same bytes on to the DALI graph that decodes the training images; decoded pixels are encoded
as PNG (lossless: the network sees exactly those pixels). predict, features, search, serve's
upload and every command take their images here.

Size: the network sees a 256 patch, so a phone's 12 MP JPEG need not be decoded whole.
Asked to (`reduce`: galleries, queries, predict), `batches` decodes a JPEG at least twice the
patch on both sides reduced, by libjpeg's DCT scaling (`reduced`), and batches are bounded by
decoded pixels as well as by count, so memory stays bounded at any photo size. The training
set's images are decoded in full (the paper's pixels) unless prep was asked otherwise.

Names: a path names itself; anything else is "image N" (N counts the inputs from 1) unless
the caller names it. A file that cannot be used is skipped with its reason (`skipped`,
logged) when it is one of several; when it is the only input, or `skip` is off (an fc7 array
has one row per image, so `features` cannot leave one out), it is one error naming it.

Upright: a JPEG's EXIF orientation is applied once, by whoever decodes it: DALI's decoder
(and its header peek) for every network input, `reduced` for a JPEG decoded reduced (the
BMP it hands on keeps no tag), `open_image` for every picture drawn
(thumbnails, contact sheets), and a PIL image passed in is turned upright here, before it is
encoded as PNG (which keeps no orientation tag).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .defaults import MAX_PIXELS
from .errors import AlexnetError

log = logging.getLogger(__name__)

ENCODED = (bytes, bytearray, memoryview)
BATCH_PIXELS = 64 * 2**20  # decoded pixels a batch may hold: 192 MB of RGB
READ_AHEAD = 8  # images read ahead of the one being batched
READ_THREADS = 2
KINDS = "a path, a folder, encoded bytes, a PIL image or a uint8 HxWx3 array"


@dataclass(frozen=True)
class Item:
    """One image to read: a file (`path`) or encoded bytes in memory (`data`)."""

    name: str
    path: str | None = None
    data: bytes | None = None


class Images:
    """Named images, listed; `batches` reads and checks them (module docstring). `skipped`
    holds (name, reason) of what could not be used, as found: a folder walk's problems at
    once, undecodable files as their batch is read."""

    def __init__(self, items: list[Item], skipped: list[tuple[str, str]], *, skip: bool):
        self.items, self.skipped, self.skip = items, skipped, skip

    def __len__(self) -> int:
        return len(self.items)

    def batches(
        self, size: int, *, reduce: int | None = None, max_pixels: int = BATCH_PIXELS
    ) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        """(names, encoded images as uint8 arrays) of at most `size` usable images at a time,
        in order, and of at most `max_pixels` decoded pixels (a batch that would pass it ends
        before the image that would; one image is always a batch), so that memory is bounded
        at any photo size. Each file is read once, a few images ahead in threads (PIL and
        file reads release the GIL, so reading overlaps the network's work); bytes that PIL
        cannot decode are skipped (or, see the module docstring, refused). `reduce`: decode
        large JPEGs reduced (`reduced`) for a graph whose shorter side is `reduce`. Images
        given, none usable: an error."""
        names: list[str] = []
        encoded: list[np.ndarray] = []
        pixels = given = 0
        for item, (data, area, reason) in _read_ahead(self.items, reduce, READ_AHEAD):
            if reason:
                self._refuse(item.name, reason)
                continue
            if names and (len(names) == size or pixels + area > max_pixels):
                given += len(names)
                yield names, encoded
                names, encoded, pixels = [], [], 0
            names.append(item.name)
            encoded.append(np.frombuffer(data, np.uint8))
            pixels += area
        if names:
            given += len(names)
            yield names, encoded
        if not given and self.skipped:  # no images at all is no error: nothing to do
            raise AlexnetError("; ".join(f"{name} {why}" for name, why in self.skipped))

    def _refuse(self, name: str, reason: str) -> None:
        if not self.skip:
            raise AlexnetError(f"{name} cannot be used: {reason}")
        self.skipped.append((name, f"cannot be used: {reason}"))
        log.warning("skipped: %s cannot be used: %s", name, reason)


def read_images(images: Any, names: Sequence[str] | None = None, *, skip: bool = True) -> Images:
    """`images` (one, or a list) as named Images (module docstring). `names`, one per input,
    names the inputs that are not paths. A type that is no image is an error at once."""
    from .walk import EXTENSIONS, Walk

    one = isinstance(images, (str, Path, *ENCODED, np.ndarray)) or not isinstance(images, Sequence)
    inputs = [images] if one else list(images)
    if names is not None and len(names) != len(inputs):
        raise AlexnetError(f"{len(names)} names for {len(inputs)} images", param="names")
    items: list[Item] = []
    skipped: list[tuple[str, str]] = []
    for i, image in enumerate(inputs):
        name = names[i] if names is not None else f"image {i + 1}"
        if not isinstance(image, (str, Path)):
            items.append(Item(name, data=encoded_image(image)))
            continue
        path = Path(image)
        if not path.is_dir():
            if len(inputs) == 1 and not path.exists():  # alone: an error before any work
                raise AlexnetError(f"{path} cannot be used: does not exist")
            items.append(Item(str(path), path=str(path)))
            continue
        walk = Walk(path)
        below = walk.files_below(str(path)) or []
        found = [f for f in below if Path(f).suffix.lower() in EXTENSIONS]
        skipped += [(str(path / s["path"]), s["reason"]) for s in walk.skipped]
        if not found:
            skipped.append((str(path), f"holds no images ({', '.join(sorted(EXTENSIONS))})"))
        items += [Item(f, path=f) for f in found]
    for name, why in skipped if items else ():  # with no images, batches says it once
        log.warning("skipped: %s %s", name, why)
    single = len(inputs) == 1 and not (
        isinstance(inputs[0], (str, Path)) and Path(inputs[0]).is_dir()
    )
    return Images(items, skipped, skip=skip and not single)


def encoded_image(image: Any) -> bytes:
    """An image in memory as encoded bytes: bytes as they are, pixels (an array, a PIL image,
    turned upright first) as PNG."""
    if isinstance(image, ENCODED):
        return bytes(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise AlexnetError(
                f"an image array must be uint8 HxWx3, got {image.dtype} {image.shape}"
            )
        return _png(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, not imported here
        from PIL import ImageOps

        return _png(np.asarray(ImageOps.exif_transpose(image).convert("RGB")))
    raise AlexnetError(f"cannot use a {type(image).__name__} as an image: pass {KINDS}")


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _read_ahead(
    items: list[Item], reduce: int | None, ahead: int
) -> Iterator[tuple[Item, tuple[bytes | None, int, str | None]]]:
    """(item, _read(item)) in order, up to `ahead` items read ahead in threads: memory holds
    at most `ahead` images read and not yet taken."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(READ_THREADS) as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(_read, item, reduce)))
            if len(pending) > ahead:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def _read(item: Item, reduce: int | None = None) -> tuple[bytes | None, int, str | None]:
    """The item's bytes, read once (or `reduced`), with the pixels they decode to, and None;
    or None, 0 and why it cannot be used."""
    from .imagecheck import check_image

    data = item.data
    if data is None:
        try:
            data = Path(item.path).read_bytes()
        except FileNotFoundError:
            return None, 0, "does not exist"
        except PermissionError:
            return None, 0, "is not readable (permission denied)"
        except OSError as e:
            return None, 0, f"is not readable ({e.strerror or e})"
    smaller = reduced(data, reduce) if reduce else None
    if smaller is not None:  # decoded, so checked
        return *smaller, None
    reason = check_image(data, min_size=1)  # before DALI meets bytes from outside
    return (None, 0, reason) if reason else (data, _area(data), None)


def _area(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:  # the header only
        return im.size[0] * im.size[1]


def reduced(data: bytes, side: int) -> tuple[bytes, int] | None:
    """A JPEG at least twice `side` on both sides, decoded reduced: libjpeg's DCT scaling
    (PIL's `draft`: 1/2, 1/4 or 1/8, the most that keeps both sides at least `side`, so the
    graph still only shrinks it), turned upright (EXIF orientation) and encoded as BMP (raw
    pixels: nothing lost, nothing to decompress) for the graph to resize as any image.
    A 4032x3024 photo decodes at 504x378 in about a fifth of the time and a sixty-fourth of
    the memory. (BMP bytes, their pixels); None for any other image, decoded in full as the
    training images are, and for one PIL cannot decode (check_image then says why)."""
    import warnings

    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if im.format not in {"JPEG", "MPO"} or min(w, h) < 2 * side:
                    return None
                if w * h > MAX_PIXELS:
                    return None
                im.draft("RGB", (side, side))
                upright = ImageOps.exif_transpose(im.convert("RGB"))
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return None
    buf = io.BytesIO()
    upright.save(buf, format="BMP")
    return buf.getvalue(), upright.size[0] * upright.size[1]


def open_image(image: str | Path | bytes, side: int | None = None) -> Any:
    """A file (or encoded bytes) as an upright PIL image for drawing: its EXIF orientation
    applied, as DALI's decoder applies it for the network. Modes are kept (montage.to_rgb
    scales 16-bit and float images for display). `side`: the picture is drawn no larger, so
    a large JPEG may be decoded reduced (as `reduced`, both sides kept at least `side`)."""
    from PIL import Image, ImageOps

    source = io.BytesIO(bytes(image)) if isinstance(image, ENCODED) else image
    with Image.open(source) as im:
        if side:
            im.draft(im.mode, (side, side))  # JPEG only; others decode whole
        upright = ImageOps.exif_transpose(im)
        if upright is im:
            upright = im.copy()
        return upright
