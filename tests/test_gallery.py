"""Galleries: built, searched, updated (add, change, delete), kept usable through a kill,
refused when stale; --jsonl; near-duplicates; sharded extraction under torchrun.

The run is the retrieval tests' tiny one (untrained network, an autoencoder of a few
updates); the photos are real ones from imagenette-mini, copied into a temporary folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from fixtures import torchrun
from PIL import Image, ImageOps
from retrieval_fixtures import indexed_run

from alexnet import collection
from alexnet.cli.main import Group
from alexnet.cli.search import register
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths
from alexnet.retrieval import collection as C
from alexnet.retrieval import update as U
from alexnet.retrieval.duplicates import candidate_pairs, components
from alexnet.retrieval.index import hamming


@click.group(cls=Group)
def cli():
    """The retrieval commands, as alexnet.cli.main registers them."""


register(cli)


def invoke(*args, code: int = 0):
    """A command's result, checked for its exit code (galleries here are indexed with -b 4:
    the network always runs full batches)."""
    result = CliRunner().invoke(cli, [*map(str, args), "-q"])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The tiny run with its training-set index built (the galleries' autoencoder)."""
    return indexed_run(tmp_path_factory.mktemp("gallery"))


def photos(folder: Path, sources: list[str]) -> Path:
    """Real photos in nested folders: some in a folder named after a class of the run."""
    for i, f in enumerate(sources):
        sub = folder / ("red" if i % 3 == 0 else f"trip/day{i % 2}")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, sub / f"photo {i}.JPG")
    return folder


def open_gallery(run: Path, name: str) -> C.Collection:
    return collection(run, name).open()


def index_gallery(run: Path, folder: Path, name: str, **options) -> dict:
    return collection(run, name).update(folder, **options)


def features_by_path(gi: C.Collection) -> dict[str, np.ndarray]:
    return {
        str(p): np.asarray(gi.features[r])
        for p, r in zip(gi.table.paths, gi.table.rows, strict=True)
    }


def test_a_gallery_is_built_searched_and_labelled(run, real_jpegs, tmp_path):
    folder = photos(tmp_path / "photos", real_jpegs[:6])
    (folder / "broken.jpg").write_bytes(b"not a photo")
    out = invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "trip").output
    assert "gallery trip: 6 images (6 added, 0 updated, 0 removed, 1 skipped)" in out
    assert "broken.jpg" in out  # listed with its reason

    query = folder / "trip/day1/photo 1.JPG"
    result = json.loads(
        invoke("search", query, "--run", run, "--gallery", "trip", "-k", 3, "--json").output
    )
    [row] = result["queries"]
    best = row["results"][0]
    assert best["path"] == str(query.resolve()) and best["hamming"] == 0
    assert best["class"] is None and "class" not in row  # "trip" names no class of the run
    labelled = json.loads(
        invoke(
            "search",
            folder / "red/photo 0.JPG",
            "--run",
            run,
            "--gallery",
            "trip",
            "-k",
            3,
            "--json",
        ).output
    )["queries"][0]
    assert labelled["class"] == "red" and labelled["results"][0]["class_id"] == "red"
    table = invoke("search", query, "--run", run, "--gallery", "trip", "-k", 6).output
    assert "   1     0       trip/day1/photo 1.JPG\n" in table  # paths relative to DIR
    sheet = tmp_path / "sheet.png"
    invoke("search", query, "--run", run, "--gallery", "trip", "-k", 3, "--montage", sheet)
    assert Image.open(sheet).size[0] > 0

    # the same searches through the library: ids are feature rows, files come back by id
    gi = open_gallery(run, "trip")
    assert gi.file(best["id"]) == best["path"]
    assert gi.thumbnail(best["id"])[:2] == b"\xff\xd8"


def test_an_update_adds_changes_and_drops_files_exactly(run, real_jpegs, tmp_path):
    folder = photos(tmp_path / "photos", real_jpegs[:6])
    invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "upd")
    before = features_by_path(open_gallery(run, "upd"))

    gone = folder / "trip/day0/photo 2.JPG"
    gone.unlink()
    changed = folder / "trip/day1/photo 1.JPG"
    ImageOps.mirror(Image.open(changed)).save(changed)
    shutil.copy(real_jpegs[10], folder / "new.jpg")
    out = invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "upd").output
    assert "6 images (1 added, 1 updated, 1 removed" in out

    gi = open_gallery(run, "upd")
    after = features_by_path(gi)
    now = {str(p.resolve()) for p in folder.rglob("*") if p.is_file()}
    assert set(after) == now and len(gi) == 6
    for path in now - {str(changed.resolve()), str((folder / "new.jpg").resolve())}:
        assert np.array_equal(after[path], before[path])  # untouched rows are kept
    assert not np.array_equal(after[str(changed.resolve())], before[str(changed.resolve())])

    # every gallery image is found, and nothing else: search the whole gallery
    result = gi.search(sorted(now), k=6)
    for row in result["queries"]:
        assert {r["path"] for r in row["results"]} == now
        assert row["results"][0]["path"] == row["query"]

    # an update is what a fresh build of the same folder gives
    invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "fresh")
    fresh = open_gallery(run, "fresh")
    for path, vector in features_by_path(fresh).items():
        np.testing.assert_array_equal(vector, after[path])
    codes = dict(zip(fresh.table.paths, fresh.table.codes.tolist(), strict=True))
    assert codes == dict(zip(gi.table.paths, gi.table.codes.tolist(), strict=True))

    # nothing new: nothing read
    out = invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "upd").output
    assert "(0 added, 0 updated, 0 removed" in out


def test_above_the_threshold_a_gallery_has_an_ivf_index_kept_across_updates(
    run, real_jpegs, tmp_path
):
    folder = photos(tmp_path / "photos", real_jpegs[:6])
    args = ("index", "-b", 4, "--run", run, "--images", folder, "--name", "big")
    out = invoke(*args, "--approx-threshold", 5).output  # 6 images > 5
    assert "6 added" in out and "ivf index (nprobe 1 of 1 lists)" in out
    folder_of = RunPaths(run).gallery("big").folder
    record = json.loads((folder_of / "codes.json").read_text())
    assert (record["kind"], record["trained_on"], record["lists"]) == ("ivf", 6, 1)
    assert record["index"] in record["files"] and record["recall_at_10"] == 1.0
    first = record["index"]

    gi = open_gallery(run, "big")
    assert gi.kind == "ivf" and gi.index.nprobe == record["nprobe"] and gi.index.ntotal == 6
    every = sorted(str(p.resolve()) for p in folder.rglob("*.JPG"))
    for row in gi.search(every, k=6)["queries"]:  # one list: the search is exact
        assert row["results"][0]["path"] == row["query"] and len(row["results"]) == 6

    (folder / "red/photo 0.JPG").unlink()
    out = invoke(*args, "--approx-threshold", 5).output  # 5 images: flat again
    assert "1 removed" in out and "flat index" in out
    record = json.loads((folder_of / "codes.json").read_text())
    assert record["kind"] == "flat" and "index" not in record
    assert not (folder_of / first).exists()  # the previous update's index is removed

    shutil.copy(real_jpegs[12], folder / "a.jpg")
    shutil.copy(real_jpegs[13], folder / "b.jpg")
    index_gallery(run, folder, "big", approx_threshold=5, progress=False)  # 7 images: IVF
    record = json.loads((folder_of / "codes.json").read_text())
    assert (record["kind"], record["trained_on"]) == ("ivf", 7)
    shutil.copy(real_jpegs[14], folder / "c.jpg")
    index_gallery(run, folder, "big", approx_threshold=5, progress=False, compact=True)
    again = json.loads((folder_of / "codes.json").read_text())
    assert again["trained_on"] == 7 and again["count"] == 8  # its lists kept: < 2x
    assert again["index"] in again["files"] and "compacted" not in again
    gi = open_gallery(run, "big")  # compacted: the index is still the record's, verified
    assert gi.kind == "ivf" and gi.index.ntotal == 8
    found = gi.search([folder / "c.jpg"], k=1)["queries"][0]["results"][0]
    assert found["path"] == str((folder / "c.jpg").resolve())


def test_a_killed_update_leaves_the_previous_gallery_usable(run, real_jpegs, tmp_path):
    folder = photos(tmp_path / "photos", real_jpegs[:4])
    invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "kill")
    query = str((folder / "red/photo 0.JPG").resolve())
    expected = open_gallery(run, "kill").search([query], k=4)["queries"]
    before = features_by_path(open_gallery(run, "kill"))
    for f in real_jpegs[4:7]:
        shutil.copy(f, folder / Path(f).name)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill would stop it: nothing after this runs

    for stage in ("extract_rows", "write_json"):  # mid-extraction; just before the commit
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(U, stage, killed)
            with pytest.raises(KeyboardInterrupt):
                index_gallery(run, folder, "kill", batch_size=4, progress=False)
        gi = open_gallery(run, "kill")
        assert len(gi) == 4
        assert gi.search([query], k=4)["queries"] == expected
        after = features_by_path(gi)
        assert (
            all(np.array_equal(after[p], before[p]) for p in before)
            and after.keys() == before.keys()
        )

    (folder / "trip/day1/photo 1.JPG").unlink()
    record = index_gallery(run, folder, "kill", batch_size=4, progress=False)
    assert (record["added"], record["updated"], record["removed"]) == (3, 0, 1)
    assert len(open_gallery(run, "kill")) == 6
    assert len(list(RunPaths(run).gallery("kill").folder.glob("files.*.npz"))) == 1


def test_a_stale_or_unknown_gallery_is_refused_with_one_line(run, real_jpegs, tmp_path):
    folder = photos(tmp_path / "photos", real_jpegs[:3])
    invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "stale")
    index = RunPaths(run).index
    for changed in (RunPaths(run).best, index.autoencoder):
        st = changed.stat()
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        try:
            out = invoke(
                "search", folder / "red", "--run", run, "--gallery", "stale", code=2
            ).output
        finally:
            os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert f"`alexnet index` on {run} with --images {folder.resolve()} and --name stale" in out
        assert len(out.strip().splitlines()) == 1
    out = invoke("search", folder / "red", "--run", run, "--gallery", "nope", code=2).output
    assert "no gallery 'nope' (galleries: " in out and "stale" in out
    out = invoke(
        "index", "-b", 4, "--run", run, "--images", folder, "--name", "../x", code=2
    ).output
    assert "gallery name" in out
    out = invoke("index", "--run", run, "--name", "x", code=2).output
    assert "--images" in out


def test_jsonl_streams_one_line_per_query_as_batches_complete(
    run, real_jpegs, tmp_path, monkeypatch, caplog
):
    folder = photos(tmp_path / "photos", real_jpegs[:5])
    invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "lines")
    queries = tmp_path / "queries"
    photos(queries, real_jpegs[5:12])
    (queries / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    with caplog.at_level(logging.WARNING, logger="alexnet"):  # the skipped image, logged
        args = ["search", str(queries), "--run", str(run), "--gallery", "lines", "-k", "2"]
        out = CliRunner().invoke(cli, [*args, "--jsonl"])
    assert out.exit_code == 0 and "broken.jpg cannot be used" in caplog.text
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 7 and len({r["query"] for r in rows}) == 7
    assert all(len(r["results"]) == 2 for r in rows)

    # lazily: the first lines come before the later batches are computed
    monkeypatch.setattr(C, "QUERY_BATCH", 2)
    calls = []
    features = C.query_features
    monkeypatch.setattr(C, "query_features", lambda *a, **kw: calls.append(1) or features(*a, **kw))
    gi = open_gallery(run, "lines")
    stream = gi.stream(sorted(map(str, queries.rglob("*.JPG"))), k=2)  # 7 photos
    first = next(stream)
    assert len(calls) == 1 and first["results"]
    assert len([first, *stream]) == 7 and len(calls) == 4


def test_candidate_pairs_match_a_popcount_scan():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (300, 4), dtype=np.uint8)
    codes[1::7] = codes[::7][: len(codes[1::7])] ^ np.uint8(1)  # some pairs 1 bit apart
    for d in (0, 1, 6, 9):
        pairs, dists = candidate_pairs(codes, d)
        H = hamming(codes, codes)
        i, j = np.nonzero(np.triu(H <= d, 1))
        assert pairs.tolist() == np.stack([i, j], 1).tolist()
        assert dists.tolist() == H[i, j].tolist()
    assert components(5, np.array([[0, 3], [3, 4], [1, 2]])) == [[0, 3, 4], [1, 2]]


def test_planted_copies_are_grouped_and_distinct_photos_are_not(run, real_jpegs, tmp_path):
    folder = photos(tmp_path / "photos", real_jpegs[:10])
    planted = {}
    for i in (0, 4):
        original = next(folder.rglob(f"photo {i}.JPG"))
        im = Image.open(original).convert("RGB")
        copies = folder / "copies"
        copies.mkdir(exist_ok=True)
        small, coarse, mirrored = (copies / f"{i}_{k}.jpg" for k in ("small", "q25", "mirror"))
        im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BICUBIC).save(small)
        im.save(coarse, quality=25)
        ImageOps.mirror(im).save(mirrored, quality=90)
        planted[i] = sorted(str(p.resolve()) for p in (original, small, coarse, mirrored))
    invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "dups")
    gi = open_gallery(run, "dups")
    assert gi.autoencoder.config.classes == 3  # the run's default codes: label-aware
    for i in (0, 4):  # a resized copy finds its own photo first (fc7 re-rank of every image)
        small = str((folder / "copies" / f"{i}_small.jpg").resolve())
        found = gi.search([small], k=2, rerank=len(gi))["queries"][0]
        assert [r["path"] for r in found["results"]][1] in planted[i], found
    # The untrained test network and its autoencoder of a few updates give loose codes:
    # every pair is a candidate here, so that fc7 alone decides (defaults: BENCHMARKS.md).
    bits = gi.table.codes.shape[1] * 8
    report = gi.duplicates(max_distance=bits, max_fc7=0.15, progress=False)
    assert sorted(g["images"] for g in report["groups"]) == sorted(planted.values())
    assert any(p["mirrored"] for g in report["groups"] for p in g["pairs"])
    without = gi.duplicates(max_distance=bits, max_fc7=0.15, mirrors=False, progress=False)
    assert sorted(g["images"] for g in without["groups"]) != sorted(planted.values())

    out = invoke(
        "duplicates", "--run", run, "--gallery", "dups", "--max-distance", bits, "--max-fc7", 0.15
    ).output
    assert "2 groups of near-duplicates (8 images" in out
    saved = json.loads(RunPaths(run).gallery("dups").duplicates.read_text())
    assert [g["images"] for g in saved["groups"]] == [g["images"] for g in report["groups"]]
    for n in range(2):
        assert Image.open(RunPaths(run).gallery("dups").duplicate_sheet(n)).size[0] > 0


def test_sharded_extraction_gives_the_single_process_features(run, real_jpegs, tmp_path):
    folder = photos(tmp_path / "photos", real_jpegs[:7])
    index_gallery(run, folder, "one", batch_size=4, progress=False)
    done = torchrun(
        "index",
        "--run",
        str(run),
        "--images",
        str(folder),
        "--name",
        "two",
        "--batch-size",
        "4",
        "-q",
    )
    assert done.returncode == 0, done.stderr[:9000]
    assert done.stdout.count("gallery two: 7 images (7 added") == 1  # printed by rank 0 only
    one, two = open_gallery(run, "one"), open_gallery(run, "two")
    a, b = features_by_path(one), features_by_path(two)
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_array_equal(a[path], b[path])
    assert np.array_equal(one.table.codes, two.table.codes)


def test_a_gallery_update_refuses_bad_folders(run, tmp_path):
    with pytest.raises(AlexnetError, match="not a folder"):
        index_gallery(run, tmp_path / "missing", "x", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlexnetError, match="no usable images"):
        index_gallery(run, tmp_path / "empty", "x", progress=False)


def test_serve_offers_a_gallery(run, real_jpegs, tmp_path):
    from fastapi.testclient import TestClient

    from alexnet.cli.web import create_app

    folder = photos(tmp_path / "photos", real_jpegs[:4])
    index_gallery(run, folder, "web", batch_size=4, progress=False)
    client = TestClient(create_app(run, galleries=["web"]))
    assert client.get("/api/info").json()["galleries"] == ["web"]
    query = folder / "red/photo 0.JPG"
    with open(query, "rb") as f:
        answer = client.post("/api/search", files={"image": f}, data={"k": 2, "gallery": "web"})
    best = answer.json()["queries"][0]["results"][0]
    assert best["path"] == str(query.resolve()) and best["hamming"] == 0
    thumb = client.get(f"/api/thumb/{best['id']}", params={"gallery": "web"})
    assert thumb.headers["content-type"] == "image/jpeg"
    with pytest.raises(AlexnetError, match="no gallery 'nope'"):
        create_app(run, galleries=["nope"])
