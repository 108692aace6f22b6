"""End to end on a tiny run: features, autoencoder, index, search, eval-retrieval, the CLI.

The run (3 classes x 6 generated JPEGs, an untrained checkpoint) is made once per module; the
autoencoder is shrunk to a few updates so that the whole file runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from fixtures import make_images
from PIL import Image
from retrieval_fixtures import CLASSES, QuickConfig, make_run

from alexnet import collection
from alexnet.cli.main import Group
from alexnet.cli.search import register
from alexnet.model.inference import load_trained
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.manifest import split_files
from alexnet.retrieval import autoencoder as ae
from alexnet.retrieval import features as F
from alexnet.retrieval import store


@click.group(cls=Group)
def cli():
    """A stand-in for alexnet.cli.main.cli with the retrieval commands registered."""


register(cli)


@contextlib.contextmanager
def capture_log():
    """What the library logs (as the real CLI prints it), for checks on its messages."""
    out, logger = io.StringIO(), logging.getLogger("alexnet")
    handler, level = logging.StreamHandler(out), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


NAMES = {"red": "poppy red", "green": "leaf green", "blue": "sky blue"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The images, and display names for their classes in classes.json (as imagenette's)."""
    root = make_images(
        tmp_path_factory.mktemp("retrieval") / "data", train=6, val=None, names=CLASSES
    )
    (root / "classes.json").write_text(json.dumps(NAMES))
    return root


@pytest.fixture(scope="module")
def built(data, tmp_path_factory):
    """The run, its index built by the first `search` (which must say so)."""
    run = make_run(data, tmp_path_factory.mktemp("retrieval") / "run")
    with pytest.MonkeyPatch.context() as mp, capture_log() as log:
        mp.setattr(ae, "AutoencoderConfig", QuickConfig)
        result = invoke("search", data / "red" / "0.jpg", "--run", run, "-k", 3)
    return run, result, log.getvalue()


@pytest.fixture(scope="module")
def run(built) -> Path:
    return built[0]


def mtimes(run: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in (run / "index").iterdir()}


def test_search_builds_the_index_on_first_use(built):
    run, result, log = built
    assert result.exit_code == 0, result.output
    assert "building it now" in log
    for name in (
        "features.f16.npy",
        "features.json",
        "autoencoder.pt",
        "codes.u8.npy",
        "codes.faissindex",
        "codes.json",
    ):
        assert (run / "index" / name).is_file(), name
    assert not [p for p in (run / "index").iterdir() if p.name.endswith(".tmp")]
    meta = json.loads((run / "index" / "codes.json").read_text())
    assert meta["kind"] == "flat" and meta["count"] == 12 and meta["bits"] == 64


def test_features_are_memory_mapped_float16_in_manifest_order(run):
    feats = F.load_features(RunPaths(run).index)
    assert isinstance(feats, np.memmap) and feats.dtype == np.float16 and feats.shape == (12, 4096)
    assert json.loads((run / "index" / "features.json").read_text())["count"] == 12
    net = load_trained(run)
    files, _ = split_files(net.manifest, "train")
    q = F.query_features(net, [files[7], files[2]], batch_size=2)
    assert np.array_equal(q, feats[[7, 2]].astype(np.float32))  # one fc7, whatever the batch


def test_a_training_image_finds_itself_at_distance_zero(run):
    train = collection(run).open()
    net = train.trained
    files, _ = split_files(net.manifest, "train")
    vectors = F.query_features(net, files)
    D, I = train.neighbours(vectors, 12)
    for i in range(12):
        assert D[i, 0] == 0 and i in I[i][D[i] == 0]  # ties at 0 are possible, itself is one
    D, I = train.neighbours(vectors, 3, rerank_top=12)  # re-rank by fc7: itself first, at 0
    assert I[:, 0].tolist() == list(range(12)) and np.all(D[:, 0] <= 1e-6)
    codes = np.load(RunPaths(run).index.codes)
    assert np.array_equal(ae.encode(train.autoencoder, F.load_features(RunPaths(run).index)), codes)


def test_a_second_build_skips_every_step(run):
    before = mtimes(run)
    collection(run).update(progress=False)
    assert mtimes(run) == before


def test_above_the_size_threshold_the_index_is_ivf_and_its_recall_is_recorded(run):
    train = collection(run)
    try:
        meta = train.update(approx_threshold=5, progress=False)  # 12 images > 5
        saved = json.loads((run / "index" / "codes.json").read_text())
        assert meta["kind"] == saved["kind"] == "ivf" and 0 < saved["recall_at_10"] <= 1
        assert train.kind == "ivf"
        assert 1 <= saved["nprobe"] <= saved["lists"] == 1  # 12 images: one list
        assert train.open().index.nprobe == saved["nprobe"]  # saved with the index
        D, I = train.neighbours(F.load_features(RunPaths(run).index).astype(np.float32), 1)
        assert (D[:, 0] == 0).all()
    finally:
        assert train.update(progress=False)["kind"] == "flat"  # as the others expect


def test_interrupted_extraction_is_redone_not_taken_as_complete(run, monkeypatch):
    net = load_trained(run)
    paths, source = RunPaths(run).index, F.source_identity(net)
    before = F.load_features(paths).copy()

    def broken(net, batches):
        yield np.zeros((len(next(batches)), 4096), np.float32)
        raise KeyboardInterrupt

    def problem():
        return store.problem(paths, store.read_record(paths), source)

    monkeypatch.setattr(F, "fc7_batches", broken)
    paths.features_meta.unlink()  # features to redo: as after a new checkpoint
    with pytest.raises(KeyboardInterrupt):
        collection(run).update(batch_size=4, progress=False)
    assert F.complete_rows(paths, source) == 0
    assert not [p for p in (run / "index").iterdir() if p.name.endswith(".tmp")]
    assert problem() == "the fc7 features are missing or incomplete"
    monkeypatch.undo()
    collection(run).update(progress=False)  # redoes the features only
    assert F.complete_rows(paths, source) == 12 and problem() is None
    assert np.array_equal(F.load_features(paths), before)


def test_search_cli_output_json_montage_and_folder(run, data, tmp_path):
    result = invoke("search", data / "green" / "0.jpg", "--run", run, "-k", 2)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{run / 'checkpoints' / 'best.pt'}, 64-bit codes, flat index; ")
    assert lines[2] == f"query: {data / 'green' / '0.jpg'} (leaf green)"  # the query's class
    assert lines[3].split() == ["rank", "bits", "class", "path"]
    assert lines[4].split()[:2] == ["1", "0"] and lines[4].endswith("  green/0.jpg")  # relative
    assert "  leaf green  " in lines[4]  # the display name, not the folder name

    result = invoke(
        "search",
        data / "blue",
        "--run",
        run,
        "-k",
        4,
        "--rerank",
        8,
        "--json",
        "--montage",
        tmp_path / "sheet.png",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [Path(q["query"]).name for q in out["queries"]] == [f"{i}.jpg" for i in range(6)]
    assert out["distance"] == "fc7 euclidean"
    for q in out["queries"]:
        assert [r["rank"] for r in q["results"]] == [1, 2, 3, 4]
        assert [r["distance"] for r in q["results"]] == sorted(r["distance"] for r in q["results"])
        assert {"path", "class", "class_id", "hamming", "id"} <= set(q["results"][0])
        for r in q["results"]:
            assert r["class_id"] == Path(r["path"]).parent.name
            assert r["class"] == NAMES[r["class_id"]]
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.format == "PNG" and im.size[0] > 5 * 128 and im.size[1] > 6 * 128


def test_index_cli_skips_a_current_index(run):
    before = mtimes(run)
    result = invoke("index", "--run", run)
    assert result.exit_code == 0, result.output
    assert "flat index of 12 images, 64-bit autoencoder codes (8 bytes per image)" in result.output
    assert mtimes(run) == before


def test_library_search_takes_paths_bytes_and_arrays_alike(run, data):
    train = collection(run)
    path = Path(split_files(train.open().trained.manifest, "train")[0][5])  # an indexed image
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    by_path = train.search([path], k=3)
    by_bytes = train.search([path.read_bytes(), png.getvalue(), pixels], k=3, names=["a", "b", "c"])
    assert by_path["bits"] == 64 and by_path["index"] == "flat" and by_path["distance"] == "hamming"
    assert by_path["queries"][0]["query"] == str(path)
    assert [q["query"] for q in by_bytes["queries"]] == ["a", "b", "c"]
    expected = by_path["queries"][0]["results"]
    # The file's bytes are the same query; PNG and array are its decoded pixels, losslessly.
    assert by_bytes["queries"][0]["results"] == expected
    assert by_bytes["queries"][1]["results"] == by_bytes["queries"][2]["results"]
    assert any(r["id"] == 5 and r["path"] == str(path) and r["hamming"] == 0 for r in expected)
    with pytest.raises(AlexnetError, match="uint8 HxWx3"):
        train.search([pixels[..., 0]])
    cut = path.read_bytes()[:400]
    # one bad image of several is skipped, with its reason; alone, it is an error
    some = train.search([path.read_bytes(), cut], k=3, names=["whole.jpg", "cut.jpg"])
    assert [q["query"] for q in some["queries"]] == ["whole.jpg"]
    assert some["skipped"][0]["query"] == "cut.jpg" and "corrupt" in some["skipped"][0]["reason"]
    with pytest.raises(AlexnetError, match="cut.jpg cannot be used: corrupt"):
        train.search([cut], names=["cut.jpg"])
    assert train.search([path.read_bytes()], k=3)["queries"][0]["results"] == expected


def test_eval_retrieval_writes_every_mode_and_the_baselines(run):
    result = invoke("eval-retrieval", "--run", run, "--rerank", 5, "--pixel-size", 16)
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "eval_retrieval.json").read_text())
    assert saved["queries"] == 6 and saved["database"] == 12
    assert saved["default_mode"] == "hamming" and saved["code_method"] == "autoencoder"
    assert saved["code_settings"]["classes"] == 3  # the run has labels: label-aware codes
    assert 0 <= saved["modes"]["itq"]["precision_radius_2"] <= 1
    modes = ["hamming", "hamming+rerank", "itq", "pca_sign", "lsh", "pixels_autoencoder"]
    assert list(saved["modes"]) == [*modes, "fc7_euclidean", "pixels_euclidean"]
    for mode in saved["modes"].values():
        assert 0 <= mode["precision_at_10"] <= 1 and 0 < mode["map"] <= 1 and mode["query_ms"] > 0
    for mode in ("hamming", "itq", "pca_sign", "lsh", "pixels_autoencoder"):  # the run's 64 bits
        assert saved["modes"][mode]["bytes_per_image"] == 8
    assert saved["modes"]["fc7_euclidean"]["bytes_per_image"] == 4096 * 2  # float16, streamed
    assert saved["modes"]["pixels_euclidean"]["bytes_per_image"] == 16 * 16 * 3 * 4
    table = result.output.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("mode "))
    assert [line.split()[0] for line in table[header + 1 : header + 9]] == list(saved["modes"])


def test_search_checks_the_files_it_returns_and_only_those(run, data):
    train = collection(run).open()
    query = data / "red" / "1.jpg"
    returned = {r["path"] for r in train.search([query], k=2)["queries"][0]["results"]}
    others = [p for p in split_files(train.trained.manifest, "train")[0] if p not in returned]
    for path, refused in ((others[0], False), (sorted(returned)[0], True)):
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as if rewritten
        try:
            if refused:
                with pytest.raises(AlexnetError, match="changed since prep"):
                    train.search([query], k=2)
            else:
                train.search([query], k=2)
        finally:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("not_an_image", "cannot be used: not an image"),
        ("truncated", "cannot be used: corrupt or truncated"),
        ("empty_folder", "holds no images"),
        ("k_too_large", "must be from 1 to 12 (the images in the training set of run"),
    ],
)
def test_bad_search_input_is_one_clear_error(run, data, tmp_path, case, message):
    query, k = data / "red" / "1.jpg", 2
    if case == "missing":
        query = tmp_path / "nope.jpg"
    elif case == "not_an_image":
        query = tmp_path / "notes.jpg"
        query.write_text("hello")
    elif case == "truncated":
        query = tmp_path / "cut.jpg"
        query.write_bytes((data / "red" / "1.jpg").read_bytes()[:400])
    elif case == "empty_folder":
        query = tmp_path / "empty"
        query.mkdir()
    else:
        k = 13
    before = mtimes(run)
    result = invoke("search", query, "--run", run, "-k", k, "--montage", tmp_path / "m.png")
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert mtimes(run) == before and not (tmp_path / "m.png").exists()


def test_a_run_without_a_checkpoint_is_refused(data, tmp_path):
    run = tmp_path / "untrained"
    from alexnet.pipeline import dataset, manifest

    manifest.save_manifest(dataset.scan(data, val_fraction=1 / 3, threads=1, progress=False), run)
    from alexnet.pipeline.stats import Stats, save_stats

    save_stats(
        Stats(
            np.zeros((256, 256, 3)),
            np.zeros(3),
            np.eye(3),
            np.ones(3),
            np.eye(3),
            12,
            json.loads((run / "manifest.json").read_text())["fingerprint"],
        ),
        run,
    )
    result = invoke("search", data / "red" / "1.jpg", "--run", run)
    assert result.exit_code == 2 and "train first" in result.output
    assert not (run / "index").exists()


def test_a_stale_index_is_refused_by_search_and_rebuilt_by_index(run, data):
    best = run / "checkpoints" / "best.pt"
    st = best.stat()
    os.utime(best, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as if training rewrote it
    try:
        before = mtimes(run)
        result = invoke("search", data / "red" / "1.jpg", "--run", run)
        assert result.exit_code == 2
        assert "stale or incomplete (built from another checkpoint" in result.output
        assert "alexnet index` on" in result.output and mtimes(run) == before
        with pytest.raises(AlexnetError, match="stale"):
            collection(run).open()
        with pytest.MonkeyPatch.context() as mp, capture_log() as log:
            mp.setattr(ae, "AutoencoderConfig", QuickConfig)
            result = invoke("index", "--run", run, "--bits", 32)
        assert result.exit_code == 0, result.output
        assert "rebuilding the index: built from another checkpoint" in log.getvalue()
        assert json.loads(RunPaths(run).index.meta.read_text())["bits"] == 32
        assert invoke("search", data / "red" / "1.jpg", "--run", run).exit_code == 0
    finally:
        os.utime(best, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("bits", ["12", "300"])
def test_bad_bits_are_refused_before_any_work(run, bits):
    before = mtimes(run)
    result = invoke("index", "--run", run, "--bits", bits)
    assert result.exit_code == 2 and "multiple of 8 from 32 to 256" in result.output
    assert mtimes(run) == before
