"""pipeline/manifest.py: the fingerprint, save and load, refusals of edited or damaged
manifests (one clear line in every command), and the check of the files behind it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures import img, make_images, run_scan
from PIL import Image

from alexnet.cli.main import cli
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths, is_run
from alexnet.pipeline.manifest import (
    Manifest,
    fingerprint,
    load_manifest,
    save_manifest,
    split_files,
)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A run (an untrained checkpoint as best.pt and last.pt) whose manifest lacks "root"."""
    from retrieval_fixtures import make_run

    root = tmp_path_factory.mktemp("manifest")
    run = make_run(make_images(root / "data", train=3, val=1), root / "run")
    assert isinstance(load_manifest(run), Manifest)
    doc = json.loads(RunPaths(run).manifest.read_text())
    del doc["root"]
    RunPaths(run).manifest.write_text(json.dumps(doc))
    return run


def test_a_manifest_without_a_field_is_refused_on_load(damaged):
    assert is_run(damaged)  # still a run folder: the damage is reported, not hidden
    with pytest.raises(AlexnetError, match="lacks field 'root': rerun `alexnet prep DATA`"):
        load_manifest(damaged, check_files=False)


@pytest.mark.parametrize("command", [["search", "x.jpg"], ["train", "--resume"], ["eval"]])
def test_a_manifest_without_a_field_is_one_line_in_each_command(damaged, tmp_path, command):
    if command[0] == "search":
        make_images(tmp_path / "q", classes=1, train=1, val=0)
        command = ["search", str(tmp_path / "q")]
    result = CliRunner().invoke(cli, ["-q", *command, "--run", str(damaged)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert str(RunPaths(damaged).manifest) in lines[0] and "rerun `alexnet prep" in lines[0]


def grow(path: Path) -> None:
    """Change a PNG's pixels and size but keep it a valid image."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB")).copy()
    a[: a.shape[0] // 2] = 255  # half white: compresses better, so the size changes too
    Image.fromarray(a).save(path)


def test_fingerprint_tracks_the_files(class_tree):
    m = run_scan(class_tree, val_fraction=0.3)
    assert m.fingerprint == fingerprint(m)
    target = class_tree / "a" / "05.png"
    before = target.stat().st_size
    grow(target)
    assert target.stat().st_size != before
    changed = run_scan(class_tree, val_fraction=0.3)
    assert changed.fingerprint != m.fingerprint
    target.unlink()
    assert run_scan(class_tree, val_fraction=0.3).fingerprint not in (
        m.fingerprint,
        changed.fingerprint,
    )


def test_load_manifest_round_trip_and_refusals(class_tree, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(AlexnetError, match="missing"):
        load_manifest(run)
    m = run_scan(class_tree, val_fraction=0.3)
    save_manifest(m, run)
    assert load_manifest(run) == m

    grow(class_tree / "b" / "03.png")
    with pytest.raises(AlexnetError, match="03.png changed since prep"):
        load_manifest(run)
    assert load_manifest(run, check_files=False) == m

    save_manifest(run_scan(class_tree, val_fraction=0.3), run)
    load_manifest(run)
    (class_tree / "c" / "01.png").unlink()
    with pytest.raises(AlexnetError, match="01.png .* is gone"):
        load_manifest(run)


def test_load_manifest_refuses_an_edited_manifest(class_tree, tmp_path):
    run = tmp_path / "run"
    m = run_scan(class_tree, val_fraction=0.3)
    save_manifest(m, run)
    with np.load(run / "manifest.files.npz") as z:
        columns = dict(z)
    columns["splits"][np.flatnonzero(columns["splits"] == 1)[0]] = 0  # a val file moved to train
    np.savez(run / "manifest.files.npz", **columns)
    with pytest.raises(AlexnetError, match="edited"):
        load_manifest(run, check_files=False)
    save_manifest(m, run)
    doc = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    doc["classes"][0] = "renamed"
    (run / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(AlexnetError, match="edited"):
        load_manifest(run, check_files=False)
    (run / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(AlexnetError, match="not a readable manifest"):
        load_manifest(run)


def test_same_size_edit_is_detected(tmp_path):
    data = tmp_path / "data"
    target = img(data / "a" / "0.bmp", colour=(10, 20, 30), format="BMP")
    img(data / "a" / "1.bmp", colour=(40, 50, 60), format="BMP")
    run = tmp_path / "run"
    m = run_scan(data, val_fraction=0.0)
    save_manifest(m, run)
    size = target.stat().st_size
    img(target, colour=(250, 250, 250), format="BMP")  # new pixels, same byte count
    assert target.stat().st_size == size
    refused = False
    try:
        load_manifest(run)
    except AlexnetError:
        refused = True
    rescanned = run_scan(data, val_fraction=0.0)
    assert refused and rescanned.fingerprint != m.fingerprint


def test_scan_resolves_the_root_and_split_files_gives_absolute_paths(class_tree, monkeypatch):
    monkeypatch.chdir(class_tree.parent)
    m = run_scan(Path(class_tree.name), val_fraction=0.3)
    assert m.root == str(class_tree.resolve())
    train, train_labels = split_files(m, "train")
    val, val_labels = split_files(m, "val")
    assert len(train) + len(val) == 21
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in train + val)
    assert train_labels == [f["label"] for f in m.files.records() if f["split"] == "train"]
    # moving the tree makes a loaded manifest refuse (the root is absolute)
    run = class_tree.parent / "run"
    save_manifest(m, run)
    shutil.move(str(class_tree), str(class_tree.parent / "moved"))
    with pytest.raises(AlexnetError, match="gone"):
        load_manifest(run)


def test_an_old_manifest_is_one_clear_line(class_tree, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"version": 1, "files": []}), encoding="utf-8")
    with pytest.raises(AlexnetError, match=r"another version of alexnet: rerun `alexnet prep"):
        load_manifest(run)


def test_load_checks_only_the_split_asked_for(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for i in range(2):
            img(data / split / "a" / f"{i}.png", seed=i)
    run = tmp_path / "run"
    save_manifest(run_scan(data), run)
    grow(data / "train" / "a" / "1.png")
    load_manifest(run, check_files="val")
    load_manifest(run, check_files=False)
    with pytest.raises(AlexnetError, match="1.png changed since prep"):
        load_manifest(run, check_files="train")


# --- robustness: run folders, links, permissions, sizes ------------------------------------
