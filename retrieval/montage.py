"""A contact sheet of search results: one row per query, the query first, then its results;
and the thumbnails of single images the search page shows.

Each tile is the image's centre square scaled to `tile` pixels (what the network saw, up to
the 224 crop), captioned with its class and distance; the query tile has a blue frame, the
results a green one when they have the query's class, a red one when not, and a grey one
when the query's class is unknown.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write

log = logging.getLogger(__name__)

CAPTION = 30  # pixels below each tile for two lines of text
PAD = 8
THUMB = 160  # thumbnail side in pixels: small enough for a page of 100 results
QUERY, OTHER = "#1f5fbf", "#999999"  # frames: the query; a result of unknown agreement
SAME, WRONG = "#2e9e44", "#d23c3c"  # a result of the query's class, or of another


def centre_square(path: str, side: int) -> Image.Image:
    """The centre square scaled to `side` pixels, in RGB (what the network saw, up to the crop)."""
    with Image.open(path) as im:
        return ImageOps.fit(im.convert("RGB"), (side, side), Image.Resampling.BILINEAR)


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
            draw.text((x, y + tile + 3), line1, fill="black")
            draw.text((x, y + tile + 15), line2, fill="#444444")
    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def _number(d: float) -> str:
    """Hamming distances as integers, Euclidean ones with three decimals."""
    return str(int(d)) if float(d).is_integer() else f"{d:.3f}"
