"""Checking a run's files whole: what `alexnet verify` reports.

Opening a collection already checks its small files (codes, index, autoencoder, a gallery's
table) against the size, time and xxh3 checksum its record took when it wrote them
(store.problem). This reads everything else too: the manifest (its fingerprint), the
statistics, the checkpoints (every tensor and value against the checksums written inside
them), each collection's feature file (the checksum of its whole
content) and, with `files`, every image the manifest lists (its size and time). Each
problem comes back as {"file", "problem", "fix"}; none is repaired here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from alexnet.model.checkpoint import Corrupted, load_checkpoint
from alexnet.model.inference import load_trained
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import identity_problem
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.manifest import load_manifest
from alexnet.pipeline.stats import load_stats

from .store import (
    collection_paths,
    gallery_names,
    live_paths,
    made_from,
    problem,
    read_record,
    refresh,
)

log = logging.getLogger(__name__)

PREP = "prepare the data into this run again (`alexnet prep`)"


def verify_run(
    run: str | Path, *, galleries: Sequence[str] | bool = False, files: bool = False
) -> list[dict]:
    """Every problem with RUN's files: the manifest, statistics, checkpoints, the training
    set's collection, the galleries named in `galleries` (True: all of them) and, with
    `files`, the images the manifest lists. An empty list: all is well."""
    paths = RunPaths(run)
    try:
        manifest = load_manifest(run, check_files=False)
    except AlexnetError as e:
        return [{"file": str(paths.manifest), "problem": str(e), "fix": PREP}]
    found = []
    try:
        load_stats(run, manifest.fingerprint)
    except AlexnetError as e:
        found.append({"file": str(paths.stats), "problem": str(e), "fix": PREP})
    for checkpoint in (paths.best, paths.last):
        if checkpoint.is_file():
            try:
                load_checkpoint(checkpoint, mmap=True, whole=True)
            except Corrupted as e:
                found.append({"file": str(checkpoint), "problem": e.problem, "fix": e.fix})
            except AlexnetError as e:
                fix = "train again, or resume from the other checkpoint"
                found.append({"file": str(checkpoint), "problem": str(e), "fix": fix})
    if files:
        found += _images(manifest)
    names = gallery_names(run) if galleries is True else list(galleries or ())
    if paths.best.is_file() and not any(f["file"] == str(paths.best) for f in found):
        trained = load_trained(run, check_files=False)
        for name in [None, *names]:
            found += _collection(paths, name, trained)
    return found


def _images(manifest) -> list[dict]:
    table, out = manifest.files, []
    for i in range(len(table)):
        path = f"{manifest.root}/{table.paths[i]}"
        try:
            st = os.stat(path)
            changed = st.st_size != table.sizes[i] or st.st_mtime_ns != table.mtimes[i]
            what = "changed since prep (size or modification time)" if changed else None
        except OSError as e:
            what = "gone" if isinstance(e, FileNotFoundError) else e.strerror
        if what:
            out.append({"file": path, "problem": f"listed in the manifest, {what}", "fix": PREP})
    return out


def _collection(run: RunPaths, name: str | None, trained) -> list[dict]:
    paths = collection_paths(run.root, name)
    record = read_record(paths)
    if record is None:
        if name is not None:
            fix = "index it (`alexnet index` with its images and name)"
            return [{"file": str(paths.meta), "problem": f"no gallery {name!r}", "fix": fix}]
        return []  # the training set not indexed yet: nothing to check
    fix = refresh(run, name, record)
    wrong = problem(paths, record, made_from(trained, name, record.get("bits")))
    if wrong:
        return [{"file": str(paths.meta), "problem": wrong, "fix": fix}]
    paths, recorded = live_paths(paths, record), record.get("features_identity")
    wrong = recorded and identity_problem(paths.features, recorded, content=True)
    if wrong:  # the record is kept, so the feature file must go for the rows to be extracted
        fix = f"delete {paths.features} and {paths.features_meta}, then {fix}"
        return [{"file": str(paths.features), "problem": wrong, "fix": fix}]
    return []
