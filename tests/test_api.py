"""The public API (alexnet/__init__.py): a script and the command line give the same bits."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fixtures import make_images, prep_run
from PIL import Image

import alexnet
from alexnet.cli.main import cli
from alexnet.model.checkpoint import load_checkpoint
from alexnet.pipeline.layout import RunPaths

SETTINGS = dict(epochs=1, batch_size=4, num_threads=1)
FLAGS = ["--epochs", "1", "-b", "4", "-j", "1"]


def train_command(*args) -> None:
    result = CliRunner().invoke(cli, ["-q", "train", *map(str, args)])
    assert result.exit_code == 0, result.output


def assert_same_weights(a, b) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_fit_and_alexnet_train_write_the_same_checkpoints_fresh_and_resumed(tmp_path):
    data = make_images(tmp_path / "data", train=4, val=2)
    script = alexnet.prepare(data, tmp_path / "script", threads=1, progress=False)
    assert isinstance(script, RunPaths) and script.manifest.is_file()
    command = prep_run(data, tmp_path / "command")

    alexnet.fit(script, progress=False, **SETTINGS)
    train_command("--run", command, *FLAGS)
    assert_same_weights(script.last, RunPaths(command).last)
    assert (
        load_checkpoint(script.last)["config"] == load_checkpoint(RunPaths(command).last)["config"]
    )

    # On resume both take the checkpoint's settings, except those given again.
    alexnet.fit(script, resume=True, epochs=2, progress=False)
    train_command("--run", command, "--resume", "--epochs", "2")
    assert load_checkpoint(script.last)["epoch"] == 2
    assert_same_weights(script.last, RunPaths(command).last)
    with pytest.raises(alexnet.AlexnetError, match="unknown training setting"):
        alexnet.fit(script, resume=True, epoch=3, progress=False)


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    from retrieval_fixtures import make_run

    root = tmp_path_factory.mktemp("api")
    data = make_images(root / "data", classes=3, train=4, val=2)
    return data, make_run(data, root / "run")


def test_load_predicts_and_gives_fc7_of_every_kind_of_image(model_run):
    data, run = model_run
    model = alexnet.load(run)
    assert model.classes == ["class0", "class1", "class2"]
    assert isinstance(model.net, torch.nn.Module) and not model.net.training
    photo = data / "train" / "class1" / "0.jpg"
    with Image.open(photo) as im:
        pixels = np.asarray(im.convert("RGB"))
        picture = im.copy()

    by_path, by_bytes = model.features([photo, photo.read_bytes()])
    assert by_path.dtype == np.float32 and by_path.shape == (4096,)
    np.testing.assert_array_equal(by_path, by_bytes)
    from_array, from_pil = model.features([pixels, picture])
    np.testing.assert_array_equal(from_array, from_pil)  # both the same decoded pixels

    folder = model.features(data / "val" / "class2")
    assert folder.shape == (2, 4096)
    records = model.predict(photo, top=2)
    assert len(records) == 1 and records[0]["image"] == str(photo)
    assert len(records[0]["top"]) == 2 and records[0]["top"][0]["class_id"] in model.classes
    assert alexnet.load(run, "last").checkpoint == RunPaths(run).last
    with pytest.raises(alexnet.AlexnetError, match="cannot use a int as an image"):
        model.predict([3])
    with pytest.raises(alexnet.AlexnetError, match="cannot be used"):
        model.features(b"not an image")


def test_prepare_on_a_missing_folder_writes_nothing(tmp_path):
    from alexnet.pipeline.errors import AlexnetError

    with pytest.raises(AlexnetError, match="missing is not a folder"):
        alexnet.prepare(tmp_path / "missing", tmp_path / "run")
    assert not (tmp_path / "run").exists()  # no run folder, no lock file left behind
