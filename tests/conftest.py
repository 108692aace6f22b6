"""Shared fixtures: real photos of the read-only imagenette-mini set (never copied wholesale)."""

from pathlib import Path

import pytest

IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"


@pytest.fixture(scope="session")
def real_jpegs() -> list[str]:
    """20 real 224x224 JPEGs: the first two training photos of each of the 10 classes."""
    classes = sorted(d for d in (IMAGENETTE / "train").iterdir() if d.is_dir())
    files = [str(f) for d in classes for f in sorted(d.iterdir())[:2]]
    assert len(files) == 20, f"{IMAGENETTE} is incomplete"
    return files
