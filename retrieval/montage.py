"""A contact sheet of search results: one row per query, the query first, then its results;
and the thumbnails of single images the search page shows.

Each tile is the image's centre square scaled to `tile` pixels (what the network saw, up to
the 224 crop, and upright as the network saw it: pipeline/images.open_image), captioned with
its class and distance; the query tile has a blue frame, the results a green one when they
have the query's class, a red one when not, and a grey one when the query's class is
unknown.

Images of more than 8 bits (16-bit PNGs, float TIFFs) are scaled to 0-255, not clipped to
white; captions are drawn with a font that has CJK glyphs when the machine has one (Debian's
fonts-noto-cjk), and a character the font cannot draw is written as "?".
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write
from alexnet.pipeline.images import open_image

log = logging.getLogger(__name__)

CAPTION = 30  # pixels below each tile for two lines of text
PAD = 8
THUMB = 160  # thumbnail side in pixels: small enough for a page of 100 results
QUERY, OTHER = "#1f5fbf", "#999999"  # frames: the query; a result of unknown agreement
SAME, WRONG = "#2e9e44", "#d23c3c"  # a result of the query's class, or of another
FONT_SIZE = 11
# Fonts with CJK glyphs first (fonts-noto-cjk, fonts-wqy, fonts-droid), then plain ones.
FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)
WIDE = {"I;16", "I;16B", "I;16L", "I", "F"}  # PIL modes with more than 8 bits a pixel


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB for display: 16-bit and float images scaled into 0-255 rather than clipped."""
    if im.mode not in WIDE:
        return im.convert("RGB")
    a = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        a = a / 257.0
    else:  # 32-bit integers or floats: the image's own range
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8)).convert("RGB")


def centre_square(path: str, side: int) -> Image.Image:
    """The centre square scaled to `side` pixels, in RGB (what the network saw, up to the
    crop), upright: its EXIF orientation applied as the network's decoder applies it."""
    return ImageOps.fit(to_rgb(open_image(path, side)), (side, side), Image.Resampling.BILINEAR)


@functools.cache
def caption_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The first of FONTS this machine has, else Pillow's built-in font."""
    for path in FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, FONT_SIZE)
    return ImageFont.load_default(FONT_SIZE)


def _mask(font, text: str) -> bytes:
    return bytes(font.getmask(text))


def drawable(text: str, font=None) -> str:
    """`text` with each character the font has no glyph for (it would draw the same box as
    an unassigned code point) replaced by "?"."""
    font = font or caption_font()
    missing = _mask(font, "\U0010fffd")
    return "".join(c if c.isascii() or _mask(font, c) != missing else "?" for c in text)


def thumbnail(source: str, kept: Path) -> bytes:
    """A JPEG of `source`'s centre square, THUMB pixels a side: made on first request and
    kept at `kept` (made each time where that cannot be written)."""
    if kept.is_file():
        return kept.read_bytes()
    buf = io.BytesIO()
    centre_square(source, THUMB).save(buf, format="JPEG", quality=85)
    data = buf.getvalue()
    try:
        atomic_write(kept, lambda tmp: Path(tmp).write_bytes(data))
    except AlexnetError as e:
        log.debug("thumbnail not kept: %s", e)
    return data


def make_montage(
    rows: Sequence[dict], path: str | Path, *, unit: str = "bits", tile: int = 128
) -> Path:
    """rows: [{"query": path, ("class"), "results": [{"path", "class", "distance"}, ...]}] ->
    a PNG at `path`. `unit` names the distance ("bits" of Hamming distance, or "fc7")."""
    cols = 1 + max(len(r["results"]) for r in rows)
    w, h = cols * (tile + PAD) + PAD, len(rows) * (tile + CAPTION + PAD) + PAD
    sheet = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        y = PAD + r * (tile + CAPTION + PAD)
        known = row.get("class")
        cells = [(row["query"], str(known or Path(row["query"]).name)[:18], "query", QUERY)]
        cells += [
            (
                res["path"],
                str(res["class"] or "")[:18],
                f"#{i + 1}  d={_number(res['distance'])} {unit}",
                OTHER if known is None else SAME if res["class"] == known else WRONG,
            )
            for i, res in enumerate(row["results"])
        ]
        for c, (image, line1, line2, colour) in enumerate(cells):
            x = PAD + c * (tile + PAD)
            sheet.paste(centre_square(image, tile), (x, y))
            draw.rectangle([x - 3, y - 3, x + tile + 2, y + tile + 2], outline=colour, width=3)
            draw.text((x, y + tile + 2), drawable(line1), fill="black", font=caption_font())
            draw.text((x, y + tile + 15), drawable(line2), fill="#444444", font=caption_font())
    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def _number(d: float) -> str:
    """Hamming distances as integers, Euclidean ones with three decimals."""
    return str(int(d)) if float(d).is_integer() else f"{d:.3f}"
