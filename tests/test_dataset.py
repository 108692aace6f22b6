"""dataset.scan on small trees built in tmp_path: layouts, the seeded split, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures import by_path, img, run_scan, split_of
from PIL import Image

from alexnet.pipeline.dali import pipe_options, prep_pipeline
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.loader import Loader
from alexnet.pipeline.manifest import load_manifest, save_manifest, split_files

# --- layouts and the seeded split ------------------------------------------------------------


def test_class_folders_split_is_seeded_and_respects_fraction_per_class(class_tree):
    m = run_scan(class_tree, val_fraction=0.3, seed=0)
    assert m.layout == "class folders"
    assert m.classes == ["a", "b", "c"]
    assert m.val_fraction == 0.3 and m.seed == 0
    assert m.skipped == []
    assert len(m.files) == 21
    for f in m.files.records():
        assert f["path"].split("/")[0] == m.classes[f["label"]]
        assert f["bytes"] == (class_tree / f["path"]).stat().st_size
    # per class: round(0.3 * n) in val (3 of 10, 2 of 7, 1 of 4), the rest in train
    for name, n, n_val in (("a", 10, 3), ("b", 7, 2), ("c", 4, 1)):
        splits = [f["split"] for f in m.files.records() if f["path"].startswith(name + "/")]
        assert len(splits) == n
        assert splits.count("val") == n_val, name
        assert abs(splits.count("val") - 0.3 * n) <= 0.5
        assert m.counts[name] == {"train": n - n_val, "val": n_val}

    again = run_scan(class_tree, val_fraction=0.3, seed=0)
    assert split_of(again) == split_of(m)
    assert again.fingerprint == m.fingerprint

    other = run_scan(class_tree, val_fraction=0.3, seed=1)
    assert split_of(other) != split_of(m)
    assert other.counts == m.counts  # a different draw, the same fraction
    assert other.fingerprint != m.fingerprint


def test_val_fraction_zero_puts_everything_in_train(class_tree):
    m = run_scan(class_tree, val_fraction=0.0)
    assert {f["split"] for f in m.files.records()} == {"train"}


@pytest.mark.parametrize("bad", [1.0, -0.1])
def test_val_fraction_out_of_range_is_refused(class_tree, bad):
    with pytest.raises(AlexnetError, match="val_fraction"):
        run_scan(class_tree, val_fraction=bad)


def test_high_val_fraction_keeps_a_training_image_per_class(tmp_path):
    data = tmp_path / "data"
    for name in ("a", "b"):
        for i in range(3):
            img(data / name / f"{i}.png", seed=i)
    m = run_scan(data, val_fraction=0.9)
    assert all(c["train"] >= 1 for c in m.counts.values())


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_train_and_val_folders(tmp_path, val_name):
    data = tmp_path / "data"
    for name in ("cat", "dog"):
        for i in range(3):
            img(data / "train" / name / f"t{i}.jpg", seed=i)
        img(data / val_name / name / "v0.jpg", seed=9)
    m = run_scan(data, val_fraction=0.5, seed=3)
    assert m.layout == "train/val folders"
    assert m.classes == ["cat", "dog"]
    assert m.val_fraction is None  # the folders decide, not the fraction
    splits = split_of(m)
    assert len(splits) == 8
    for path, split in splits.items():
        assert split == ("train" if path.startswith("train/") else "val"), path
    assert m.counts == {"cat": {"train": 3, "val": 1}, "dog": {"train": 3, "val": 1}}
    labels = {f["path"]: f["label"] for f in m.files.records()}
    assert labels[f"{val_name}/dog/v0.jpg"] == 1 and labels["train/cat/t0.jpg"] == 0
    files, labs = split_files(m, "val")
    assert files == [str(data / val_name / c / "v0.jpg") for c in ("cat", "dog")] and labs == [0, 1]


def test_train_folder_without_val_folder(tmp_path):
    data = tmp_path / "data"
    img(data / "train" / "x" / "0.png", seed=0)
    m = run_scan(data)
    assert [f["split"] for f in m.files.records()] == ["train"]


def test_val_class_missing_from_train_is_refused(tmp_path):
    data = tmp_path / "data"
    img(data / "train" / "cat" / "0.png", seed=0)
    img(data / "val" / "cat" / "0.png", seed=1)
    img(data / "val" / "zebra" / "0.png", seed=2)
    with pytest.raises(AlexnetError, match="zebra"):
        run_scan(data)


# --- file names and formats ------------------------------------------------------------------


def test_extensions_any_case_nested_folders_spaces_and_non_ascii(tmp_path):
    data = tmp_path / "data"
    kept = [
        "plain/upper.JPG",
        "plain/mixed.Jpeg",
        "plain/lower.png",
        "plain/upper.PNG",
        "plain/bitmap.bmp",
        "plain/sub/deeper/still plain.jpeg",
        "café au lait/ünïcødé 名前 1.jpg",
        "café au lait/nested dir/ë.JPG",
    ]
    for i, rel in enumerate(kept):
        ext = rel.rsplit(".", 1)[1].lower()
        img(data / rel, seed=i, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(ext, ext.upper()))
    (data / "plain" / ".DS_Store").write_bytes(b"\0\1hidden")
    (data / "plain" / "noext").write_bytes(b"nothing")
    m = run_scan(data, val_fraction=0.0)
    assert m.classes == ["café au lait", "plain"]
    files = by_path(m)
    assert sorted(files) == sorted(kept)
    for rel in kept:
        assert files[rel]["label"] == m.classes.index(rel.split("/")[0])
    # hidden files are ignored, not reported; a file without extension is reported
    assert m.skipped == [{"path": "plain/noext", "reason": "unsupported extension (none)"}]
    # the manifest survives a JSON round trip with the non-ASCII names intact
    run = tmp_path / "run"
    save_manifest(m, run)
    assert load_manifest(run) == m


def test_bad_files_are_skipped_with_a_reason_and_odd_modes_are_kept(tmp_path, real_jpegs):
    data = tmp_path / "data"
    good = data / "good"
    img(good / "rgb.jpg", seed=0)
    img(good / "rgba.png", mode="RGBA")
    img(good / "cmyk.jpg", mode="CMYK")
    img(good / "grey.jpg", mode="L")
    img(good / "palette.png", mode="P")
    img(good / "exactly 16.png", size=(16, 40))
    bad = data / "bad"
    img(bad / "ok.png", seed=1)  # so that the class itself is usable
    (bad / "zero.jpg").write_bytes(b"")
    whole = Path(real_jpegs[0]).read_bytes()
    (bad / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (bad / "text.jpg").write_text("this is not a JPEG\n")
    (bad / "notes.txt").write_text("a note\n")
    img(bad / "tiny.png", size=(1, 1))
    img(bad / "thin.png", size=(15, 200))
    (data / "stray.jpg").write_bytes(whole)  # beside the class folders, not in one

    m = run_scan(data, val_fraction=0.0)
    assert m.classes == ["bad", "good"]
    assert sorted(by_path(m)) == [
        "bad/ok.png",
        "good/cmyk.jpg",
        "good/exactly 16.png",
        "good/grey.jpg",
        "good/palette.png",
        "good/rgb.jpg",
        "good/rgba.png",
    ]
    reasons = {s["path"]: s["reason"] for s in m.skipped}
    assert sorted(reasons) == [
        "bad/notes.txt",
        "bad/text.jpg",
        "bad/thin.png",
        "bad/tiny.png",
        "bad/truncated.jpg",
        "bad/zero.jpg",
        "stray.jpg",
    ]
    assert reasons["bad/zero.jpg"] == "empty file"
    assert reasons["bad/truncated.jpg"].startswith("corrupt or truncated")
    assert reasons["bad/text.jpg"].startswith("not an image")
    assert reasons["bad/notes.txt"] == "unsupported extension .txt"
    assert reasons["bad/tiny.png"].startswith("too small (1x1")
    assert reasons["bad/thin.png"].startswith("too small (15x200")
    assert reasons["stray.jpg"] == "not inside a class folder"
    assert [s["path"] for s in m.skipped] == sorted(reasons)  # sorted by path


def test_min_size_is_a_parameter(tmp_path):
    data = tmp_path / "data"
    img(data / "a" / "big.png", size=(40, 40))
    img(data / "a" / "small.png", size=(30, 30))
    m = run_scan(data, min_size=32, val_fraction=0.0)
    assert list(by_path(m)) == ["a/big.png"]
    assert [s["path"] for s in m.skipped] == ["a/small.png"]


def test_every_kept_odd_file_decodes_in_dali_to_the_colour_pil_sees(tmp_path):
    """scan keeps what 'both PIL and DALI read': check DALI really decodes each kept oddity, with
    the right colours (solid-colour images, so the 256x256 patch is one colour; JPEG within 4)."""
    data = tmp_path / "data"
    colour = (210, 90, 40)
    made = [
        img(data / "k" / "rgba alpha.png", colour=colour, mode="RGBA"),
        img(data / "k" / "cmyk.jpg", colour=colour, mode="CMYK", quality=95),
        img(data / "k" / "grey.jpg", colour=colour, mode="L", quality=95),
        img(data / "k" / "palette.png", colour=colour, mode="P"),
        img(data / "k" / "Upper.BMP", colour=colour, format="BMP"),
        img(data / "k" / "dïr ü" / "名前.Jpeg", colour=colour, quality=95, format="JPEG"),
    ]
    m = run_scan(data, val_fraction=0.0)
    files, _ = split_files(m, "train")
    assert sorted(files) == sorted(str(p) for p in made)
    pipe = prep_pipeline(files, device="cpu", **pipe_options("cpu", 4, 0, 2))
    patches = np.concatenate([b.numpy() for (b,) in Loader(pipe, outputs=("images",))])
    assert patches.shape == (len(files), 256, 256, 3)
    for f, patch in zip(files, patches, strict=True):
        with Image.open(f) as im:
            expect = np.asarray(im.convert("RGB"), dtype=np.float64).mean(axis=(0, 1))
        got = patch.reshape(-1, 3).astype(np.float64)
        assert np.abs(got - expect).max() <= 4, (f, got.mean(0), expect)


# --- refusals --------------------------------------------------------------------------------


def test_missing_or_empty_trees_are_refused(tmp_path):
    with pytest.raises(AlexnetError, match="not a folder"):
        run_scan(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AlexnetError, match="no class folders"):
        run_scan(empty)
    (empty / "a").mkdir()
    (empty / "b").mkdir()
    with pytest.raises(AlexnetError, match="no usable images"):
        run_scan(empty)


def test_a_class_without_a_usable_image_is_refused(tmp_path, real_jpegs):
    data = tmp_path / "data"
    img(data / "fine" / "0.png", seed=0)
    (data / "broken").mkdir()
    (data / "broken" / "zero.jpg").write_bytes(b"")
    (data / "broken" / "text.png").write_text("no")
    (data / "broken" / "readme.txt").write_text("no")
    with pytest.raises(AlexnetError, match="broken") as e:
        run_scan(data)
    assert "fine" not in str(e.value)


def test_a_val_only_class_in_train_val_layout_is_refused(tmp_path):
    data = tmp_path / "data"
    img(data / "train" / "a" / "0.png", seed=0)
    (data / "train" / "b").mkdir()
    img(data / "val" / "b" / "0.png", seed=1)
    with pytest.raises(AlexnetError, match="no usable training images: b"):
        run_scan(data)


# --- fingerprint and stale manifests --------------------------------------------------------


def test_max_pixels_skips_large_images_with_a_clear_reason(tmp_path):
    data = tmp_path / "data"
    img(data / "a" / "small.png", size=(40, 30))
    img(data / "a" / "large.png", size=(80, 70))
    m = run_scan(data, val_fraction=0.0, max_pixels=40 * 30)
    assert list(by_path(m)) == ["a/small.png"]
    assert m.skipped == [
        {"path": "a/large.png", "reason": "too large (80x70, over the limit of 1,200 pixels)"}
    ]
