"""What survives a second process, a full disk, a kill, a bad file, and a bad option.

Each case is made for real: a second process holds the lock, a file is corrupted under the
trainer, a process writing checkpoints is killed with SIGKILL at random moments. Only the
free-space figure is faked (a disk cannot be filled safely here).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fixtures import make_images, prep_run

from alexnet.cli.main import cli
from alexnet.model.checkpoint import load_checkpoint, save_checkpoint
from alexnet.model.config import TrainConfig
from alexnet.model.train import fit
from alexnet.pipeline import files as files_module
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import UMASK, atomic_write, remove_stale_temps
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.lock import RunLock
from alexnet.pipeline.manifest import load_manifest
from alexnet.pipeline.prep import prepare

TINY = TrainConfig(epochs=1, batch_size=4, patience=1, num_threads=1)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data"))


@pytest.fixture
def run(tiny_data, tmp_path) -> Path:
    return prep_run(tiny_data, tmp_path / "run")


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


# --- one writer per run ------------------------------------------------------------------


def test_a_second_writer_is_refused_while_readers_go_on(run, tiny_data):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom alexnet.pipeline.lock import RunLock\n"
            f"with RunLock({str(run)!r}, 'train'):\n    print('held', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = invoke("prep", tiny_data, "--run", run)
        assert result.exit_code == 2
        assert (
            f"is in use by pid {holder.pid}" in result.output and "(alexnet train)" in result.output
        )
        with pytest.raises(AlexnetError, match="in use"):
            fit(run, TINY, progress=False)
        assert not RunPaths(run).last.exists()
        assert json.loads(RunPaths(run).manifest.read_text())  # readers still read
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the next writer takes it over
    with RunLock(run, "prep"):
        assert f"pid {os.getpid()}" in RunPaths(run).lock.read_text()


def test_prep_keeps_a_trained_run_of_other_data_unless_forced(run, tiny_data, tmp_path):
    fit(run, TINY, progress=False, final_ten_crop=False)
    prepare(tiny_data, run, threads=1, progress=False)  # the same data: harmless, allowed
    other = make_images(tmp_path / "other", classes=3)
    with pytest.raises(AlexnetError, match="checkpoints/last.pt made from other data"):
        prepare(other, run, threads=1, progress=False)
    assert (
        load_checkpoint(RunPaths(run).last)["fingerprint"]
        == json.loads(RunPaths(run).manifest.read_text())["fingerprint"]
    )
    prepared = prepare(other, run, threads=1, force=True, progress=False)
    assert len(load_manifest(prepared).classes) == 3


# --- kills and temporary files -----------------------------------------------------------


def test_sigkill_during_checkpoint_writes_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "run" / "checkpoints" / "last.pt"
    writer = textwrap.dedent(
        f"""
        import torch
        from alexnet.model.checkpoint import save_checkpoint
        state = {{"model": {{"w": torch.randn(4_000_000)}}, "epoch": 0}}
        for i in range(1000):
            state["epoch"] = i
            save_checkpoint({str(target)!r}, state)
        """
    )
    rng = random.Random(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", writer])
        time.sleep(rng.uniform(2.0, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            assert torch.load(target, weights_only=True)["epoch"] >= 0  # whole, or not there
    leftovers = list(target.parent.glob(".last.pt.*.tmp"))
    removed = remove_stale_temps(tmp_path / "run")
    assert sorted(removed) == sorted(leftovers)
    assert not list(target.parent.glob("*.tmp"))


def test_only_dead_processes_temporary_files_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / "index" / f".features.f16.npy.{dead.stdout.strip()}.abc123.tmp"
    live = tmp_path / f".metrics.jsonl.{os.getpid()}.def456.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 8192)
    live.write_text("in progress")
    with RunLock(tmp_path, "index"):
        assert not stale.exists() and live.exists()


def test_files_follow_the_umask(tmp_path):
    path = atomic_write(tmp_path / "a.json", lambda tmp: Path(tmp).write_text("{}"))
    assert path.stat().st_mode & 0o777 == 0o666 & ~UMASK


# --- full disk, unwritable folder ----------------------------------------------------------


def test_too_little_space_stops_training_before_any_epoch(run, monkeypatch):
    usage = shutil.disk_usage(run)
    monkeypatch.setattr(
        files_module.shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**20)
    )
    with pytest.raises(AlexnetError, match=r"training's checkpoints needs about .* GiB"):
        fit(run, TINY, progress=False)
    assert not RunPaths(run).metrics.exists()


def test_a_failed_write_is_one_clear_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    path.write_text("the old checkpoint")

    def full(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(AlexnetError, match="cannot write .*last.pt: No space left on device"):
        atomic_write(path, full)
    assert path.read_text() == "the old checkpoint" and not list(tmp_path.glob(".*.tmp"))


def test_an_unwritable_checkpoint_folder_is_found_before_training(run):
    (run / "checkpoints").write_text("a file where the folder should be")
    with pytest.raises(AlexnetError, match="cannot create .*checkpoints"):
        fit(run, TINY, progress=False)
    assert not RunPaths(run).metrics.exists()


# --- a file that goes bad under the trainer ------------------------------------------------


def test_a_training_file_corrupted_after_prep_is_named(run, tiny_data):
    victim = tiny_data / load_manifest(run, check_files=False).files.paths[0]
    backup = victim.read_bytes()
    st = victim.stat()
    try:
        victim.write_bytes(b"\0" * st.st_size)  # same size and time: only decoding can tell
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(AlexnetError) as caught:
            fit(run, replace(TINY, epochs=2), progress=False)
        message = str(caught.value)
        assert str(victim) in message and "Restore the file" in message
        assert "Traceback" not in message and len(message.splitlines()) == 1
    finally:
        victim.write_bytes(backup)
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_checkpoint_with_missing_keys_is_one_line(tmp_path):
    save_checkpoint(tmp_path / "x.pt", {"model": {}})
    with pytest.raises(AlexnetError, match="lacks optimizer, schedule"):
        load_checkpoint(tmp_path / "x.pt")


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--batch-size", "0"],
        ["train", "--batch-size", "-3"],
        ["train", "--threads", "-1"],
        ["train", "--dropout", "1.5"],
        ["train", "--lr", "nan"],
        ["train", "--lr", "0"],
        ["train", "--epochs", "0"],
        ["train", "--warmup-epochs", "-1"],
        ["prep", ".", "--val-fraction", "1"],
        ["search", "x.jpg", "-k", "0"],
        ["search", "x.jpg", "--rerank", "-1"],
        ["eval-retrieval", "--max-queries", "-3"],
        ["index", "--bits", "12"],
    ],
)
def test_bad_options_are_one_line_before_any_work(args, tmp_path):
    result = invoke(*args, "--run", tmp_path / "nothing")
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "nothing").exists()


def test_one_bad_file_in_a_query_folder_is_skipped_and_reported(tmp_path):
    from retrieval_fixtures import CLASSES

    from alexnet.pipeline.images import read_images

    folder = make_images(tmp_path / "queries", train=1, val=None, names=CLASSES)
    (folder / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    images = read_images([folder, tmp_path / "missing.jpg"])
    names = [name for batch, _ in images.batches(2) for name in batch]
    assert len(names) == 3 and all(Path(f).name == "0.jpg" for f in names)
    assert [Path(p).name for p, _ in images.skipped] == ["broken.jpg", "missing.jpg"]
    assert "not an image" in images.skipped[0][1] and "does not exist" in images.skipped[1][1]
    with pytest.raises(AlexnetError, match=r"missing.jpg cannot be used: does not exist"):
        list(read_images(tmp_path / "missing.jpg").batches(2))  # alone: an error


@pytest.mark.slow
@pytest.mark.parametrize("command", ["prep", "train"])
def test_ctrl_c_exits_130_everywhere(command, tmp_path):
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"
    run = tmp_path / "run"
    if command == "train":
        prep_run(make_images(tmp_path / "data", train=40), run)
        args, busy = ["train", "--run", str(run), "--batch-size", "2", "--threads", "1"], "epoch 1/"
    else:
        args, busy = ["prep", str(data), "--run", str(run), "-j", "1"], "prep statistics"
    alexnet = str(Path(sys.executable).with_name("alexnet"))
    proc = subprocess.Popen([alexnet, *args], stderr=subprocess.PIPE)
    err = bytearray()

    def read() -> None:
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            err.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.time() + 120
    while busy.encode() not in err and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the work has started: Ctrl-C now lands in the middle of it
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err
