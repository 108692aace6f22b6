"""Whether a file (or an upload's bytes) is an image every stage can decode: one open, its
size and modification time taken from the open file, a decode by PIL at reduced scale
(`draft`: JPEGs decode at 1/8 size, which still reads and entropy-decodes the whole stream, so
truncation is caught). Corrupt, truncated, tiny, oversized and non-image files get a reason
instead of crashing a pipeline hours later."""

from __future__ import annotations

import io
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .defaults import MAX_PIXELS, MIN_SIZE

FORMATS = {"JPEG", "MPO", "PNG", "BMP"}  # what both PIL and DALI's decoders read


def _decode_problem(f, size: int, min_size: int, max_pixels: int) -> str | None:
    if size == 0:
        return "empty file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(f) as im:
                if im.format not in FORMATS:
                    return f"unsupported format {im.format}"
                w, h = im.size  # from the header: nothing is decoded yet
                if w * h > max_pixels:
                    return f"too large ({w}x{h}, over the limit of {max_pixels:,} pixels)"
                im.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, still reads every byte
                im.load()
    except Image.DecompressionBombError as e:  # PIL's own limit, where ours is not in force
        return f"too large ({e})"
    except UnidentifiedImageError:
        return "not an image (unrecognised content)"
    except (OSError, SyntaxError, ValueError) as e:
        return f"corrupt or truncated ({e})"
    if min(w, h) < min_size:
        return f"too small ({w}x{h}, shorter side under {min_size} px)"
    return None


def inspect_file(
    path: str, min_size: int = MIN_SIZE, max_pixels: int = MAX_PIXELS
) -> tuple[str | None, int, int]:
    """(None if usable else the reason it is not, size in bytes, mtime_ns) from one open."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return _decode_problem(f, st.st_size, min_size, max_pixels), st.st_size, st.st_mtime_ns
    except PermissionError:
        return "permission denied", 0, 0
    except OSError as e:
        return f"unreadable ({e.strerror})", 0, 0


def check_image(
    image: str | Path | bytes, min_size: int = MIN_SIZE, max_pixels: int = MAX_PIXELS
) -> str | None:
    """Decode a file, or the encoded bytes of one (an upload); None if usable, else the reason
    it is not."""
    if isinstance(image, bytes):
        return _decode_problem(io.BytesIO(image), len(image), min_size, max_pixels)
    return inspect_file(str(image), min_size, max_pixels)[0]


def _own_pixel_limit() -> None:
    # In the worker processes `max_pixels`, checked from each header before decoding,
    # replaces PIL's limit (which would refuse at twice its own value, whatever ours is).
    Image.MAX_IMAGE_PIXELS = None


def inspect_all(
    paths: list[str], min_size: int, max_pixels: int, processes: int | None, progress: bool
) -> list[tuple[str | None, int, int]]:
    """inspect_file of every path, in `processes` worker processes (default: up to 8), in
    order."""
    from tqdm import tqdm

    processes = processes or min(8, os.cpu_count() or 1)
    # Workers from a fork server, not forked from this process: a fork of a process whose
    # torch or DALI threads hold a lock can wait on it for ever.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_own_pixel_limit) as pool:
        sizes, pixels = [min_size] * len(paths), [max_pixels] * len(paths)
        return list(
            tqdm(
                pool.map(inspect_file, paths, sizes, pixels, chunksize=64),
                total=len(paths),
                desc="checking images",
                unit="img",
                disable=not progress,
            )
        )


def usable_images(files: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The files that decode, and the (path, reason) of those that do not."""
    usable, skipped = [], []
    for f in files:
        reason = (
            "is not readable (permission denied)"
            if not os.access(f, os.R_OK)
            else check_image(f, min_size=1)
        )
        if reason:
            skipped.append((f, f"cannot be used as a query: {reason}"))
        else:
            usable.append(f)
    return usable, skipped
