"""The command line: help, version, clear errors, and the installed script end to end."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures import make_images
from PIL import Image

from alexnet.cli.main import cli
from alexnet.pipeline import fashion_mnist
from alexnet.pipeline.errors import AlexnetError


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


def test_help_lists_every_command_and_version():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("prep", "train", "eval", "demo", "index", "search", "eval-retrieval", "serve"):
        assert f"  {name} " in result.output
    version = CliRunner().invoke(cli, ["--version"])
    assert version.exit_code == 0 and "alexnet, version" in version.output


def test_prep_reports_planted_bad_files_and_keeps_the_rest(tmp_path):
    data = make_images(tmp_path / "data", classes=2, train=4, val=2)
    cls = data / "train" / "class0"
    (cls / "empty.jpg").write_bytes(b"")
    good = (cls / "0.jpg").read_bytes()
    (cls / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (cls / "text.jpg").write_text("not an image")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8)).save(cls / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).convert("CMYK").save(
        cls / "cmyk.jpg"
    )
    Image.fromarray(rng.integers(0, 255, (1, 1, 3), dtype=np.uint8)).save(cls / "one.jpg")
    result = invoke("prep", data, "--run", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "skipped 4 unusable files" in result.output
    assert "10 training and 4 validation images" in result.output  # 8 + alpha + CMYK
    assert "eigenvalues" in result.output
    assert (tmp_path / "run" / "stats.npz").is_file()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p, "is not a folder"),
        (lambda p: p.mkdir() or p, "has no class folders"),
        (
            lambda p: (p / "a").mkdir(parents=True) or (p / "a" / "x.jpg").write_text("x") and p,
            "no usable images",
        ),
    ],
)
def test_prep_bad_trees_exit_2_without_traceback(tmp_path, setup, message):
    result = invoke("prep", setup(tmp_path / "data"), "--run", tmp_path / "run")
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_train_without_prep_is_a_clear_error(tmp_path):
    result = invoke("train", "--run", tmp_path / "run", "--epochs", "1")
    assert result.exit_code == 2
    assert "run `alexnet prep DATA --run RUN` first" in result.output


def test_fashion_mnist_demo_photos(tmp_path):
    if not (fashion_mnist.SOURCE / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    out = fashion_mnist.build(tmp_path / "demo", train_per_class=2, val_per_class=1)
    trains = sorted((out / "train").glob("*/*.jpg"))
    assert len(trains) == 20 and len(list((out / "val").glob("*/*.jpg"))) == 10
    assert {p.parent.name for p in trains} == set(fashion_mnist.CLASSES)
    assert Image.open(trains[0]).size == (28, 28)


def test_missing_demo_photos_are_a_clear_error(tmp_path):
    with pytest.raises(AlexnetError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.build(tmp_path / "demo", source=tmp_path / "nowhere")


@pytest.mark.slow
def test_installed_script_runs_the_demo_chain(tmp_path):
    data = make_images(tmp_path / "data", classes=2, train=4, val=2)
    script = Path(sys.executable).with_name("alexnet")
    done = subprocess.run(
        [
            str(script),
            "demo",
            "--data",
            str(data),
            "--run",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "10-crop: top-1 error" in done.stdout
    assert "learning curve:" in done.stdout and "query:" in done.stdout
    assert "precision" in done.stdout.lower()
    for name in ("curves.png", "search.png", "eval_retrieval.json", "index/codes.faissindex"):
        assert (tmp_path / "run" / name).is_file(), name


def test_unwritable_run_folder_is_a_clear_error(tmp_path):
    data = make_images(tmp_path / "data", classes=2, train=2, val=1)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder's parent should be")
    result = invoke("prep", data, "--run", blocker / "run")
    assert result.exit_code == 2
    assert "cannot write to" in result.output and "Traceback" not in result.output
