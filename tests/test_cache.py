"""The patch cache (`alexnet prep --cache`): the decoded patches, their record, and loaders that
give the same batches, bit for bit, as decoding the files; a stale cache is ignored aloud."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fixtures import make_images

from alexnet.cli.main import cli
from alexnet.model.checkpoint import load_checkpoint
from alexnet.model.config import TrainConfig
from alexnet.model.distributed import World
from alexnet.model.loaders import eval_loader, train_loader
from alexnet.model.train import fit
from alexnet.pipeline.cache import PATCH_BYTES, cache_bytes, check_cache_space, open_cache
from alexnet.pipeline.dali import SIZE
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.loader import centre_patches
from alexnet.pipeline.manifest import load_manifest, split_files
from alexnet.pipeline.prep import prepare
from alexnet.pipeline.stats import compute_stats, load_stats

CONFIG = TrainConfig(epochs=1, batch_size=4, patience=1, num_threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data"), train=9)  # 18 training, 6 validation


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cached")
    prepare(data, run, cache=True, threads=1, progress=False)
    return run


def batches(loader) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in loader]


def assert_same(a, b) -> None:
    assert [len(y) for _, y in a] == [len(y) for _, y in b]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)  # bit for bit, not close


def test_the_cache_holds_every_patch_in_manifest_order_with_its_record(run):
    paths = RunPaths(run)
    manifest = load_manifest(run)
    patches = open_cache(run, manifest)
    n = len(manifest.files)
    assert patches.shape == (n, SIZE, SIZE, 3) and patches.dtype == np.uint8
    assert paths.cache_patches.stat().st_size == cache_bytes(n) and PATCH_BYTES == 196_608
    for split in ("train", "val"):
        files, _ = split_files(manifest, split)
        decoded = np.concatenate(list(centre_patches(files, batch_size=5, num_threads=1)))
        np.testing.assert_array_equal(patches[manifest.files.positions(split)], decoded)
    record = json.loads(paths.cache_record.read_text())
    assert record["fingerprint"] == manifest.fingerprint
    assert record["shape"] == [n, SIZE, SIZE, 3] and record["order"] == "manifest"
    # the statistics are those prep computes without the cache, to the last bit
    stats = load_stats(run, manifest.fingerprint)
    files, _ = split_files(manifest, "train")
    plain = compute_stats(files, manifest.fingerprint, num_threads=1, progress=False)
    np.testing.assert_array_equal(stats.mean_image, plain.mean_image)
    np.testing.assert_array_equal(stats.cov, plain.cov)


@pytest.mark.parametrize("world, skip", [(World(), 0), (World(), 2), (World(1, 2), 1)])
def test_training_batches_are_bit_exact_with_and_without_the_cache(run, world, skip):
    manifest = load_manifest(run)
    stats = load_stats(run, manifest.fingerprint)
    patches = open_cache(run, manifest)
    for epoch in (0, 1):
        plain = batches(train_loader(manifest, stats, CONFIG, epoch, world, skip))
        cached = batches(train_loader(manifest, stats, CONFIG, epoch, world, skip, patches))
        assert sum(len(y) for _, y in cached) == 18 // world.size - 4 * skip
        assert_same(plain, cached)


@pytest.mark.parametrize("ten_crop", [False, True])
@pytest.mark.parametrize("split", ["val", "train"])
def test_evaluation_batches_are_bit_exact_and_shards_the_same(run, ten_crop, split):
    manifest = load_manifest(run)
    stats = load_stats(run, manifest.fingerprint)
    patches = open_cache(run, manifest)
    config = replace(CONFIG, mean="channel")
    for world in (World(), World(0, 2), World(1, 2)):
        plain = eval_loader(manifest, stats, config, world, split=split, ten_crop=ten_crop)
        cached = eval_loader(
            manifest, stats, config, world, split=split, ten_crop=ten_crop, cache=patches
        )
        assert cached.size == plain.size and len(cached) == len(plain)
        for _ in range(2):  # and again on the next pass
            assert_same(batches(plain), batches(cached))


def test_training_with_the_cache_learns_the_same_weights(data, run, tmp_path, caplog):
    plain = tmp_path / "plain"
    prepare(data, plain, threads=1, progress=False)
    assert not RunPaths(plain).cache_patches.exists()  # off by default
    with caplog.at_level(logging.INFO, logger="alexnet"):
        fit(run, CONFIG, progress=False, final_ten_crop=False)
    assert "reading decoded patches" in caplog.text
    fit(plain, CONFIG, progress=False, final_ten_crop=False)
    ours, theirs = (load_checkpoint(RunPaths(r).last) for r in (run, plain))
    for name, weight in ours["model"].items():
        assert torch.equal(weight, theirs["model"][name]), name
    RunPaths(run).last.unlink()
    RunPaths(run).best.unlink()


def stale_cache(run: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the cached run whose cache is broken `how`."""
    copy = tmp_path / how
    copy.mkdir()
    for f in ("manifest.json", "manifest.files.npz", "stats.npz"):
        (copy / f).write_bytes((run / f).read_bytes())
    paths, source = RunPaths(copy), RunPaths(run)
    paths.cache_patches.parent.mkdir()
    paths.cache_patches.write_bytes(source.cache_patches.read_bytes())
    record = json.loads(source.cache_record.read_text())
    record["patches"]["mtime_ns"] = paths.cache_patches.stat().st_mtime_ns
    if how == "other data":
        record["fingerprint"] = "0123456789abcdef"
    if how == "changed":
        with open(paths.cache_patches, "ab") as f:
            f.write(b"\0")
    if how != "incomplete":
        paths.cache_record.write_text(json.dumps(record))
    return copy


@pytest.mark.parametrize("how", ["incomplete", "other data", "changed", "sound"])
def test_a_stale_or_partial_cache_is_ignored_with_one_warning(run, tmp_path, caplog, how):
    copy = stale_cache(run, tmp_path, how)
    manifest = load_manifest(copy)
    with caplog.at_level(logging.INFO, logger="alexnet"):
        patches = open_cache(copy, manifest)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    if how == "sound":  # the copy itself is a valid cache: the check is not too strict
        assert patches is not None and not warnings
        return
    assert patches is None and len(warnings) == 1
    line = warnings[0].getMessage()
    assert "\n" not in line and "reading the images instead" in line
    assert f"running prep on {manifest.root} into {copy} with the cache on" in line


def test_no_cache_is_no_warning(data, tmp_path, caplog):
    prepare(data, tmp_path / "run", threads=1, progress=False)
    with caplog.at_level(logging.INFO, logger="alexnet"):
        assert open_cache(tmp_path / "run", load_manifest(tmp_path / "run")) is None
    assert not caplog.records


def test_a_cache_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="alexnet"), pytest.raises(AlexnetError) as e:
        check_cache_space(10**12, tmp_path / "run")  # 196 PB: said, then refused
    assert "the patch cache" in str(e.value) and "GiB" in str(e.value)
    assert "patch cache: 1,000,000,000,000 images x 196,608 bytes = 196608000.0 GB" in caplog.text
    assert not (tmp_path / "run").exists()


def test_prep_cache_from_the_command_line(data, tmp_path):
    result = CliRunner().invoke(
        cli, ["prep", str(data), "--run", str(tmp_path / "run"), "--cache", "-j", "1"]
    )
    assert result.exit_code == 0, result.output
    assert f"patch cache: {RunPaths(tmp_path / 'run').cache_patches}" in result.output
    assert open_cache(tmp_path / "run", load_manifest(tmp_path / "run")) is not None


def test_fc7_features_are_the_same_from_the_cache(data, tmp_path, caplog):
    """`alexnet index` extracts the training set's fc7 from the patches when prep kept them."""
    from retrieval_fixtures import save_untrained_checkpoint

    from alexnet.model.inference import load_trained
    from alexnet.pipeline.layout import IndexPaths
    from alexnet.retrieval.features import load_features
    from alexnet.retrieval.update import training_features

    features = {}
    for name, cache in (("cached", True), ("plain", False)):
        prepare(data, tmp_path / name, cache=cache, threads=1, progress=False)
        save_untrained_checkpoint(tmp_path / name, load_manifest(tmp_path / name))
        trained = load_trained(tmp_path / name, check_files=False)
        paths = IndexPaths(tmp_path / name / "index")
        paths.folder.mkdir()
        with caplog.at_level(logging.INFO, logger="alexnet"):
            training_features(trained, paths, trained.world, batch_size=4, progress=False)
        assert ("reading decoded patches" in caplog.text) == cache
        caplog.clear()
        features[name] = np.array(load_features(paths))
    assert features["cached"].shape == (18, 4096) and features["cached"].any()
    np.testing.assert_array_equal(features["cached"], features["plain"])


def test_prep_can_decode_large_jpegs_reduced_for_the_patches_and_the_queries(tmp_path):
    from PIL import Image

    from alexnet.pipeline.images import read_images, reduced
    from alexnet.retrieval.collection import collection

    data = tmp_path / "data"
    for c in range(2):
        for i in range(3):  # 600 x 520 and more: twice 256 on both sides, decoded at 1/2
            folder = data / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.asarray(Image.fromarray(make_photo(c, i)).resize((600 + 40 * i, 520)))
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    with pytest.raises(AlexnetError, match="needs .cache."):
        prepare(data, tmp_path / "nocache", reduced_decoding=True, progress=False)
    patches = {}
    for reduce in (False, True):
        run = tmp_path / f"run-{reduce}"
        prepare(data, run, cache=True, reduced_decoding=reduce, threads=1, progress=False)
        record = json.loads(RunPaths(run).cache_record.read_text())
        assert record["decoding"] == ("reduced" if reduce else "full")
        manifest = load_manifest(run)
        patches[reduce] = np.asarray(open_cache(run, manifest), np.int16)
        assert collection(run).reduced == reduce  # its queries are decoded as its images were
    manifest = load_manifest(run)
    files = [str(Path(manifest.root) / f) for f in manifest.files.paths]  # manifest order
    encoded = [e for _, batch in read_images(files).batches(8, reduce=SIZE) for e in batch]
    assert all(reduced(Path(f).read_bytes(), SIZE) is not None for f in files)
    expected = np.concatenate(list(centre_patches(files, batch_size=8, reduce=True)))
    assert len(encoded) == len(files) and np.array_equal(patches[True], expected)
    assert not np.array_equal(patches[True], patches[False])  # other pixels, the same photos
    assert np.abs(patches[True] - patches[False]).mean() < 3


def make_photo(label: int, i: int) -> np.ndarray:
    from fixtures import class_image

    return class_image(label, 10 * label + i, (120, 100))
