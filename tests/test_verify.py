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


def flip_bytes_in_place(path: Path, start: int, stop: int, every: int = 1 << 20) -> None:
    """Invert 4 bytes every `every` bytes between `start` and `stop`, keeping the size and the
    modification time (a bad disk or a broken copy)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        for offset in range(start, min(stop, st.st_size - 4), every):
            f.seek(offset)
            chunk = f.read(4)
            f.seek(offset)
            f.write(bytes(b ^ 0xFF for b in chunk))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_corrupted_checkpoint_is_refused_everywhere_and_named_by_verify(clean, run):
    import alexnet
    from alexnet.pipeline.errors import AlexnetError

    best = run / "checkpoints" / "best.pt"
    size = best.stat().st_size  # 455 MB at full size: damage from 20 MB to 200 MB of it
    flip_bytes_in_place(best, size // 20, size * 9 // 20, every=max(1, size // 400))
    image = sorted((clean.parent / "data").rglob("*.jpg"))[0]
    for command in ("predict", "search"):
        result = invoke(command, image, "--run", run)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert str(best) in lines[0] and "corrupted" in lines[0] and "last.pt" in lines[0]
    with pytest.raises(AlexnetError, match="best.pt is corrupted") as caught:
        alexnet.load(run)
    assert len(str(caught.value).splitlines()) == 1
    found = invoke("verify", "--run", run)
    assert found.exit_code == 1, found.output
    assert "best.pt" in found.output and "last.pt is corrupted" not in found.output
    assert (
        invoke(
            "predict", image, "--run", run, "--checkpoint", run / "checkpoints" / "last.pt"
        ).exit_code
        == 0
    )


def test_an_old_checkpoint_loads_with_one_warning(run, caplog):
    """Written before checksums, with the network's settings flat in its config."""
    import torch

    import alexnet
    from alexnet.model import checkpoint as ckpt
    from alexnet.model.config import AlexNetConfig

    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["checksum"]
    network = state["config"].pop("network")
    state["config"].update(network)  # flat, as the network's settings were stored then
    torch.save(state, last)  # as checkpoints were written before they carried checksums
    with caplog.at_level("WARNING", logger="alexnet"):
        for _ in range(2):
            assert ckpt.load_checkpoint(last, whole=True)["epoch"] == state["epoch"]
    warned = [r for r in caplog.records if "before checkpoints carried checksums" in r.message]
    assert len(warned) == 1 and str(last) in warned[0].message
    assert alexnet.load(run, "last").config.network == AlexNetConfig(**network)
    assert invoke("verify", "--run", run).exit_code == 0


def test_verify_help_says_how_checkpoints_are_checked():
    text = " ".join(invoke("verify", "--help").output.split())
    assert "xxh3-128 checksums written inside the file" in text and "best.pt" in text
