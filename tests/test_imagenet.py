"""ILSVRC-2012 as it ships, in miniature: a flat validation folder labelled by Kaggle's CSV or
by the devkit (made here with scipy.io.savemat), explicit labels and names files for other
datasets, and the display names they give."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import IMAGENETTE
from scipy.io import savemat

from alexnet.cli.main import cli
from alexnet.pipeline import imagenet
from alexnet.pipeline.dataset import scan
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.manifest import load_manifest, save_manifest, split_files

WNIDS = {"n01440764": "tench, Tinca tinca", "n02979186": "cassette player"}
WNIDS["n03417042"] = "garbage truck, dustcart"
STRANGER = "n09999999"  # a class of the labels that has no training folder
VAL = [f"ILSVRC2012_val_{i:08d}" for i in range(1, 6)]
# The labels files below name val 1-3 after the training classes, val 4 after STRANGER, and
# leave val 5 out.
TRUTH = {VAL[0]: "n01440764", VAL[1]: "n02979186", VAL[2]: "n03417042", VAL[3]: STRANGER}


@pytest.fixture
def ilsvrc(tmp_path, real_jpegs) -> Path:
    """DATA/train/<wnid>/<wnid>_<n>.JPEG (2 each) and a flat DATA/val/ILSVRC2012_val_*.JPEG."""
    data = tmp_path / "imagenet"
    for c, wnid in enumerate(WNIDS):
        (data / "train" / wnid).mkdir(parents=True)
        for i in range(2):
            shutil.copy(real_jpegs[2 * c + i], data / "train" / wnid / f"{wnid}_{i}.JPEG")
    (data / "val").mkdir()
    for i, name in enumerate(VAL):
        shutil.copy(real_jpegs[10 + i], data / "val" / f"{name}.JPEG")
    return data


def write_kaggle(data: Path) -> None:
    rows = [f"{name},{wnid} 10 20 100 200 {wnid} 5 5 50 50" for name, wnid in TRUTH.items()]
    (data / imagenet.KAGGLE_LABELS).write_text("ImageId,PredictionString\n" + "\n".join(rows))
    lines = [f"{w} {words}" for w, words in {**WNIDS, STRANGER: "stranger"}.items()]
    (data / imagenet.KAGGLE_NAMES).write_text("\n".join(lines) + "\n")


def write_devkit(folder: Path) -> Path:
    """ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}: the
    leaves numbered 1..4 as in ILSVRC2012_ID, and one inner synset that must be ignored."""
    leaves = [*WNIDS, STRANGER]
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children"]
    synsets = np.zeros((len(leaves) + 1, 1), dtype=[(f, "O") for f in fields])
    for i, wnid in enumerate(leaves):
        words = {**WNIDS, STRANGER: "stranger"}[wnid]
        synsets[i, 0] = (i + 1, wnid, words, "a gloss", 0, np.zeros((1, 0)))
    synsets[-1, 0] = (1001, "n00001740", "entity", "the root", 4, np.arange(1, 5))
    devkit = folder / imagenet.DEVKIT
    (devkit / "data").mkdir(parents=True)
    savemat(devkit / imagenet.DEVKIT_META, {"synsets": synsets})
    truth = [str(leaves.index(TRUTH[name]) + 1) for name in VAL[:4]]  # val 5: no line
    (devkit / imagenet.DEVKIT_TRUTH).write_text("\n".join(truth) + "\n")
    return devkit


def run_scan(data: Path, **kw) -> dict:
    return scan(data, threads=2, progress=False, **kw)


def labels_by_name(m: dict) -> dict[str, str]:
    return {Path(f["path"]).stem: m.classes[f["label"]] for f in m.files.records()}


def check_ilsvrc(m: dict, labels_file: str) -> None:
    assert m.layout == "train/val folders"
    assert m.classes == list(WNIDS)
    assert m.class_names == ["tench", "cassette player", "garbage truck"]
    assert labels_by_name(m) == {
        **{f"{w}_{i}": w for w in WNIDS for i in range(2)},
        **{name: TRUTH[name] for name in VAL[:3]},
    }
    val, _ = split_files(m, "val")
    assert [Path(p).stem for p in val] == VAL[:3]
    reasons = {s["path"]: s["reason"] for s in m.skipped}
    assert reasons == {
        f"val/{VAL[3]}.JPEG": f"label {STRANGER} (from {labels_file}) is not a training class",
        f"val/{VAL[4]}.JPEG": f"no label in {labels_file}",
    }


def test_kaggle_layout_is_recognised_by_itself(ilsvrc):
    write_kaggle(ilsvrc)
    m = run_scan(ilsvrc)
    check_ilsvrc(m, imagenet.KAGGLE_LABELS)
    assert m.labels_from == str(ilsvrc / imagenet.KAGGLE_LABELS)
    assert m.names_from == str(ilsvrc / imagenet.KAGGLE_NAMES)


@pytest.mark.parametrize("form", ["folder in DATA", "archive beside DATA"])
def test_devkit_layout_is_recognised_by_itself(ilsvrc, tmp_path, form):
    devkit = write_devkit(ilsvrc if form == "folder in DATA" else tmp_path / "kit")
    if form == "archive beside DATA":
        archive = ilsvrc.parent / f"{imagenet.DEVKIT}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(devkit, arcname=imagenet.DEVKIT)
        devkit = archive
    m = run_scan(ilsvrc)
    check_ilsvrc(m, devkit.name)
    assert m.labels_from == m.names_from == str(devkit)


def test_without_labels_a_flat_val_folder_is_reported_not_lost(ilsvrc):
    m = run_scan(ilsvrc)
    assert split_files(m, "val") == ([], [])
    assert [s["path"] for s in m.skipped] == [f"val/{name}.JPEG" for name in VAL]
    assert all(s["reason"].startswith("no label: ") for s in m.skipped)
    # no names file: WordNet's names of the wnid folders (pipeline/wordnet.py)
    assert m.class_names == ["tench", "cassette player", "garbage truck"]


@pytest.mark.parametrize("form", ["lines", "csv"])
def test_explicit_labels_and_names_files(tmp_path, real_jpegs, form):
    data = tmp_path / "pets"
    for c, name in enumerate(("cat", "dog")):
        (data / "train" / name).mkdir(parents=True)
        shutil.copy(real_jpegs[c], data / "train" / name / f"{name}0.jpg")
    (data / "val").mkdir()
    for i, name in enumerate(("a.jpg", "b.jpg", "c.jpg", "d.jpg")):
        shutil.copy(real_jpegs[5 + i], data / "val" / name)
    labels = {"a.jpg": "cat", "b": "dog", "d.jpg": "horse"}  # c: none; b: without extension
    if form == "csv":
        path = tmp_path / "labels.csv"
        path.write_text("file,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    else:
        path = tmp_path / "labels.txt"
        path.write_text("".join(f"{k} {v}\n" for k, v in labels.items()))
    names = tmp_path / "names.txt"
    names.write_text("cat Felis catus, the house cat\ndog Canis familiaris\n")
    m = run_scan(data, val_labels=path, class_names=names)
    assert m.class_names == ["Felis catus, the house cat", "Canis familiaris"]  # whole lines
    assert labels_by_name(m) == {"cat0": "cat", "dog0": "dog", "a": "cat", "b": "dog"}
    reasons = {s["path"]: s["reason"] for s in m.skipped}
    assert reasons == {
        "val/c.jpg": f"no label in {path.name}",
        "val/d.jpg": f"label horse (from {path.name}) is not a training class",
    }
    # the manifest keeps the names through a save and load
    save_manifest(m, tmp_path / "run")
    assert load_manifest(tmp_path / "run").class_names == m.class_names


def test_classes_json_names_the_real_imagenette_classes():
    m = run_scan(IMAGENETTE)
    names = json.loads((IMAGENETTE / "classes.json").read_text())
    assert m.classes == sorted(names)
    assert m.class_names == [names[c] for c in m.classes]
    assert "cassette player" in m.class_names and m.skipped == []


def test_shared_names_get_their_id_and_missing_ones_the_folder_name():
    names = {"n02012849": "crane", "n03126707": "crane", "n01440764": "tench"}
    assert imagenet.display_names(["n01440764", "n02012849", "n03126707", "x"], names) == [
        "tench",
        "crane (n02012849)",
        "crane (n03126707)",
        "x",
    ]


def test_unreadable_or_empty_label_files_are_clear_errors(ilsvrc, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(AlexnetError, match="lists no labels"):
        run_scan(ilsvrc, val_labels=empty)
    with pytest.raises(AlexnetError, match="names no classes"):
        run_scan(ilsvrc, class_names=empty)
    (ilsvrc / f"{imagenet.DEVKIT}.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(AlexnetError, match="not a readable ILSVRC-2012 devkit"):
        run_scan(ilsvrc)


def test_prep_command_takes_the_files_and_says_where_labels_came_from(ilsvrc, tmp_path):
    labels = tmp_path / "solution.csv"
    write_kaggle(ilsvrc)
    (ilsvrc / imagenet.KAGGLE_LABELS).rename(labels)
    run = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        ["-q", "prep", str(ilsvrc), "--run", str(run), "--val-labels", str(labels)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert f"validation labels: {labels}" in result.output
    assert "class names:" in result.output and "(tench, cassette player, garbage truck)" in (
        result.output
    )
    assert "3 classes, 6 training and 3 validation images" in result.output
    assert f"val/{VAL[4]}.JPEG: no label in solution.csv" in result.output
