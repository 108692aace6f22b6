"""Atomic writes and reads of the files a run keeps under RUN/.

Every file is written to a temporary name beside its target and then `os.replace`d, so an
interrupted command never leaves a half-written file that looks complete, and the temporary
files of killed commands are removed by the next one that writes to the run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from .errors import AlexnetError
from .testpoints import reached


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` in one step.

    The temporary name carries this process's id, so that a later command can remove what a
    killed one left (`remove_stale_temps`); the file gets the mode the umask allows, like any
    file the user creates. A failed write (a full disk, say) removes the temporary file and
    raises one AlexnetError naming the file.
    """
    path = Path(path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX
        )
    except OSError as e:
        raise AlexnetError(
            f"cannot write to {path.parent}: {e.strerror}; choose a writable {{run}} folder"
        ) from e
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)
        reached(f"write {path.name}")
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and (isinstance(e, OSError) or disk_full(path.parent)):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "the disk is full"
            raise AlexnetError(
                f"cannot write {path}: {reason}; nothing was replaced. Free some space (or fix "
                "the folder's permissions) and run the command again"
            ) from None
        raise
    return path


def make_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AlexnetError(
            f"cannot create {folder}: {e.strerror}; choose a writable {{run}} folder"
        ) from None
    return folder


def disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def check_space(folder: str | Path, needed: int, what: str) -> None:
    """Refuse to start work whose output (`needed` bytes) cannot fit beside `folder`."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise AlexnetError(
            f"{what} needs about {needed / 2**30:.2f} GiB in {folder}, but only "
            f"{free / 2**30:.2f} GiB are free: free some space or choose another {{run}}"
        )


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed alexnet processes left below `folder` (their
    names carry a process id that no longer runs); returns what was removed."""
    removed = []
    for tmp in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        parts = tmp.name.rsplit(".", 3)  # ".NAME", "PID", "RANDOM", "tmp"
        if len(parts) == 4 and parts[1].isdigit() and not pid_alive(int(parts[1])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


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


def content_digest(path: str | Path, block: int = 1 << 24) -> str:
    """xxh3-128 of the file's bytes: ~14x sha256's speed and ~30x blake2b's here (see
    BENCHMARKS.md, "Integrity"), so even a feature file of millions of rows is checked at the
    speed the disk reads it."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def file_identity(path: str | Path, *, digest: bool = False) -> dict:
    """Name, size and modification time: they change whenever the file is rewritten. With
    `digest`, also its content digest, which catches what those miss: bytes changed in place
    (a bad disk, a partial copy, an in-place rsync) at the same size and time."""
    st = Path(path).stat()
    identity = {"file": Path(path).name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if digest:
        identity["xxh3"] = content_digest(path)
    return identity


def identity_problem(path: str | Path, recorded: dict, *, content: bool = True) -> str | None:
    """None when `path` is the file `recorded` describes; else what is wrong, in words. The
    content is compared (when recorded and `content`) even when size and time agree."""
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    now = file_identity(path)
    if now["bytes"] != recorded.get("bytes"):
        was = recorded.get("bytes", 0)
        return f"{path} has changed since it was written ({now['bytes']:,} bytes, not {was:,})"
    if content and "xxh3" in recorded and content_digest(path) != recorded["xxh3"]:
        return f"{path} is corrupted: its bytes no longer match the checksum taken when written"
    if now["mtime_ns"] != recorded.get("mtime_ns"):
        return f"{path} has been rewritten since it was recorded"
    return None
