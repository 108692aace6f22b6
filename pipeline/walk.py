"""The one folder walk: prep's class folders, a gallery's photo folder and a folder of queries
are all listed by `Walk`.

The walk enters every folder once: symlinked folders are followed, but one that leads back
to a folder already entered is reported as a loop; broken links, unreadable folders and files,
and anything that is not a regular file are reported with their reason. Hidden files and
folders are left out, and alexnet's own run folders (layout.is_run) are never entered.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .defaults import MAX_PIXELS, MIN_SIZE
from .errors import AlexnetError
from .imagecheck import inspect_all
from .layout import is_run

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp"}


class Walk:
    """Lists folders below `root`, each at most once, reporting what it cannot list in
    `skipped` ({"path" relative to root, "reason"})."""

    def __init__(self, root: str | Path):
        self.root = str(root)
        self.skipped: list[dict] = []
        self.entered: dict[tuple[int, int], str] = {}

    def rel(self, path: str) -> str:
        return path[len(self.root) + 1 :]

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"path": self.rel(path), "reason": reason})

    def listing(self, folder: str) -> tuple[list[str], list[str]] | None:
        """(sub-folders, files) of `folder`, sorted by name; None when it cannot or must not
        be listed (reported)."""
        try:
            st = os.stat(folder)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            self.skip(folder, "permission denied")
            return None
        except OSError as e:
            self.skip(folder, f"unreadable folder ({e.strerror})")
            return None
        first = self.entered.setdefault((st.st_dev, st.st_ino), folder)
        if first != folder:
            inside = folder.startswith(first + os.sep)
            self.skip(folder, "symlink loop" if inside else f"same folder as {self.rel(first)}")
            return None
        folders, files = [], []
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_symlink():
                try:
                    os.stat(e.path)  # follows the link: a broken one or a loop fails here
                except OSError as err:
                    self.skip(e.path, _link_problem(err))
                    continue
            if e.is_dir():
                if is_run(Path(e.path)):
                    self.skip(e.path, "an alexnet run folder (not scanned)")
                else:
                    folders.append(e.path)
            elif e.is_file():
                files.append(e.path)
            else:
                self.skip(e.path, "not a regular file")  # a FIFO would block the check
        return folders, files

    def files_below(self, folder: str) -> list[str] | None:
        """Every file below `folder`, sorted by path; None when `folder` cannot be listed."""
        listing = self.listing(folder)
        if listing is None:
            return None
        folders, files = listing
        for sub in folders:
            files += self.files_below(sub) or []
        return sorted(files)

    def images(self, paths: list[str]) -> list[str]:
        """The paths with an image's extension; the others reported."""
        kept = []
        for path in paths:
            if Path(path).suffix.lower() in EXTENSIONS:
                kept.append(path)
            else:
                self.skip(path, f"unsupported extension {Path(path).suffix or '(none)'}")
        return kept


def _link_problem(err: OSError) -> str:
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return "broken symlink"
    if err.errno == errno.ELOOP:
        return "symlink loop"
    if err.errno == errno.EACCES:
        return "permission denied"
    return f"unreadable symlink ({err.strerror})"


def images_below(
    folder: str | Path,
    *,
    min_size: int = MIN_SIZE,
    max_pixels: int = MAX_PIXELS,
    known: dict[str, tuple[int, int]] | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> tuple[list[tuple[str, int, int]], list[dict]]:
    """The usable images below `folder`, at any depth and with any names, walked as prep
    walks a class folder, and the skipped entries {"path" (relative), "reason"}.

    Returns (path, bytes, mtime_ns) per usable image, sorted by path. A file listed in `known`
    {path: (bytes, mtime_ns)} with that size and modification time is taken as it was, without
    decoding it again: an update checks only new and changed files.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise AlexnetError(f"{folder} is not a folder: pass the folder of images to index")
    walk = Walk(root)
    below = walk.files_below(str(root))
    if below is None:
        raise AlexnetError(f"{root} cannot be read: {walk.skipped[-1]['reason']}")
    usable, check = [], []
    for path in walk.images(below):
        try:
            st = os.stat(path)
        except OSError as e:
            walk.skip(path, f"unreadable ({e.strerror})")
            continue
        if known is not None and known.get(path) == (st.st_size, st.st_mtime_ns):
            usable.append((path, st.st_size, st.st_mtime_ns))
        else:
            check.append(path)
    results = inspect_all(check, min_size, max_pixels, threads, progress) if check else []
    for path, (reason, size, mtime) in zip(check, results, strict=True):
        if reason:
            walk.skip(path, reason)
        else:
            usable.append((path, size, mtime))
    return sorted(usable), sorted(walk.skipped, key=lambda s: s["path"])
