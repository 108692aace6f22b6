"""A collection's codes served by Milvus instead of the local FAISS index (`milvus=URI`):
arrays in, arrays or dicts out, as index.py; the Collection passes its own.

The run folder stays the source of truth: fc7 features, codes and the record are made
locally by `Collection.update` as always, and then synchronised to one Milvus collection
(retrieval/milvus.py), named from the run and the gallery: new images inserted, changed ones
upserted, vanished ones deleted, each row's digest (its code, size and modification time)
saying which changed, so an interrupted sync sends only what is still missing when run
again. Searches then ask Milvus for the Hamming neighbours, probing the share of its lists
that the local index probes of its own; re-ranking by fc7 reads the local feature file,
which is always there because the update made it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from .milvus import MilvusCodes, collection_name, connect

log = logging.getLogger(__name__)


def remote_codes(
    uri: str, run: str, gallery: str | None, bits: int, network: str, probe=None
) -> MilvusCodes:
    """The Milvus collection of collection `gallery` (None: the training set) of the run in
    folder `run`: made for its `bits` and `network` (a string naming the network that made the
    codes), refused (nothing changed) when it holds another network's or another length's
    codes. `probe`: (nprobe, lists) of the local IVF index, None for a flat one (exact)."""
    name = collection_name(run, gallery or "train")
    return MilvusCodes(connect(uri), name, bits, network, probe=probe)


def digests(codes: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray) -> list[str]:
    """Each image's content digest: its code, size and modification time."""
    return [f"{c.tobytes().hex()}:{s}:{m}" for c, s, m in zip(codes, sizes, mtimes, strict=True)]


def sync(
    remote: MilvusCodes,
    ids: np.ndarray,
    codes: np.ndarray,
    digests: Sequence[str],
    records: Callable[[np.ndarray], tuple[list[str], list[str]]],
) -> dict:
    """Bring `remote` up to date with a collection's images (`ids`, `codes`, `digests` by
    position); `records(positions)` gives the (paths, classes) of those it sends. Returns the
    counts it changed: {"milvus", "inserted", "upserted", "deleted"}."""
    stored = remote.digests()
    ids = np.asarray(ids, np.int64)
    known = np.array([int(i) in stored for i in ids], bool)
    same = np.array([stored.get(int(i)) == d for i, d in zip(ids, digests, strict=True)], bool)
    gone = np.array(sorted(set(stored) - set(ids.tolist())), np.int64)
    if len(gone):
        remote.delete(gone)
    for send, at in (
        (remote.insert, np.flatnonzero(~known)),
        (remote.upsert, np.flatnonzero(known & ~same)),
    ):
        if len(at):
            paths, classes = records(at)
            send(ids[at], codes[at], paths, classes, [digests[i] for i in at])
    counts = {"inserted": int((~known).sum()), "upserted": int((known & ~same).sum())}
    if len(gone) or any(counts.values()):
        remote.flush()  # a search right after, from any client, sees every change
    log.info(
        "Milvus collection %s: %d codes inserted, %d replaced, %d deleted (%s)",
        remote.name,
        counts["inserted"],
        counts["upserted"],
        len(gone),
        remote.describe(),
    )
    return {"milvus": remote.name, **counts, "deleted": len(gone)}
