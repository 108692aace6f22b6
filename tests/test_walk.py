"""pipeline/walk.py: the one folder walk, as prep meets it: run folders, links, FIFOs,
unreadable entries."""

import os

import pytest
from fixtures import by_path, img, run_scan

from alexnet.pipeline.manifest import save_manifest


def test_run_folders_are_never_scanned(class_tree, tmp_path):
    inside = class_tree / "run"  # `alexnet prep DATA --run DATA/run`, then prep again
    save_manifest(run_scan(class_tree, val_fraction=0.3), inside)
    img(inside / "search.png", seed=1)  # a montage: an image, but not a training image
    nested = class_tree / "a" / "old run"
    save_manifest(run_scan(class_tree, val_fraction=0.3), nested)
    img(nested / "data" / "x.png", seed=2)
    m = run_scan(class_tree, val_fraction=0.3)
    assert m.classes == ["a", "b", "c"] and len(m.files) == 21
    assert m.skipped == [
        {"path": "a/old run", "reason": "an alexnet run folder (not scanned)"},
        {"path": "run", "reason": "an alexnet run folder (not scanned)"},
    ]
    # a folder that merely holds some other manifest.json is data like any other
    (class_tree / "c" / "manifest.json").write_text('{"name": "not ours"}')
    m = run_scan(class_tree, val_fraction=0.3)
    assert {"path": "c/manifest.json", "reason": "unsupported extension .json"} in m.skipped


def test_links_are_followed_once_and_bad_ones_reported(class_tree, tmp_path):
    outside = tmp_path / "elsewhere"
    img(outside / "far.png", seed=7)
    os.symlink(outside, class_tree / "a" / "linked")  # a good link: followed
    os.symlink(class_tree / "a", class_tree / "a" / "loop")  # back to its own parent
    os.symlink(class_tree / "b", class_tree / "b twin")  # the same folder as class b
    os.symlink(class_tree / "nowhere.png", class_tree / "c" / "dangling.png")
    os.symlink("self.png", class_tree / "c" / "self.png")  # a link to itself
    m = run_scan(class_tree, val_fraction=0.0)
    assert m.classes == ["a", "b", "c"]
    assert "a/linked/far.png" in by_path(m) and len(m.files) == 22
    assert {s["path"]: s["reason"] for s in m.skipped} == {
        "a/loop": "symlink loop",
        "b twin": "same folder as b",
        "c/dangling.png": "broken symlink",
        "c/self.png": "symlink loop",
    }


def test_fifos_are_reported_not_opened(class_tree):
    os.mkfifo(class_tree / "a" / "pipe.jpg")  # opening it would wait for a writer forever
    m = run_scan(class_tree, val_fraction=0.0)
    assert m.skipped == [{"path": "a/pipe.jpg", "reason": "not a regular file"}]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_files_and_folders_are_reported_as_such(class_tree):
    secret, locked = class_tree / "a" / "00.png", class_tree / "b"
    hidden_class = class_tree / "d"
    img(hidden_class / "0.png", seed=3)
    os.chmod(secret, 0)
    os.chmod(locked, 0)
    os.chmod(hidden_class, 0)
    try:
        m = run_scan(class_tree, val_fraction=0.0)
    finally:
        for path, mode in ((secret, 0o644), (locked, 0o755), (hidden_class, 0o755)):
            os.chmod(path, mode)
    assert m.classes == ["a", "c"]  # a folder that cannot be listed is no class
    assert {s["path"]: s["reason"] for s in m.skipped} == {
        "a/00.png": "permission denied",
        "b": "permission denied",
        "d": "permission denied",
    }
