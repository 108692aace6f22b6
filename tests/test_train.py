"""The trainer on a tiny generated dataset: metrics, checkpoints, exact resume, bad input."""

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from fixtures import alexnet_cmd, make_images, prep_run, torchrun

from alexnet.cli.main import cli
from alexnet.model import train
from alexnet.model.checkpoint import load_checkpoint
from alexnet.model.config import TrainConfig
from alexnet.model.evaluate import evaluate_checkpoint
from alexnet.model.train import Interrupted, NonFinite, fit
from alexnet.pipeline import dataset
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.manifest import save_manifest

TINY = TrainConfig(epochs=1, batch_size=4, patience=1, num_threads=1)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    data = make_images(tmp_path_factory.mktemp("data"))
    (data / "classes.json").write_text(json.dumps({"class0": "reddish", "class1": "bluish"}))
    return data


@pytest.fixture
def run(tiny_data, tmp_path) -> Path:
    return prep_run(tiny_data, tmp_path / "run")


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_fit_writes_metrics_checkpoints_and_curves(run):
    metrics = fit(run, replace(TINY, epochs=2), progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for key in ("loss", "val_loss", "top1_error", "top5_error", "images_per_s", "data_wait"):
        assert all(key in m for m in lines)
    # The rate is --lr for a batch of 128, scaled to the batch of 4.
    assert [(m["lr"], m["batch"]) for m in lines] == [(0.01 * 4 / 128, 4)] * 2
    assert lines[0]["images"] == 6  # every validation image counted once
    assert 0 <= metrics["ten_crop_top1_error"] <= 1
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["epoch"] == 2 and saved["config"]["batch_size"] == 4
    assert (run / "checkpoints" / "best.pt").is_file()
    result = evaluate_checkpoint(run, run / "checkpoints" / "last.pt")
    assert result["centre"]["images"] == 6 and result["ten_crop"]["images"] == 6
    # per class, by display name, hardest first; together they make the 10-crop error
    rows = result["classes"]
    assert {(r["class"], r["class_id"]) for r in rows} == {
        ("reddish", "class0"),
        ("bluish", "class1"),
    }
    assert [r["top1_error"] for r in rows] == sorted((r["top1_error"] for r in rows), reverse=True)
    missed = sum(r["top1_error"] * r["images"] for r in rows)
    assert missed == pytest.approx(result["ten_crop"]["top1_error"] * 6)
    assert json.loads((run / "eval.json").read_text())["classes"] == rows
    shown = CliRunner().invoke(cli, ["eval", "--run", str(run), "--no-ten-crop"])
    assert shown.exit_code == 0, shown.output
    assert "hardest classes (centre crop top-1 error" in shown.output
    assert "reddish (class0, 3 images)" in shown.output


def straight_and_resumed(tiny_data, tmp_path, config, stop_after: int) -> tuple[Path, Path]:
    """The same run trained in one go, and stopped after `stop_after` epochs then resumed."""
    torch.use_deterministic_algorithms(True)
    try:
        straight = prep_run(tiny_data, tmp_path / "straight")
        fit(straight, config, progress=False, final_ten_crop=False)
        resumed = prep_run(tiny_data, tmp_path / "resumed")
        first = replace(config, epochs=stop_after)
        fit(resumed, first, progress=False, final_ten_crop=False)
        fit(resumed, config, resume=True, progress=False, final_ten_crop=False)
    finally:
        torch.use_deterministic_algorithms(False)
    a, b = weights(straight / "checkpoints/last.pt"), weights(resumed / "checkpoints/last.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    return straight, resumed


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_across_a_warmup_gives_the_same_weights_and_rates(tiny_data, tmp_path):
    # 16 training images in batches of 4: 4 steps an epoch, a warm-up of 6 steps.
    config = replace(TINY, epochs=2, warmup_epochs=1.5)
    straight, resumed = straight_and_resumed(tiny_data, tmp_path, config, stop_after=1)
    assert [m["epoch"] for m in metrics(resumed)] == [1, 2]
    rates = [m["lr"] for m in metrics(straight)]
    assert rates == [m["lr"] for m in metrics(resumed)]
    full = 0.01 * 4 / 128
    assert rates == [pytest.approx(full * 4 / 6), pytest.approx(full)]  # last step of each epoch


# The narrow network (tests/conftest.py): the paper's trains in test_cli's demo chain.
def test_an_epoch_interrupted_mid_way_resumes_bit_exactly(tiny_data, tmp_path, monkeypatch):
    # 4 steps an epoch; Ctrl-C arrives during the 6th step, i.e. in the middle of epoch 2.
    real, calls = train.set_rate, []

    def interrupting(optimizer, lr):
        calls.append(lr)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)
        real(optimizer, lr)

    torch.use_deterministic_algorithms(True)
    try:
        config = replace(TINY, epochs=2)
        straight = prep_run(tiny_data, tmp_path / "straight")
        fit(straight, config, progress=False, final_ten_crop=False)
        resumed = prep_run(tiny_data, tmp_path / "resumed")
        monkeypatch.setattr(train, "set_rate", interrupting)
        with pytest.raises(Interrupted, match="epoch 2 after batch 2"):
            fit(resumed, config, progress=False, final_ten_crop=False)
        monkeypatch.undo()
        saved = load_checkpoint(resumed / "checkpoints/last.pt")
        assert (saved["epoch"], saved["step"]) == (1, 2)
        fit(resumed, config, resume=True, progress=False, final_ten_crop=False)
    finally:
        torch.use_deterministic_algorithms(False)
    a, b = weights(straight / "checkpoints/last.pt"), weights(resumed / "checkpoints/last.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the resumed epoch's loss covers all its batches, not only those after the resume
    assert [m["loss"] for m in metrics(resumed)] == pytest.approx(
        [m["loss"] for m in metrics(straight)], rel=1e-12
    )


def test_resume_across_a_plateau_drop(tiny_data, tmp_path, monkeypatch):
    # Scripted validation losses: better, then flat: with patience 1 the rate drops after
    # epoch 3. The training is real; only the validation numbers are fixed. Values for the
    # straight run (4 epochs), then for the resumed one (3 epochs, stop, 1 more).
    script = iter([2.3, 2.2, 2.2, 2.2] + [2.3, 2.2, 2.2] + [2.2])

    def scripted(model, loader, world, **kw):
        loss = next(script)
        return {"top1_error": 0.5, "top5_error": 0.1, "loss": loss, "loss_se": 0.01, "images": 8}

    monkeypatch.setattr(train, "evaluate", scripted)
    config = replace(TINY, epochs=4, plateau_on="loss")
    straight, resumed = straight_and_resumed(tiny_data, tmp_path, config, stop_after=3)
    full = 0.01 * 4 / 128
    expected = [pytest.approx(r) for r in (full, full, full, full / 10)]
    assert [m["lr"] for m in metrics(straight)] == expected
    assert [m["lr"] for m in metrics(resumed)] == expected
    assert load_checkpoint(resumed / "checkpoints/last.pt")["schedule"]["dropped_after"] == [3]


def test_a_non_finite_loss_stops_before_anything_bad_is_saved(run, monkeypatch):
    fit(run, TINY, progress=False, final_ten_crop=False)
    good = weights(run / "checkpoints/last.pt")
    calls, real = [], F.cross_entropy

    def exploding(logits, y):
        calls.append(1)
        loss = real(logits, y)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(train.F, "cross_entropy", exploding)
    with pytest.raises(NonFinite, match=r"epoch 2, step 2; the last good checkpoint, .*last.pt"):
        fit(run, replace(TINY, epochs=2), resume=True, progress=False)
    saved = load_checkpoint(run / "checkpoints/last.pt")
    assert saved["epoch"] == 1 and all(torch.equal(saved["model"][k], good[k]) for k in good)
    assert len(metrics(run)) == 1
    best = weights(run / "checkpoints/best.pt")
    assert all(torch.isfinite(t).all() for t in best.values())


def test_nan_rate_stops_in_the_first_epoch_without_a_checkpoint(run):
    with pytest.raises(NonFinite, match="epoch 1, step 2; no checkpoint was saved"):
        fit(run, replace(TINY, lr=float("nan")), progress=False)
    assert not list((run / "checkpoints").iterdir())  # made before training; nothing saved


def test_refuses_to_overwrite_and_to_resume_with_other_settings(run):
    fit(run, TINY, progress=False, final_ten_crop=False)
    before = (run / "checkpoints/last.pt").stat().st_mtime_ns
    with pytest.raises(AlexnetError, match="resume"):
        fit(run, TINY, progress=False)
    with pytest.raises(AlexnetError, match="lr 0.01 -> 0.1"):
        fit(run, replace(TINY, epochs=2, lr=0.1), resume=True, progress=False)
    assert (run / "checkpoints/last.pt").stat().st_mtime_ns == before


def test_bad_inputs_are_clear_errors(run, tmp_path):
    with pytest.raises(AlexnetError, match="larger than the training set"):
        fit(run, replace(TINY, batch_size=64), progress=False)
    with pytest.raises(AlexnetError, match="manifest.json is missing"):
        fit(tmp_path / "nothing", TINY, progress=False)
    (run / "stats.npz").unlink()
    with pytest.raises(AlexnetError, match="stats.npz is missing"):
        fit(run, TINY, progress=False)


def test_stale_statistics_are_refused(tiny_data, tmp_path):
    run = prep_run(tiny_data, tmp_path / "run")
    other = make_images(tmp_path / "other", classes=3)
    manifest = dataset.scan(other, progress=False, threads=1)
    save_manifest(manifest, run)  # new manifest, old statistics
    with pytest.raises(AlexnetError, match="computed for other data"):
        fit(run, TINY, progress=False)


def test_checkpoint_of_another_class_count_is_refused(tiny_data, tmp_path):
    run = prep_run(tiny_data, tmp_path / "run")
    fit(run, TINY, progress=False, final_ten_crop=False)
    other = prep_run(make_images(tmp_path / "other", classes=3), tmp_path / "other_run")
    with pytest.raises(AlexnetError, match="other classes"):
        evaluate_checkpoint(other, run / "checkpoints/last.pt")


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_resume_finishes(run):
    cmd = alexnet_cmd(
        "train", "--run", str(run), "--epochs", "3", "--batch-size", "2", "--threads", "1"
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    saved = load_checkpoint(run / "checkpoints/last.pt")
    assert saved["epoch"] == 1 or saved["step"] > 0
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 3


@pytest.mark.slow
def test_torchrun_two_processes_one_epoch(run):
    done = torchrun(
        "train", "--run", str(run), "--epochs", "1", "--batch-size", "2", "--threads", "1"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["images"] == 6  # the two shards together see each image once
    assert json.loads(line)["batch"] == 4  # 2 processes x 2: the rate follows the global batch
    assert json.loads(line)["lr"] == pytest.approx(0.01 * 4 / 128)
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 1
