"""Atomic writes and reads of the files a run keeps under RUN/.

Every file is written to a temporary name beside its target and then `os.replace`d, so an
interrupted command never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import AlexnetError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` in one step."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise AlexnetError(
            f"cannot write to {path.parent}: {e.strerror}; choose a writable --run folder"
        ) from e
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
            f.write("\n")

    return atomic_write(path, write)


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """Read a JSON file the toolkit wrote, or fail with a message that says how to remake it."""
    path = Path(path)
    if not path.is_file():
        raise AlexnetError(f"{path} is missing: {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AlexnetError(f"{path} is not a readable {what} ({e}): {fix}") from e


def file_identity(path: str | Path) -> dict:
    """Name, size and modification time: they change whenever the file is rewritten."""
    st = Path(path).stat()
    return {"file": Path(path).name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
