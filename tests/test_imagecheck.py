"""pipeline/imagecheck.py: one decode says whether a file (or an upload's bytes) is usable."""

import warnings
from pathlib import Path

from fixtures import img
from PIL import Image

from alexnet.pipeline.imagecheck import check_image


def test_encoded_bytes_get_the_same_verdict_as_their_file(tmp_path, real_jpegs):
    whole = Path(real_jpegs[0]).read_bytes()
    cases = {
        "photo.jpg": whole,
        "zero.jpg": b"",
        "truncated.jpg": whole[: len(whole) // 2],
        "text.jpg": b"this is not a JPEG\n",
        "tiny.png": None,
        "icon.gif": None,
    }
    img(tmp_path / "tiny.png", size=(1, 1))
    img(tmp_path / "icon.gif")
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        assert check_image(path.read_bytes()) == check_image(str(path)), name
    assert check_image(whole) is None and check_image(b"") == "empty file"
    assert check_image((tmp_path / "icon.gif").read_bytes()) == "unsupported format GIF"


def test_pil_decompression_bomb_warning_is_silenced(tmp_path, monkeypatch):
    big = img(tmp_path / "big.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # PIL warns above this, fails above 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_image(str(big), max_pixels=20000) is None
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
        assert check_image(str(big), max_pixels=20000).startswith("too large")
