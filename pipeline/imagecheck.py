"""Whether a file (or an upload's bytes) is an image every stage can decode: one open, its
size and modification time taken from the open file, a decode by PIL at reduced scale
(`draft`: JPEGs decode at 1/8 size, which still reads and entropy-decodes the whole stream, so
truncation is caught). Corrupt, truncated, tiny, oversized and non-image files get a reason
instead of crashing a pipeline hours later.

A folder's files are checked in threads of this process: PIL reads and decodes without the
GIL (two threads check ~1.9x as many 500x375 photos a second as one, as many as two worker
processes: bench/imagecheck.py). Worker processes would be forked from a process whose torch
or DALI threads may hold a lock, or (fork server, spawn) re-run the script of a user who
calls `alexnet.prepare` without an `if __name__ == "__main__":` guard."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .defaults import MAX_PIXELS, MIN_SIZE

FORMATS = {"JPEG", "MPO", "PNG", "BMP"}  # what both PIL and DALI's decoders read
CHUNK = 256  # files per task of the checking threads


@contextmanager
def _no_bomb_warning() -> Iterator[None]:
    """PIL warns of images over its pixel limit; `max_pixels` is checked instead. The filters
    are the process's: set once around a whole check, not in each thread."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _decode_problem(f, size: int, min_size: int, max_pixels: int) -> str | None:
    if size == 0:
        return "empty file"
    try:
        with Image.open(f) as im:
            if im.format not in FORMATS:
                return f"unsupported format {im.format}"
            w, h = im.size  # from the header: nothing is decoded yet
            if w * h > max_pixels:
                return f"too large ({w}x{h}, over the limit of {max_pixels:,} pixels)"
            im.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, still reads every byte
            im.load()
    except Image.DecompressionBombError as e:  # over twice PIL's limit, whatever `max_pixels` is
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
    with _no_bomb_warning():
        if isinstance(image, bytes):
            return _decode_problem(io.BytesIO(image), len(image), min_size, max_pixels)
        return inspect_file(str(image), min_size, max_pixels)[0]


def inspect_all(
    paths: list[str], min_size: int, max_pixels: int, threads: int | None, progress: bool
) -> list[tuple[str | None, int, int]]:
    """inspect_file of every path, in `threads` threads (default: up to 8), in order."""
    from tqdm import tqdm

    def check(chunk: list[str]) -> list[tuple[str | None, int, int]]:
        return [inspect_file(path, min_size, max_pixels) for path in chunk]

    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]  # tasks, not one a file
    results = []
    with (
        _no_bomb_warning(),
        ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool,
        tqdm(total=len(paths), desc="checking images", unit="img", disable=not progress) as bar,
    ):
        for chunk in pool.map(check, chunks):
            results += chunk
            bar.update(len(chunk))
    return results
