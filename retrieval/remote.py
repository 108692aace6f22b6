"""What a face shows about a collection (`describe`), and a collection's codes served by
Milvus instead of the local FAISS index (`milvus=URI`).

The run folder stays the source of truth: fc7 features, codes and the record are made
locally by `Collection.update` as always, and then synchronised to one Milvus collection
(retrieval/milvus.py), named from the run and the gallery: new and changed images upserted,
vanished ones deleted, each row's digest (its code, size and modification time) saying which
changed. Searches then ask Milvus for the Hamming neighbours; re-ranking by fc7 reads the
local feature file, which is always there because the update made it.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from alexnet.model.metrics import read_metrics

from .features import source_identity
from .milvus import MilvusCodes, collection_name, connect

log = logging.getLogger(__name__)


def remote_codes(c, uri: str) -> MilvusCodes:
    """The Milvus collection of open collection `c`: made for its bits and network, refused
    (nothing changed) when it holds another network's or another length's codes."""
    network = json.dumps(source_identity(c.trained)["checkpoint"], sort_keys=True)
    name = collection_name(str(c.run.root.resolve()), c.name or "train")
    return MilvusCodes(connect(uri), name, c.bits, network)


def digests(collection) -> list[str]:
    t = collection.table
    return [
        f"{c.tobytes().hex()}:{s}:{m}" for c, s, m in zip(t.codes, t.sizes, t.mtimes, strict=True)
    ]


def sync(c, remote: MilvusCodes) -> dict:
    """Bring `remote` up to date with open collection `c`; returns the counts it changed."""
    t, now = c.table, digests(c)
    stored = remote.digests()
    rows = [int(r) for r in t.rows]
    changed = np.array([i for i, r in enumerate(rows) if stored.get(r) != now[i]], np.int64)
    gone = np.array(sorted(set(stored) - set(rows)), np.int64)
    if len(gone):
        remote.delete(gone)
    if len(changed):
        classes = [h["class_id"] or "" for h in t.hits(changed, c.trained)]
        remote.upsert(
            t.rows[changed],
            t.codes[changed],
            [str(t.paths[i]) for i in changed],
            classes,
            [now[i] for i in changed],
        )
    log.info(
        "Milvus collection %s: %d codes stored or replaced, %d deleted (%s index)",
        remote.name,
        len(changed),
        len(gone),
        remote.index_type,
    )
    return {"milvus": remote.name, "upserted": len(changed), "deleted": len(gone)}


def describe(c) -> dict:
    """The run, its classes, the number of images, the code length and index kind (or the
    Milvus collection), the checkpoint, its epoch and that epoch's validation top-1 error
    (None when RUN/metrics.jsonl has no line for it), of open collection `c`."""
    trained = c.trained
    errors = {m["epoch"]: m.get("top1_error") for m in read_metrics(c.run.root)}
    return {
        "run": str(c.run),
        "collection": c.name,
        "classes": trained.classes,
        "count": len(c),
        "bits": c.bits,
        "index": c.kind if c.remote is None else f"milvus {c.remote.name}",
        "checkpoint": str(trained.checkpoint),
        "epoch": trained.epoch,
        "top1_error": errors.get(trained.epoch),
    }
