"""Shared fixtures: real photos of the read-only imagenette-mini set (never copied wholesale);
tests marked `gpu` (pyproject.toml) skipped where no CUDA device is; and the network's width.

Every test but those marked `full_size` builds the network NARROW times narrower
(model/alexnet.py TEST_WIDTH; fc7 stays 4096-d): the same code paths at a fraction of the
time, with checkpoints of a few MB instead of 0.5 GB. Those tests also run torch on one
thread (OMP_NUM_THREADS too, for the commands they start): their operations are small, and on
a busy machine a pool of threads waiting for each other at every small operation made them up
to 10x slower. Both are set for each test before its fixtures, so a command it starts in a
subprocess builds the same network; `full_size` tests get the paper's network and torch's
default threads, shared between the run's workers.

The suite runs on every core, with one worker more than the cores
(pyproject.toml addopts: pytest-xdist, `-n auto`, `--dist loadfile`): each
file's tests are one group, run by one worker, so a file's module fixtures are built once; the
Milvus files are one group, so one Milvus server starts per run; in SPLIT files each test
function is a group of its own (long tests sharing only cheap fixtures). The files with the
longest tests go first (FIRST), so that the workers end together.
"""

import os
from pathlib import Path

import pytest
import torch

from alexnet.model.alexnet import TEST_WIDTH

IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"
NARROW = "16"
os.environ[TEST_WIDTH] = NARROW  # for anything built while the tests are collected
OMP = "OMP_NUM_THREADS"
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # set by pytest-xdist
SHARE = max(1, torch.get_num_threads() // WORKERS)  # full-size tests' threads in each worker
DEFAULTS = {OMP: os.environ.get(OMP) if WORKERS == 1 else str(SHARE), "torch": SHARE}
MILVUS = {"test_milvus.py", "test_remote.py"}  # one group: one server per run
SPLIT = {"test_faults.py", "test_train.py"}
# Files of the longest tests, longest first: the many short tests of the others come last.
FIRST = ["test_milvus.py", "test_remote.py", "test_reference.py", "test_faults.py", "test_train.py"]
FIRST += ["test_cli.py", "test_readme.py", "test_codes.py", "test_gallery.py"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("full_size"):
        os.environ.pop(TEST_WIDTH, None)
        if DEFAULTS[OMP] is None:
            os.environ.pop(OMP, None)
        else:
            os.environ[OMP] = DEFAULTS[OMP]
        torch.set_num_threads(DEFAULTS["torch"])
    else:
        os.environ[TEST_WIDTH], os.environ[OMP] = NARROW, "1"
        torch.set_num_threads(1)


def group(nodeid: str) -> str:
    """The group of a test: its file, "milvus", or in SPLIT files its test function."""
    path, _, name = nodeid.partition("::")
    file = path.rsplit("/", 1)[-1]
    if file in MILVUS:
        return "milvus"
    return f"{path}::{name.split('[')[0]}" if file in SPLIT else path


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker more than the cores. Many tests wait on a command they started,
    a server or a browser; a spare worker keeps the cores busy meanwhile (on 2 cores: 148 s
    with 3 workers, 154 s with 4, 167-188 s with 2: BENCHMARKS.md)."""
    return len(os.sched_getaffinity(0)) + 1


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (pyproject.toml addopts) with the groups of `group`."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Groups(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group(nodeid)

    return Groups(config, log)


def pytest_collection_modifyitems(config, items):
    first = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    if torch.cuda.is_available():
        return
    for item in gpu:
        item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """DATA/<class>/<img>: a with 10 images, b with 7, c with 4 (fixtures.make_class_tree)."""
    from fixtures import make_class_tree

    return make_class_tree(tmp_path)


@pytest.fixture(scope="session")
def real_jpegs() -> list[str]:
    """20 real 224x224 JPEGs: the first two training photos of each of the 10 classes."""
    classes = sorted(d for d in (IMAGENETTE / "train").iterdir() if d.is_dir())
    files = [str(f) for d in classes for f in sorted(d.iterdir())[:2]]
    assert len(files) == 20, f"{IMAGENETTE} is incomplete"
    return files


from milvus_servers import milvus_server  # noqa: E402, F401  (one Milvus server per test run)
