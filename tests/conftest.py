"""Shared fixtures: real photos of the read-only imagenette-mini set (never copied wholesale);
and tests marked `gpu` (pyproject.toml) skipped where no CUDA device is."""

from pathlib import Path

import pytest

IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"


def pytest_collection_modifyitems(config, items):
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

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
