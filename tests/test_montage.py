"""Contact sheets: wide images scaled rather than clipped, captions in any script."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from alexnet.retrieval.montage import FONTS, caption_font, centre_square, drawable, make_montage


def gradient(h: int = 64, w: int = 80) -> np.ndarray:
    return np.linspace(0, 1, h * w).reshape(h, w)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray((gradient() * 65535).astype(np.uint16)).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # PIL keeps all 16 bits: the case that clipped to white
    tile = np.asarray(centre_square(str(path), 32))
    assert tile.min() < 40 and tile.max() > 215 and tile.std() > 40  # a ramp, not a white square


def test_float_image_is_scaled_to_its_range(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray((gradient() * 3.0 - 1.0).astype(np.float32)).save(path)
    tile = np.asarray(centre_square(str(path), 32))
    assert tile.min() < 40 and tile.max() > 215


def test_montage_of_a_16_bit_query_is_not_blank(tmp_path):
    query = tmp_path / "q.png"
    Image.fromarray((gradient() * 65535).astype(np.uint16)).save(query)
    result = tmp_path / "r.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(result)
    rows = [{"query": str(query), "results": [{"path": str(result), "class": "x", "distance": 3}]}]
    sheet = np.asarray(Image.open(make_montage(rows, tmp_path / "m.png", tile=48)))
    tile = sheet[8 : 8 + 48, 8 : 8 + 48]
    assert tile.std() > 40


@pytest.mark.skipif(
    not any(Path(p).is_file() for p in FONTS[:3]),
    reason="no font with CJK glyphs on this machine (apt-get install fonts-noto-cjk)",
)
def test_cjk_names_are_drawn_with_a_font_that_has_them():
    assert drawable("猫の写真.jpg") == "猫の写真.jpg"


def test_characters_a_font_lacks_become_question_marks():
    latin = ImageFont.load_default(11)
    assert drawable("猫 cat.jpg", latin) == "? cat.jpg"
    assert drawable("plain.jpg", caption_font()) == "plain.jpg"


def test_search_montage_of_a_16_bit_png_named_in_japanese(tmp_path, monkeypatch):
    """Through the CLI: a 16-bit PNG query shows as its picture, not a white square."""
    from click.testing import CliRunner
    from retrieval_fixtures import QuickConfig, make_images, make_run

    from alexnet.cli.main import cli
    from alexnet.retrieval import autoencoder as ae

    run = make_run(make_images(tmp_path / "data"), tmp_path / "run")
    monkeypatch.setattr(ae, "AutoencoderConfig", QuickConfig)
    query = tmp_path / "写真.png"
    Image.fromarray((gradient(96, 96) * 65535).astype(np.uint16)).save(query)
    sheet = tmp_path / "m.png"
    args = ["search", str(query), "--run", str(run), "-k", "2", "--montage", str(sheet)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tile = np.asarray(Image.open(sheet))[8 : 8 + 128, 8 : 8 + 128]
    assert tile.std() > 40 and tile.min() < 60
