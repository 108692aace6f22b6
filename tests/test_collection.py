"""The Python API of collections: the training set and a gallery through one type, updates
that change nothing the second time, and the same records as `alexnet search --json`.

The run is the retrieval tests' tiny one (3 classes x 6 generated JPEGs, an untrained
checkpoint, an autoencoder of a few updates); the gallery is a second folder of generated
images, some in folders named after the run's classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures import class_image
from PIL import Image
from retrieval_fixtures import CLASSES, indexed_run

import alexnet
from alexnet.cli.main import cli
from alexnet.pipeline.errors import AlexnetError
from alexnet.retrieval import Collection


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return indexed_run(tmp_path_factory.mktemp("collection"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """7 images: 4 in a folder named after a class of the run, 3 elsewhere."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(7):
        folder = root / (CLASSES[1] if i < 4 else "holiday")
        folder.mkdir(exist_ok=True)
        Image.fromarray(class_image(i % 3, 1000 + i)).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def gallery(run, photos) -> Collection:
    record = alexnet.collection(run, "photos").update(photos, batch_size=4, progress=False)
    assert (record["count"], record["added"]) == (7, 7)
    return alexnet.collection(run, "photos")


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def test_the_training_set_and_a_gallery_are_one_type(run, gallery, photos):
    train = alexnet.collection(run)
    assert type(train) is type(gallery) is Collection
    assert [c.name for c in alexnet.collections(run)] == [None, "photos"]
    assert (len(train), len(gallery)) == (12, 7)
    query = photos / "holiday" / "5.jpg"
    for c in (train, gallery):
        result = c.search([query], k=3)
        assert result["bits"] == 64 and result["index"] == "flat"
        [row] = result["queries"]
        assert row["query"] == str(query) and "class" not in row  # "holiday" is no class
        for r in row["results"]:
            assert set(r) == {"rank", "id", "path", "class", "class_id", "hamming", "distance"}
            assert c.file(r["id"]) == r["path"]
        info = c.describe()
        assert info["collection"] == c.name and info["count"] == len(c)
    hit = gallery.search([query], k=1, rerank=7)["queries"][0]["results"][0]  # fc7: no ties
    assert hit["path"] == str(query.resolve()) and hit["hamming"] == 0  # finds itself
    labelled = gallery.search([photos / CLASSES[1] / "0.jpg"], k=7)["queries"][0]
    assert labelled["class_id"] == CLASSES[1]  # the query's folder names a class
    classes = {Path(r["path"]).parent.name: r["class_id"] for r in labelled["results"]}
    assert classes == {CLASSES[1]: CLASSES[1], "holiday": None}
    assert all(r["class_id"] == Path(r["path"]).parent.name for r in train.search(
        [query], k=12)["queries"][0]["results"])  # fmt: skip


def test_update_is_idempotent(run, gallery, photos):
    train = alexnet.collection(run)
    queries = sorted(str(p) for p in photos.rglob("*.jpg"))
    before = [c.search(queries, k=4)["queries"] for c in (train, gallery)]
    index_files, gallery_files = stamps(train.paths.folder), stamps(gallery.paths.folder)
    again = train.update(progress=False)
    assert again["count"] == 12 and stamps(train.paths.folder) == index_files
    record = gallery.update(batch_size=4, progress=False)  # its own folder by default
    assert (record["added"], record["updated"], record["removed"]) == (0, 0, 0)
    assert stamps(gallery.paths.folder) == gallery_files  # nothing rewritten
    assert [c.search(queries, k=4)["queries"] for c in (train, gallery)] == before


def test_search_records_equal_the_cli_json(run, gallery, photos):
    query = photos / CLASSES[1] / "2.jpg"
    for name in (None, "photos"):
        options = ["--gallery", name] if name else []
        args = ["search", str(query), "--run", str(run), "-k", "4", "--rerank", "6", "--json"]
        out = CliRunner().invoke(cli, [*args, *options, "-q"])
        assert out.exit_code == 0, out.output
        printed = json.loads(out.stdout)
        library = alexnet.collection(run, name).search([query], k=4, rerank=6)
        assert printed.pop("query_ms") > 0 and library.pop("query_ms") > 0  # timings differ
        assert printed == json.loads(json.dumps({"run": str(run), **library}))


def test_images_are_paths_folders_bytes_pil_images_and_arrays(run, photos):
    train = alexnet.collection(run)
    path = photos / "holiday" / "4.jpg"
    with Image.open(path) as im:
        pil = im.convert("RGB")
    expected = train.search([path], k=3)["queries"][0]["results"]
    answers = train.search([path.read_bytes(), pil, np.asarray(pil)], k=3)["queries"]
    assert [a["query"] for a in answers] == ["image 1", "image 2", "image 3"]
    assert answers[0]["results"] == expected  # the same bytes
    assert answers[1]["results"] == answers[2]["results"]  # the same pixels, losslessly
    folder = train.search([photos / "holiday"], k=3)["queries"]
    assert [q["query"] for q in folder] == sorted(str(p) for p in (photos / "holiday").iterdir())
    assert folder[0]["results"] == expected  # 4.jpg, the first of 4, 5, 6


def test_errors_name_parameters(run, gallery, photos):
    train = alexnet.collection(run)
    with pytest.raises(AlexnetError) as e:
        train.search([photos / "holiday" / "4.jpg"], k=13)
    assert e.value.param == "k" and "`k` must be from 1 to 12" in str(e.value)
    with pytest.raises(AlexnetError, match="`rerank`"):
        gallery.search([photos / "holiday" / "4.jpg"], k=3, rerank=-1)
    with pytest.raises(AlexnetError, match="`folder` is for galleries"):
        train.update(photos)
    with pytest.raises(AlexnetError, match="pass the `folder` of images"):
        alexnet.collection(run, "new").update()
    with pytest.raises(AlexnetError, match=r"gallery name '\.\./x' \(`name`\)"):
        alexnet.collection(run, "../x")
    with pytest.raises(AlexnetError, match="no gallery 'nope' \\(galleries: photos\\)"):
        len(alexnet.collection(run, "nope"))
    with pytest.raises(AlexnetError, match="there is no image 99"):
        gallery.file(99)
    with pytest.raises(AlexnetError, match="no validation images"):
        gallery.evaluate()
