"""The one way in for images (pipeline/images.py): every kind of image a user may pass works
for predict, features, search and serve's upload; a photo's EXIF orientation is applied for
the network and for every picture drawn alike; and an image's fc7 vector is the same bits
whether it was indexed, queried or asked for with features()."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps
from retrieval_fixtures import indexed_run

import alexnet
from alexnet.cli.web import create_app
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.images import read_images, reduced
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.loader import Preset, QueryCrops
from alexnet.pipeline.manifest import split_files
from alexnet.retrieval.features import load_features, query_features
from alexnet.retrieval.montage import centre_square, make_montage, thumbnail

ORIENTATION = 0x0112  # the EXIF tag
# How a camera stores an upright picture under each orientation (EXIF 2.3, tag 274): the
# reader undoes it. 1 is as it is; 6 is a phone's portrait shot.
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright_picture(h: int = 60, w: int = 90) -> np.ndarray:
    """A picture whose every flip and rotation differs: red top, blue bottom, a green strip
    on the left, brighter to the right."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, :, 0] = 200
    a[h // 2 :, :, 2] = 200
    a[:, : w // 4, 1] = 180
    return a + (np.arange(w)[None, :, None] // 2).astype(np.uint8)


def tagged_jpeg(orientation: int, h: int = 60, w: int = 90) -> bytes:
    """upright_picture stored as a camera stores it under `orientation`, with the tag. No
    chroma subsampling: PIL and DALI then decode the same pixels."""
    im = Image.fromarray(upright_picture(h, w))
    stored = im if STORED[orientation] is None else im.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    return buf.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def decoded_upright(data: bytes) -> np.ndarray:
    """The JPEG's pixels as PIL decodes them, turned upright by PIL."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


# --- upright everywhere --------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_network_sees_every_orientation_upright(orientation):
    data = tagged_jpeg(orientation)
    upright = decoded_upright(data)
    assert upright.shape == (60, 90, 3)  # stored 90 x 60 for 5 to 8
    assert np.abs(upright.astype(int) - upright_picture()).mean() < 2  # only JPEG's loss
    crops = QueryCrops(Preset(np.zeros(3, np.float32), num_threads=1), batch_size=1)
    tagged = crops([np.frombuffer(data, np.uint8)])
    assert np.array_equal(tagged, crops([np.frombuffer(png(upright), np.uint8)]))
    if orientation != 1:  # the same pixels without the tag are another picture
        with Image.open(io.BytesIO(data)) as im:
            raw = np.asarray(im.convert("RGB"))
        assert not np.array_equal(tagged, crops([np.frombuffer(png(raw), np.uint8)]))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_thumbnails_and_contact_sheets_draw_every_orientation_upright(orientation, tmp_path):
    (tmp_path / "tagged").mkdir()
    (tmp_path / "upright").mkdir()
    tagged, upright = tmp_path / "tagged" / "photo.jpg", tmp_path / "upright" / "photo.jpg"
    tagged.write_bytes(tagged_jpeg(orientation))
    Image.fromarray(decoded_upright(tagged.read_bytes())).save(upright, format="PNG")

    tile = np.asarray(centre_square(str(tagged), 64))
    assert np.array_equal(tile, np.asarray(centre_square(str(upright), 64)))
    top, bottom = tile[:8, 40:].mean((0, 1)), tile[-8:, 40:].mean((0, 1))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # red above blue
    assert tile[:, :8, 1].mean() > 150 > tile[:, -8:, 1].mean()  # green on the left

    # the page's thumbnails and the contact sheets (search --montage, duplicates) draw it so
    with Image.open(io.BytesIO(thumbnail(str(tagged), tmp_path / "t1.jpg"))) as a:
        with Image.open(io.BytesIO(thumbnail(str(upright), tmp_path / "t2.jpg"))) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
    sheets = []
    for path in (tagged, upright):
        row = {"query": str(path), "results": [{"path": str(path), "class": None, "distance": 0}]}
        with Image.open(make_montage([row], tmp_path / f"{path.parent.name}.png")) as im:
            sheets.append(np.asarray(im.convert("RGB")))
    assert np.array_equal(*sheets)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_large_jpeg_is_decoded_reduced_and_upright(orientation):
    data = tagged_jpeg(orientation, h=600, w=1000)  # twice 256 and more on both sides
    smaller, pixels = reduced(data, 256)
    with Image.open(io.BytesIO(smaller)) as im:
        assert im.format == "BMP"
        pixels_seen = np.asarray(im)
    assert pixels_seen.shape == (300, 500, 3) and pixels == 300 * 500  # 1/2: 1/4 is under 256
    full = Image.fromarray(decoded_upright(data)).reduce(2)  # the whole decode, halved
    assert np.abs(pixels_seen.astype(int) - np.asarray(full)).mean() < 2
    crops = QueryCrops(Preset(np.zeros(3, np.float32), num_threads=1), batch_size=1)
    seen = crops([np.frombuffer(smaller, np.uint8)])  # what the network sees: upright
    whole = crops([np.frombuffer(png(decoded_upright(data)), np.uint8)])
    assert (seen - whole).abs().mean() < 2
    # not reduced: under twice 256 on a side, not a JPEG, or asked for all of it
    assert reduced(tagged_jpeg(orientation, h=500, w=1000), 256) is None
    assert reduced(png(decoded_upright(data)), 256) is None
    assert reduced(data[: len(data) // 2], 256) is None  # truncated: check_image says why
    ((_, whole),) = read_images(data).batches(1)
    assert np.array_equal(whole[0], np.frombuffer(data, np.uint8))
    ((_, small),) = read_images(data).batches(1, reduce=256)
    assert np.array_equal(small[0], np.frombuffer(smaller, np.uint8))


def test_a_truncated_large_jpeg_is_skipped_with_its_reason():
    data = tagged_jpeg(1, h=600, w=1000)
    images = read_images([data, data[: len(data) // 2]])
    ((names, _),) = images.batches(4, reduce=256)
    assert names == ["image 1"]
    ((name, why),) = images.skipped
    assert name == "image 2" and "corrupt or truncated" in why


def test_batches_are_bounded_by_decoded_pixels():
    images = [png(upright_picture(100, 100)) for _ in range(5)]
    sizes = [len(b) for _, b in read_images(images).batches(4, max_pixels=25_000)]
    assert sizes == [2, 2, 1]  # 10,000 pixels each: a third would pass 25,000
    sizes = [len(b) for _, b in read_images(images).batches(4, max_pixels=5_000)]
    assert sizes == [1] * 5  # an image over the bound is a batch of its own
    sizes = [len(b) for _, b in read_images(images).batches(4)]
    assert sizes == [4, 1]


@pytest.mark.parametrize("orientation", [1, 5, 6, 8])
def test_large_photos_are_drawn_reduced_and_upright(orientation, tmp_path):
    tagged, upright = tmp_path / "tagged.jpg", tmp_path / "upright.png"
    tagged.write_bytes(tagged_jpeg(orientation, h=600, w=1000))
    Image.fromarray(decoded_upright(tagged.read_bytes())).save(upright)
    with Image.open(tagged) as im:
        im.draft(im.mode, (128, 128))
        assert im.size in ((250, 150), (150, 250))  # what open_image(tagged, 128) decodes
    a = np.asarray(centre_square(str(tagged), 128), np.int16)
    b = np.asarray(centre_square(str(upright), 128), np.int16)
    assert np.abs(a - b).mean() < 4  # the same picture, the same way up


# --- every kind of image, everywhere ---------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return indexed_run(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def photo(run) -> Path:
    """An indexed training image: row 5 of the index."""
    train = alexnet.collection(run).open()
    return Path(split_files(train.trained.manifest, "train")[0][5])


def as_kind(photo: Path, kind: str):
    """The photo as a user may pass it."""
    data = photo.read_bytes()
    with Image.open(photo) as im:
        pixels = np.asarray(im.convert("RGB"))
        picture = im.copy()
    return {
        "path": photo,
        "str": str(photo),
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "PIL image": picture,
        "array": pixels,
        "list": [data],
    }[kind]


KINDS = ["path", "str", "bytes", "bytearray", "memoryview", "PIL image", "array", "list"]
ENCODED = {"path", "str", "bytes", "bytearray", "memoryview", "list"}  # the file's own bytes


@pytest.mark.parametrize("kind", KINDS)
def test_features_take_every_kind_of_image(run, photo, kind):
    model = alexnet.load(run)
    x = model.features(as_kind(photo, kind))
    assert x.shape == (1, 4096) and x.dtype == np.float32
    if kind in ENCODED:
        stored = load_features(RunPaths(run).index)[5]  # what the index holds for the photo
        assert np.array_equal(x[0], stored.astype(np.float32))
    else:  # decoded pixels, the same for both
        other = "array" if kind == "PIL image" else "PIL image"
        assert np.array_equal(x, model.features(as_kind(photo, other)))


@pytest.mark.parametrize("kind", KINDS)
def test_predict_takes_every_kind_of_image(run, photo, kind):
    model = alexnet.load(run)
    (record,) = model.predict(as_kind(photo, kind), top=2)
    name = str(photo) if kind in ("path", "str") else "image 1"
    assert record["image"] == name and len(record["top"]) == 2
    if kind in ENCODED:
        assert record["top"] == model.predict(photo, top=2)[0]["top"]


@pytest.mark.parametrize("kind", KINDS)
def test_search_takes_every_kind_of_image(run, photo, kind):
    train = alexnet.collection(run)
    (query,) = train.search(as_kind(photo, kind), k=3)["queries"]
    if kind in ENCODED:
        assert query["results"] == train.search([photo], k=3)["queries"][0]["results"]
        assert query["results"][0]["hamming"] == 0
    else:
        assert len(query["results"]) == 3


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "PIL image", "array"])
def test_serve_takes_an_upload_of_every_kind(run, photo, kind):
    image = as_kind(photo, kind)  # on the wire, any of them is the bytes of an encoded file
    body = bytes(image) if kind in ENCODED else png(np.asarray(image))
    client = TestClient(create_app(run))
    reply = client.post("/api/search", files={"image": ("mine.jpg", body)}, data={"k": "3"})
    assert reply.status_code == 200, reply.text
    (query,) = reply.json()["queries"]
    assert query["query"] == "mine.jpg"
    if kind in ENCODED:
        assert (
            query["results"]
            == alexnet.collection(run).search([photo], k=3)["queries"][0]["results"]
        )


def test_one_bad_image_of_several_is_skipped_alone_it_is_an_error(run, photo, tmp_path):
    model = alexnet.load(run)
    records = model.predict([photo, b"not an image", tmp_path / "gone.jpg"], top=1)
    assert [r["image"] for r in records] == [str(photo)]
    with pytest.raises(AlexnetError, match="image 2 cannot be used: not an image"):
        model.features([photo, b"not an image"])  # one row per image: none left out
    with pytest.raises(AlexnetError, match="gone.jpg cannot be used: does not exist"):
        model.predict(tmp_path / "gone.jpg")
    with pytest.raises(AlexnetError, match="cannot use a float as an image"):
        read_images([photo, 3.0])


# --- one fc7 ---------------------------------------------------------------------------------


def test_an_indexed_image_finds_itself_at_fc7_distance_zero(run, photo):
    train = alexnet.collection(run)
    files, _ = split_files(train.open().trained.manifest, "train")
    result = train.search(files, k=1, rerank=12)  # every training image, in batches
    for i, query in enumerate(result["queries"]):
        (best,) = query["results"]
        assert best["id"] == i and best["distance"] <= 1e-6, (i, best)


def test_an_images_fc7_is_the_same_bits_in_any_batch():
    import torch

    from alexnet.model.alexnet import AlexNet, AlexNetConfig

    torch.manual_seed(0)
    net = AlexNet(AlexNetConfig(num_classes=10)).eval()
    x = torch.randn(24, 3, 224, 224) * 50
    full = net.fc7(x)
    for rows in ([0], [5, 6, 7], list(range(9)), [23]):
        assert torch.equal(net.fc7(x[rows]), full[rows]), rows


def test_a_gallery_of_large_photos_finds_each_photo_itself(run, tmp_path):
    """A gallery's photos are decoded reduced when indexed and when queried alike: a photo
    of the gallery gets its own row back, from search and from features()."""
    folder = tmp_path / "phone"
    folder.mkdir()
    for i, orientation in enumerate((1, 6, 3)):
        (folder / f"{i}.jpg").write_bytes(tagged_jpeg(orientation, h=520 + 40 * i, w=700))
    gallery = alexnet.collection(run, "phone")
    gallery.update(folder, progress=False)
    files = sorted(str(f) for f in folder.iterdir())
    rows = np.asarray(load_features(gallery.paths)[:3], np.float32)
    assert np.array_equal(alexnet.load(run).features(files), rows)
    for i, query in enumerate(gallery.search(files, k=1, rerank=3)["queries"]):
        (best,) = query["results"]
        assert best["path"] == files[i] and best["distance"] <= 1e-6, (i, best)
    full = query_features(gallery.trained, files)  # decoded whole: other pixels
    assert not np.array_equal(full, rows)
