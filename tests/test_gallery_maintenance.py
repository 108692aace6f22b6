"""Gallery upkeep through the CLI: a new folder's photos found in an old gallery
(`duplicates --against`), and compaction of a gallery's feature file (`index --compact`,
automatic past half dead rows), kept usable through a kill.

The run is the retrieval tests' tiny one (untrained network, an autoencoder of a few
updates); the photos are real ones from imagenette-mini, copied into temporary folders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from retrieval_fixtures import indexed_run

from alexnet import collection
from alexnet.cli.main import cli
from alexnet.pipeline.layout import RunPaths
from alexnet.retrieval import compact as K
from alexnet.retrieval.duplicates import close_codes
from alexnet.retrieval.index import hamming


def invoke(*args, code: int = 0):
    result = CliRunner().invoke(cli, ["-q", *map(str, args)])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return indexed_run(tmp_path_factory.mktemp("maintenance"))


def copy(sources: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in sources:
        shutil.copy(f, folder / Path(f).name)
    return folder


def test_photos_of_a_new_folder_are_found_in_an_old_gallery(run, real_jpegs, tmp_path):
    old = copy(real_jpegs[:6], tmp_path / "old")
    new = copy(real_jpegs[6:9], tmp_path / "new")  # distinct photos: never paired
    planted = {}
    for i, edit in ((0, "resized"), (3, "cropped")):
        original = old / Path(real_jpegs[i]).name
        im = Image.open(original).convert("RGB")
        if edit == "resized":
            im = im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BICUBIC)
        else:  # 3% off each side, re-encoded
            d = im.width * 3 // 100
            im = im.crop((d, d, im.width - d, im.height - d))
        copied = new / f"{edit}.jpg"
        im.save(copied, quality=80)
        planted[str(copied.resolve())] = str(original.resolve())
    # a near-duplicate inside OLD: old is never compared with itself, so it is not reported
    im = Image.open(old / Path(real_jpegs[5]).name)
    im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(old / "old copy.jpg")
    for folder, name in ((old, "old"), (new, "new")):
        invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", name)

    # loose codes of the untrained test network: every pair is a candidate, fc7 decides
    bits = collection(run, "new").bits
    out = invoke(
        "duplicates", "--run", run, "--gallery", "new", "--against", "old",
        "--max-distance", bits, "--max-fc7", 0.15,
    ).output  # fmt: skip
    assert "resized.jpg -> " + Path(real_jpegs[0]).name in out
    assert "cropped.jpg -> " + Path(real_jpegs[3]).name in out
    assert "2 of 5 images of new found in old (7 images; 35 pairs within" in out
    folder = RunPaths(run).gallery("new")
    report = json.loads(folder.against("old").read_text())
    assert {p["image"]: p["original"] for p in report["pairs"]} == planted
    assert len(report["pairs"]) == 2 and all(p["fc7"] <= 0.15 for p in report["pairs"])
    assert report["candidates"] == 5 * 7  # new x old only: no old x old pair
    assert Image.open(folder.against_sheet("old", 0)).size[0] > 0

    out = invoke("duplicates", "--run", run, "--gallery", "new", "--against", "new", code=2)
    assert "--against" in out.output


def test_close_codes_match_a_popcount_scan():
    rng = np.random.default_rng(1)
    codes, queries = (
        rng.integers(0, 256, (200, 2), np.uint8),
        rng.integers(0, 256, (50, 2), np.uint8),
    )
    queries[::5] = codes[:10] ^ np.uint8(4)  # some 1 bit from a code
    for d in (0, 1, 5):
        pairs, dists = close_codes(queries, codes, d)
        H = hamming(queries, codes)
        i, j = np.nonzero(H <= d)
        assert pairs.tolist() == np.stack([i, j], 1).tolist()
        assert dists.tolist() == H[i, j].tolist()


def search(run: Path, name: str, query: str) -> list[tuple]:
    g = collection(run, name)
    [row] = g.search([query], k=len(g), rerank=len(g))["queries"]
    return [(r["path"], r["hamming"], r["distance"]) for r in row["results"]]


def test_compaction_shrinks_the_features_and_survives_a_kill(run, real_jpegs, tmp_path):
    folder = copy(real_jpegs[:6], tmp_path / "photos")
    invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "cmp")
    for f in real_jpegs[:2]:
        (folder / Path(f).name).unlink()
    out = invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "cmp").output
    assert "compacted" not in out  # 2 dead rows of 6: not yet
    paths = RunPaths(run).gallery("cmp")
    size = paths.features.stat().st_size
    query = real_jpegs[3]
    before = search(run, "cmp", query)
    assert len(before) == 4

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill would stop it: the record is never written

    with pytest.MonkeyPatch.context() as mp:  # new features and table written, no record
        mp.setattr(K, "commit", killed)
        invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "cmp", "--compact",
               code=130)  # fmt: skip
    assert paths.compacted(3).features.is_file()  # what the killed compaction left
    assert search(run, "cmp", query) == before
    assert collection(run, "cmp").open().table.rows.tolist() != [0, 1, 2, 3]

    out = invoke(
        "index", "-b", 4, "--run", run, "--images", folder, "--name", "cmp", "--compact"
    ).output
    assert "compacted: 6 feature rows -> 4" in out and "(0 added, 0 updated, 0 removed" in out
    g = collection(run, "cmp").open()
    assert g.table.rows.tolist() == [0, 1, 2, 3]  # ids are rows: renumbered
    assert search(run, "cmp", query) == before
    live = K.live_paths(paths, g.record)
    assert live.features.stat().st_size == size - 2 * 4096 * 2
    assert sorted(p.name for p in paths.folder.glob("features*")) == sorted(
        [live.features.name, live.features_meta.name]
    )
    assert len(list(paths.folder.glob("files.*.npz"))) == 1

    # the compacted file grows as any other; past half dead rows it compacts by itself
    copy(real_jpegs[6:7], folder)
    invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "cmp")
    added = str((folder / Path(real_jpegs[6]).name).resolve())
    assert search(run, "cmp", real_jpegs[6])[0][:2] == (added, 0)
    for f in real_jpegs[2:5]:
        (folder / Path(f).name).unlink()
    out = invoke("index", "-b", 4, "--run", run, "--images", folder, "--name", "cmp").output
    assert "compacted (more than half of its rows were dead): 5 feature rows -> 2" in out
    left = sorted(str((folder / Path(f).name).resolve()) for f in real_jpegs[5:7])
    assert sorted(p for p, _, _ in search(run, "cmp", real_jpegs[6])) == left
