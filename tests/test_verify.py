"""Integrity: an artefact corrupted in place (same size, same modification time) is caught,
by opening the collection or by `alexnet verify`, in one line and without a traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures import corrupt_in_place
from retrieval_fixtures import indexed_run

from alexnet.cli.main import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return indexed_run(tmp_path_factory.mktemp("verify"))


@pytest.fixture
def run(clean, tmp_path) -> Path:
    """A copy of the indexed run (and its data, which the manifest names by absolute path)."""
    copy = tmp_path / "run"
    shutil.copytree(clean, copy)
    return copy


def test_a_clean_run_verifies(clean):
    result = invoke("verify", "--run", clean, "--all", "--files")
    assert result.exit_code == 0, result.output
    assert "every file checked is as it was written" in result.output


@pytest.mark.parametrize("name", ["codes.u8.npy", "codes.faissindex", "autoencoder.pt"])
def test_small_artefacts_are_checked_when_opened(clean, run, name):
    corrupt_in_place(run / "index" / name)
    image = sorted((clean.parent / "data").rglob("*.jpg"))[0]
    result = invoke("search", image, "--run", run, "-k", 2)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0]
    assert "corrupted" in lines[0]
    found = invoke("verify", "--run", run)
    assert found.exit_code == 1 and name in found.output and "to repair" in found.output
    rebuilt = invoke("index", "--run", run)  # what the line says repairs it
    assert rebuilt.exit_code == 0, rebuilt.output
    assert invoke("search", image, "--run", run, "-k", 2).exit_code == 0


def test_the_feature_file_and_the_manifest_are_checked_by_verify(clean, run):
    corrupt_in_place(run / "index" / "features.f16.npy")
    result = invoke("verify", "--run", run)
    assert result.exit_code == 1, result.output
    assert "features.f16.npy" in result.output and "corrupted" in result.output
    assert "Traceback" not in result.output
    corrupt_in_place(run / "manifest.files.npz", 200)
    result = invoke("verify", "--run", run)
    assert result.exit_code == 1 and "manifest" in result.output


def test_a_changed_image_is_reported_with_files(clean, run, tmp_path):
    image = sorted((clean.parent / "data").rglob("*.jpg"))[0]
    saved = image.read_bytes()
    stat = os.stat(image)
    try:
        image.write_bytes(saved + b"\0")
        result = invoke("verify", "--run", run, "--files")
        assert result.exit_code == 1 and str(image) in result.output
    finally:
        image.write_bytes(saved)
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
