"""The trainer on a tiny generated dataset: metrics, checkpoints, exact resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fixtures import make_images, prep_run

from alexnet.model.checkpoint import load_checkpoint
from alexnet.model.config import TrainConfig
from alexnet.model.train import evaluate_checkpoint, fit
from alexnet.pipeline import dataset
from alexnet.pipeline.errors import AlexnetError

TINY = TrainConfig(epochs=1, batch_size=4, patience=1, num_threads=1)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data"))


@pytest.fixture
def run(tiny_data, tmp_path) -> Path:
    return prep_run(tiny_data, tmp_path / "run")


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_fit_writes_metrics_checkpoints_and_curves(run):
    metrics = fit(run, replace(TINY, epochs=2), progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for key in ("loss", "top1_error", "top5_error", "lr", "images_per_s", "data_wait"):
        assert all(key in m for m in lines)
    assert lines[0]["images"] == 6  # every validation image counted once
    assert 0 <= metrics["ten_crop_top1_error"] <= 1
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["epoch"] == 2 and saved["config"]["batch_size"] == 4
    assert (run / "checkpoints" / "best.pt").is_file()
    result = evaluate_checkpoint(run, run / "checkpoints" / "last.pt")
    assert result["centre"]["images"] == 6 and result["ten_crop"]["images"] == 6


def test_two_epochs_equal_one_plus_resume_plus_one(tiny_data, tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        straight = prep_run(tiny_data, tmp_path / "straight")
        fit(straight, replace(TINY, epochs=2), progress=False, final_ten_crop=False)
        resumed = prep_run(tiny_data, tmp_path / "resumed")
        fit(resumed, replace(TINY, epochs=1), progress=False, final_ten_crop=False)
        fit(resumed, replace(TINY, epochs=2), resume=True, progress=False, final_ten_crop=False)
    finally:
        torch.use_deterministic_algorithms(False)
    a, b = weights(straight / "checkpoints/last.pt"), weights(resumed / "checkpoints/last.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in lines] == [1, 2]


def test_refuses_to_overwrite_and_to_resume_with_other_settings(run):
    fit(run, TINY, progress=False, final_ten_crop=False)
    before = (run / "checkpoints/last.pt").stat().st_mtime_ns
    with pytest.raises(AlexnetError, match="--resume"):
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
    manifest = dataset.scan(other, progress=False, workers=1)
    dataset.save_manifest(manifest, run)  # new manifest, old statistics
    with pytest.raises(AlexnetError, match="computed for other data"):
        fit(run, TINY, progress=False)


def test_checkpoint_of_another_class_count_is_refused(tiny_data, tmp_path):
    run = prep_run(tiny_data, tmp_path / "run")
    fit(run, TINY, progress=False, final_ten_crop=False)
    other = prep_run(make_images(tmp_path / "other", classes=3), tmp_path / "other_run")
    with pytest.raises(AlexnetError, match="other classes"):
        evaluate_checkpoint(other, run / "checkpoints/last.pt")


def alexnet_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("alexnet")), *args]


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--no-python",
        "--",
        *alexnet_cmd(
            "train", "--run", str(run), "--epochs", "1", "--batch-size", "2", "--threads", "1"
        ),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["images"] == 6  # the two shards together see each image once
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 1
