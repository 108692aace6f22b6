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
from alexnet.pipeline.stats import load_stats

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
    # One process imports torch once, then forks a writer for each line it reads; each writer
    # says its pid after its first checkpoint and goes on writing until it is killed.
    writer = textwrap.dedent(
        f"""
        import os, sys
        import torch
        from alexnet.model.checkpoint import save_checkpoint
        state = {{"model": {{"w": torch.randn(4_000_000)}}, "epoch": 0}}
        for _ in sys.stdin:
            pid = os.fork()
            if pid == 0:
                for i in range(1000):
                    state["epoch"] = i
                    save_checkpoint({str(target)!r}, state)
                    if i == 0:
                        print(os.getpid(), flush=True)
                os._exit(0)
            os.waitpid(pid, 0)
            print("reaped", flush=True)
        """
    )
    rng = random.Random(0)
    proc = subprocess.Popen(
        [sys.executable, "-c", writer], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    for _ in range(6):
        proc.stdin.write("write\n")
        proc.stdin.flush()
        pid = int(proc.stdout.readline())  # a first checkpoint is written: the writes go on
        time.sleep(rng.uniform(0.0, 0.5))  # the kill lands at a random point of one
        os.kill(pid, signal.SIGKILL)  # its parent has not reaped it: the pid is still its
        assert proc.stdout.readline() == "reaped\n"
        assert torch.load(target, weights_only=True)["epoch"] >= 0  # whole
    proc.stdin.close()
    assert proc.wait() == 0
    proc.stdout.close()
    leftovers = list(target.parent.glob(".last.pt.*.tmp"))
    removed = remove_stale_temps(tmp_path / "run")
    assert sorted(removed) == sorted(leftovers)
    assert not list(target.parent.glob("*.tmp"))


KILL_POINTS = {
    "import-weights": [
        "import checked",
        "write stats.npz",
        "write best.pt",
        "write manifest.files.npz",
        "write manifest.json",
    ],
    "prep": [
        "prep started",
        "prep scanned",
        "write stats.npz",
        "write manifest.files.npz",
        "write manifest.json",
    ],
}


@pytest.fixture(scope="module")
def caffemodel(tmp_path_factory) -> Path:
    from caffe_files import random_weights, write_caffemodel

    return write_caffemodel(tmp_path_factory.mktemp("net") / "bvlc.caffemodel", random_weights(4))


@pytest.mark.parametrize(
    "command, point", [(c, p) for c, points in KILL_POINTS.items() for p in points]
)
def test_a_kill_at_any_point_never_blocks_the_next_run(command, point, tmp_path, request):
    """kill -9 at a named point (pipeline/testpoints.py), then the same command again: it
    works without --force, and the run is whole."""
    run = tmp_path / "run"
    if command == "prep":
        args = ["prep", str(request.getfixturevalue("tiny_data")), "--run", str(run), "-j", "1"]
    else:
        args = ["import-weights", str(request.getfixturevalue("caffemodel")), "--run", str(run)]
    alexnet = [str(Path(sys.executable).with_name("alexnet")), "--quiet", *args]
    killed = subprocess.run(
        alexnet, env={**os.environ, "ALEXNET_TEST_KILL": point}, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = invoke(*args)  # in this process: a second start of the script costs seconds
    assert again.exit_code == 0, again.output
    assert not list(run.rglob("*.tmp"))  # the killed process's temporary files are gone
    manifest = load_manifest(run, check_files=False)
    load_stats(run, manifest.fingerprint)
    if command == "import-weights":
        assert load_checkpoint(RunPaths(run).best, whole=True)["classes"] == manifest.classes


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


# Path parameters that name something a command makes, not reads.
OUTPUTS = {
    ("export-onnx", "out"),
    ("search", "montage"),
    ("search", "csv"),
    ("duplicates", "csv"),
    ("demo", "run"),
    ("prep", "run"),
    ("import-weights", "run"),
}


def path_cases():
    import click

    for name, command in sorted(cli.commands.items()):
        for param in command.params:
            if isinstance(param.type, click.Path) and (name, param.name) not in OUTPUTS:
                yield name, param.name


@pytest.mark.parametrize("command, name", list(path_cases()))
def test_every_missing_path_is_one_line(command, name, quick_run, tmp_path):
    """Each command's input path that does not exist: one line naming it, exit 2."""
    import click

    missing = tmp_path / "missing-input"
    params = {p.name: p for p in cli.commands[command].params}
    tested = params[name]
    args = [command] + (
        [missing] if isinstance(tested, click.Argument) else [tested.opts[0], missing]
    )
    image = sorted((quick_run.parent / "data").rglob("*.jpg"))[0]
    given = {"file": image, "images": image, "data": quick_run.parent / "data", "gallery": "g"}
    given |= {
        "out": tmp_path / "out.onnx",
        "run": tmp_path / "new" if command == "import-weights" else quick_run,
    }
    for other in params.values():
        if other is tested or not (other.required or other.name == "run"):
            continue
        value = given[other.name]
        args += [value] if isinstance(other, click.Argument) else [other.opts[0], value]
    result = invoke(*args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert str(missing) in lines[0]


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


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """A prepped run with an untrained checkpoint, no index (retrieval_fixtures.make_run)."""
    from retrieval_fixtures import CLASSES, make_run

    root = tmp_path_factory.mktemp("quick")
    return make_run(make_images(root / "data", train=6, val=None, names=CLASSES), root / "run")


# Each long command, the point it is stopped at (pipeline/testpoints.py) and what its one line
# says is kept: the SIGINT is sent once the command says it waits there, so it always lands in
# the middle of the work, however loaded the machine.
CTRL_C = {
    "prep": ("prep scanned", "the run is as it was"),
    "import-weights": ("import checked", "no run was made"),
    "train": ("train epoch 1", "stopped in epoch 1 after batch 1; kept"),
    "demo": ("prep scanned", "what the demo made so far"),
    "eval": ("run loaded", "kept"),
    "index": ("run loaded", "kept the index as it was"),
    "search": ("run loaded", "kept"),
}


def test_a_signal_just_before_the_pause_still_ends_it():
    """The SIGINT may land after "paused at" is printed but before the wait begins, under a
    handler that only sets a flag (the trainer's): the pause must still end."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from alexnet.pipeline.testpoints import reached
        seen = []
        signal.signal(signal.SIGINT, lambda s, f: seen.append(s))
        class Stderr:
            def write(self, text):
                return sys.__stderr__.write(text)
            def flush(self):  # right after the line, before the wait
                os.kill(os.getpid(), signal.SIGINT)
        sys.stderr = Stderr()
        reached("here")
        print("went on", seen == [signal.SIGINT])
        """
    )
    env = {**os.environ, "ALEXNET_TEST_PAUSE": "here"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "went on True", done.stderr


@pytest.mark.parametrize("command", list(CTRL_C))
def test_ctrl_c_exits_130_everywhere(command, tmp_path, request):
    point, kept = CTRL_C[command]
    data, run = request.getfixturevalue("tiny_data"), tmp_path / "run"
    if command == "prep":
        args = ["prep", data, "--run", run, "-j", "1"]
    elif command == "import-weights":
        args = ["import-weights", request.getfixturevalue("caffemodel"), "--run", run]
    elif command == "train":
        args = ["train", "--run", prep_run(data, run), "--batch-size", "4", "--threads", "1"]
    elif command == "demo":
        args = ["demo", "--data", data, "--run", run, "--epochs", "1"]
    else:
        quick = request.getfixturevalue("quick_run")
        found = [quick.parent / "data"] if command == "search" else []
        args = [command, *found, "--run", quick]
    alexnet = str(Path(sys.executable).with_name("alexnet"))
    env = {**os.environ, "ALEXNET_TEST_PAUSE": point}
    proc = subprocess.Popen([alexnet, *map(str, args)], stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:  # until the command waits at its point
        lines.append(line)
        if line.strip() == f"paused at {point}":
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest
    said = rest.strip().splitlines()
    assert said and said[-1].startswith("interrupted: ") and kept in said[-1], rest
    assert "Traceback" not in rest
