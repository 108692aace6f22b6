"""Compaction: a gallery's feature file with only the rows its table lists.

A gallery update appends the rows of new and changed photos and never reclaims the rows of
deleted or replaced ones (update.py), so the feature file only grows. `compact_gallery`
rewrites it with the live rows alone, in the table's (path) order: the image at position i
gets row i. Ids are feature rows, so compaction renumbers them: an id a search returned
before names another image, or none, after (the record's "uid" changes with them, so that
thumbnails kept by id are made again). `Collection.update(folder, compact=True)` compacts
after the update; it also does when more than half of the rows are dead (AUTO_DEAD); its
result then has "compacted": {"rows_before", "rows_after", "bytes_freed"}.

Kill safety, as an update's: the new rows go to features.G+1.f16.npy (+ features.G+1.json,
its count), the renumbered table to files.G+1.npz, then the record that names both (the
commit), then the old feature file and table are removed. A kill before the commit leaves the
previous record and the files it names as they were; what the killed compaction wrote is
removed by the next one.
"""

from __future__ import annotations

import logging
import secrets

import numpy as np

from alexnet.pipeline.files import check_space, file_identity, read_json, write_json
from alexnet.pipeline.layout import IndexPaths
from alexnet.pipeline.lock import RunLock

from .features import ROW_BYTES, grow_features, load_features
from .store import Table, identities, live_paths, read_record

log = logging.getLogger(__name__)

AUTO_DEAD = 0.5  # compact without being asked when more than this share of rows is dead
BLOCK = 4096  # rows copied at a time


def dead_rows(record: dict) -> int:
    """Rows of the feature file that no image of the table uses."""
    return int(record["rows"]) - int(record["count"])


def needs_compaction(record: dict) -> bool:
    return dead_rows(record) > AUTO_DEAD * int(record["rows"])


def compact_gallery(run, paths: IndexPaths, name: str) -> dict:
    """Rewrite gallery NAME's feature file and table with its live rows only (module
    docstring); returns the new record with "compacted": {"rows_before", "rows_after",
    "bytes_freed"}. The gallery must be current (Collection.update compacts after updating)."""
    with RunLock(run, f"compacting gallery {name}"):
        record = read_record(paths)
        old, generation = live_paths(paths, record), record["generation"] + 1
        table = Table.load(paths.entries(record["generation"]))
        new = paths.compacted(generation)
        check_space(paths.folder, len(table) * ROW_BYTES, "the compacted fc7 features")
        write_rows(old, new, table.rows)
        table.rows = np.arange(len(table), dtype=np.int64)
        table.save(paths.entries(generation))
        compacted = {
            "rows_before": int(record["rows"]),
            "rows_after": len(table),
            "bytes_freed": dead_rows(record) * ROW_BYTES,
        }
        record = commit(paths, record, new, generation, compacted)
        paths.entries(generation - 1).unlink(missing_ok=True)
        for leftover in paths.feature_files():
            if leftover not in (new.features, new.features_meta):  # the old file, a killed run's
                leftover.unlink(missing_ok=True)
    log.info("gallery %s compacted: %d rows -> %d", name, compacted["rows_before"], len(table))
    return {**record, "compacted": compacted}


def write_rows(old: IndexPaths, new: IndexPaths, rows: np.ndarray) -> None:
    """The feature file `new` (and its count) holding `old`'s `rows`, in that order."""
    new.features.unlink(missing_ok=True)  # a killed compaction's
    grow_features(new.features, len(rows))
    source, target = load_features(old), np.load(new.features, mmap_mode="r+")
    for s in range(0, len(rows), BLOCK):
        target[s : s + BLOCK] = source[rows[s : s + BLOCK]]
    target.flush()
    del target
    meta = read_json(old.features_meta, "feature sidecar", "")
    write_json(new.features_meta, {**meta, "count": len(rows)})


def commit(paths: IndexPaths, record: dict, new: IndexPaths, generation: int, compacted) -> dict:
    """The record naming the compacted feature file and table: written last."""
    ivf = [paths.folder / record["index"]] if record.get("index") else []  # positions unchanged
    record = {
        **record,
        "rows": compacted["rows_after"],
        "generation": generation,
        "features": new.feature_file,
        "features_identity": file_identity(new.features, digest=True),
        "files": identities(paths.entries(generation), *ivf),
        "uid": secrets.token_hex(4),  # ids are renumbered: thumbnails by id are made again
    }
    write_json(paths.meta, record)
    return record
