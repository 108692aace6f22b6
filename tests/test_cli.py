"""The command line: help, version, clear errors, and the installed script end to end."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures import make_images
from PIL import Image

from alexnet.cli.main import cli
from alexnet.model.checkpoint import load_checkpoint
from alexnet.pipeline import fashion_mnist
from alexnet.pipeline.errors import AlexnetError


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


def test_help_lists_every_command_and_version():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    names = ("prep", "train", "eval", "demo", "index", "search", "eval-retrieval", "serve")
    for name in (*names, "import-weights", "export-onnx"):
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
        (lambda p: p, "does not exist"),
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
    assert "no such run" in result.output and "alexnet prep DATA" in result.output


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
@pytest.mark.full_size
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
    assert "ten-crop: top-1 error" in done.stdout
    assert "learning curve:" in done.stdout and "query:" in done.stdout
    assert "precision" in done.stdout.lower()
    assert f"alexnet serve --run {tmp_path / 'run'}" in done.stdout  # what to do next
    for name in ("curves.png", "search.png", "eval_retrieval.json", "index/codes.faissindex"):
        assert (tmp_path / "run" / name).is_file(), name


def test_unwritable_run_folder_is_a_clear_error(tmp_path):
    data = make_images(tmp_path / "data", classes=2, train=2, val=1)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder's parent should be")
    result = invoke("prep", data, "--run", blocker / "run")
    assert result.exit_code == 2
    assert "cannot write to" in result.output and "Traceback" not in result.output


# --- one obvious run, predict, resume, fine-tuning, aliases --------------------------------


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALEXNET_RUN", raising=False)
    return tmp_path


def fake_run(folder: Path) -> Path:
    """A run folder (layout.is_run) whose manifest holds nothing else."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text('{"version": 2, "fingerprint": "0"}')
    return folder


def test_the_run_is_found_when_not_named(in_folder, monkeypatch):
    result = invoke("eval")
    assert result.exit_code == 2 and "which run?" in result.output and "none" in result.output
    fake_run(in_folder / "runs" / "only")
    result = invoke("eval")
    assert "run runs/only (the only one in runs/)" in result.output  # then fails on the fake
    fake_run(in_folder / "runs" / "second")
    result = invoke("eval")
    assert result.exit_code == 2 and "runs/only, runs/second" in result.output
    monkeypatch.setenv("ALEXNET_RUN", "runs/second")
    assert "run runs/second (from $ALEXNET_RUN)" in invoke("eval").output


def test_a_misspelt_run_is_no_such_run_with_a_suggestion(in_folder):
    fake_run(in_folder / "runs" / "demo")
    result = invoke("search", "x.jpg", "--run", "runs/dmo")
    assert result.exit_code == 2
    assert "no such run: runs/dmo" in result.output and "did you mean runs/demo" in result.output


def test_quiet_works_after_the_command_and_aliases_are_accepted(tmp_path):
    data = make_images(tmp_path / "data", classes=2, train=4, val=2)
    run = tmp_path / "run"
    assert (
        CliRunner().invoke(cli, ["prep", str(data), "--run", str(run), "-q", "-b", "4"]).exit_code
        == 0
    )
    args = ["train", "--run", str(run), "-q", "--epochs", "1", "-b", "4", "-j", "1"]
    args += ["--wd", "0.0001", "--momentum", "0.8", "--keep-every", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = load_checkpoint(run / "checkpoints" / "last.pt")["config"]
    assert (config["batch_size"], config["num_threads"]) == (4, 1)
    assert (config["weight_decay"], config["momentum"]) == (0.0001, 0.8)
    assert (run / "checkpoints" / "epoch_1.pt").is_file()
    # --resume PATH: the checkpoint's settings, except those given again
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--run",
            str(run),
            "-q",
            "--resume",
            str(run / "checkpoints" / "epoch_1.pt"),
            "--epochs",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["epoch"] == 2 and saved["config"]["momentum"] == 0.8


def test_fine_tuning_starts_from_another_runs_weights(tmp_path):
    import torch

    from alexnet.model.alexnet import AlexNet, AlexNetConfig
    from alexnet.model.checkpoint import checkpoint_state, save_checkpoint, start_from
    from alexnet.model.config import TrainConfig
    from alexnet.model.distributed import World

    source = AlexNet(AlexNetConfig(num_classes=2, init="kaiming"))
    manifest = SimpleNamespace(classes=["a", "b"], fingerprint="x")  # what a checkpoint keeps
    opt = torch.optim.SGD(source.parameters(), lr=0.1)
    path = save_checkpoint(
        tmp_path / "src.pt",
        checkpoint_state(source, TrainConfig(), manifest, optimizer=opt, schedule={}, epoch=1),
    )
    target = AlexNet(AlexNetConfig(num_classes=3))
    start_from(target, path, World())
    assert torch.equal(target.features[0].weight, source.features[0].weight)
    assert torch.equal(target.classifier[4].weight, source.classifier[4].weight)  # fc7
    assert target.classifier[6].weight.shape[0] == 3  # fc8: afresh, for 3 classes
    with pytest.raises(AlexnetError, match="another network"):
        start_from(AlexNet(AlexNetConfig(num_classes=3, columns=1)), path, World())


def test_predict_lists_the_top_classes_with_probabilities(tmp_path):
    from retrieval_fixtures import CLASSES, make_run

    data = make_images(tmp_path / "data", train=3, val=None, names=CLASSES)
    run = make_run(data, tmp_path / "run")
    photo = data / "green" / "0.jpg"
    result = invoke("predict", photo, data / "red", "--run", run, "--top", "2", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [Path(r["image"]).name for r in out["images"]] == ["0.jpg", "0.jpg", "1.jpg", "2.jpg"]
    for r in out["images"]:
        assert len(r["top"]) == 2 and {"class", "class_id", "probability"} <= set(r["top"][0])
        probs = [c["probability"] for c in r["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    ten = invoke("predict", photo, "--run", run, "--ten-crop")
    assert ten.exit_code == 0 and str(photo) in ten.output and "1. " in ten.output


def test_montage_must_be_a_png(tmp_path):
    result = invoke("search", "x.jpg", "--montage", tmp_path / "x.jpg", "--run", tmp_path)
    assert result.exit_code == 2 and "name it x.png" in result.output


def test_library_parameters_print_as_the_flags_of_the_command_that_ran():
    import click

    ctx = click.Context(cli)
    flag = cli.flag_namer(ctx, cli.get_command(ctx, "train"))
    e = AlexnetError("{batch_size} 8, {weight_decay}, {num_threads}, {force}, {unknown_thing}")
    assert e.render(flag) == "--batch-size 8, --weight-decay, --workers, --force, unknown_thing"
    assert str(e) == "`batch_size` 8, `weight_decay`, `num_threads`, `force`, `unknown_thing`"
