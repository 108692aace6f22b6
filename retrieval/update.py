"""Making a collection, or bringing it up to date: files -> fc7 rows -> codes -> record.

Both kinds take the same steps, each rank of a torchrun its share of the extraction (rank 0
plans and commits; one process is the usual case):
1. plan (rank 0): which files need fc7 rows, and which rows they go to;
2. extract (every rank): `features.extract_rows`, the one extractor, into those rows;
3. commit (rank 0): codes, then the record (store.py), written last.

The training set (`update_training_set`): its files are the manifest's training split. Each
step is skipped when its output is current: the features (features.json's count), the
autoencoder (trained on the features; its source and width), the codes and index (the
record). The index kind follows `approx_threshold` (retrieval/index.py).

A gallery (`update_gallery`): its files are the images below a folder (the prep scan's walker,
pipeline.dataset.images_below), encoded with the training set's autoencoder. Incremental: a
file already indexed with the same bytes and mtime keeps its row and code, a new or changed
file gets the next free row (the feature file grows in place), a deleted one leaves the
table. Unlisted rows stay in the file (8 KiB each) until the gallery is compacted
(compact.py: on request, or when more than half the rows are unlisted). Up to
`approx_threshold` images (as the training set's) its FAISS index is a flat one, built from
the table's codes when the gallery is opened (milliseconds at 10^6 images), so a deleted file
is gone from it exactly, with nothing to patch. Above it, each update writes an IVF index of
the table's codes, codes.G.faissindex (ids: table positions, as the flat one's), with its
nprobe chosen for the codes (index.tune_nprobe): the lists (k-means centroids) of the
previous update's index are kept, refilled with the table's codes, until the gallery has
doubled since they were trained (AS_TRAINED).

Kill safety of a gallery update: new rows are written past the rows the record lists; then
features.json; then files.G+1.npz; then the record naming G+1 (the commit); then the old
table is removed. A kill at any point leaves the previous record, table and rows intact, so
the previous gallery still opens; the next update overwrites what the killed one left. The
writer holds RUN/.lock.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch.distributed as dist

from alexnet.model.distributed import World
from alexnet.model.inference import TrainedRun
from alexnet.pipeline.cache import open_cache
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import (
    atomic_write,
    check_space,
    file_identity,
    identity_problem,
    make_folder,
    write_json,
)
from alexnet.pipeline.layout import IndexPaths
from alexnet.pipeline.lock import RunLock
from alexnet.pipeline.manifest import split_files
from alexnet.pipeline.walk import images_below

from . import autoencoder as ae
from . import codes as C
from .defaults import APPROX_THRESHOLD, FEATURE_BATCH
from .features import (
    ROW_BYTES,
    complete_rows,
    extract_rows,
    grow_features,
    load_features,
    mark_complete,
    source_identity,
)
from .index import (
    auto_kind,
    build_index,
    index_kind,
    ivf_settings,
    load_index,
    measure_recall,
    save_index,
    tune_nprobe,
)
from .store import VERSION, Table, identities, live_paths, problem, read_record

log = logging.getLogger(__name__)

AS_TRAINED = 2  # a gallery's IVF lists are trained again when it grew this many times over


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def _share(plan: dict | None, world: World) -> dict:
    """Rank 0's plan (or its error), on every rank."""
    if world.size > 1:
        box = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    if "error" in plan:
        raise AlexnetError(plan["error"])
    return plan


def _extract(
    trained, paths, plan, world, *, batch_size, patches=None, reduce=False, progress
) -> None:
    """Step 2: every rank writes its share of the plan's new rows; then they meet."""
    files = [p for p, _, _ in plan["new"]]
    extract_rows(
        trained,
        files,
        paths.features,
        plan["first_row"],
        world,
        batch_size=batch_size,
        patches=patches,
        reduce=reduce,
        progress=progress and world.main,
    )
    barrier(world)


def _planned(world: World, plan) -> dict:
    """Run `plan()` on rank 0 and share what it returns (or the error it raised)."""
    result = None
    if world.main:
        try:
            result = plan()
        except AlexnetError as e:
            result = {"error": str(e)}
    return _share(result, world)


# --- the training set --------------------------------------------------------------------


def update_training_set(
    trained: TrainedRun,
    paths: IndexPaths,
    world: World,
    command: str,
    *,
    bits: int | None = None,
    approx_threshold: int = APPROX_THRESHOLD,
    batch_size: int = FEATURE_BATCH,
    progress: bool = True,
    codes: str | None = None,
    train_on: np.ndarray | None = None,
) -> dict:
    """Features, autoencoder, codes and index of the training set, each step skipped when
    current, under the run's lock (held for `command`). `bits` None keeps a current
    autoencoder of any width (else trains the default). `train_on`: other fc7 features to
    train the autoencoder on, for a run without training images (retrieval/reference_index.py).
    Returns the record (rank 0; the other ranks {})."""
    wrong = problem(paths, read_record(paths), source_identity(trained))
    if wrong not in (None, "missing"):
        log.warning("rebuilding the index: %s", wrong)
    lock = RunLock(trained.paths.root, command) if world.main else contextlib.nullcontext()
    with lock:
        return _training_set(
            trained, paths, world, bits, approx_threshold, batch_size, progress, codes, train_on
        )


def training_features(
    trained: TrainedRun, paths: IndexPaths, world: World, *, batch_size: int, progress: bool
) -> None:
    """Step 1 and 2 for the training set: fc7 of every training file, in manifest order,
    unless the features are current; from the prep cache's patches where prep kept them."""
    source = source_identity(trained)
    files, _ = split_files(trained.manifest, "train")

    def plan() -> dict:
        if paths.features.is_file() and complete_rows(paths, source) == len(files):
            log.info("fc7 features are current: %s", paths.features)
            return {"new": [], "first_row": 0}
        check_space(paths.folder, len(files) * ROW_BYTES, "the fc7 features")
        make_folder(paths.folder)
        paths.features_meta.unlink(missing_ok=True)  # from here on, no row counts as complete
        paths.features.unlink(missing_ok=True)
        grow_features(paths.features, len(files))
        if not files:  # a run without training images (imported weights): an empty file
            mark_complete(paths, source, 0)
        return {"new": [(f, 0, 0) for f in files], "first_row": 0}

    planned = _planned(world, plan)
    if not planned["new"]:
        return
    cache = open_cache(trained.paths.root, trained.manifest)  # decoded patches, if kept
    positions = trained.manifest.files.positions("train")
    patches = None if cache is None else (cache, positions)
    _extract(trained, paths, planned, world, batch_size=batch_size, patches=patches,
             progress=progress)  # fmt: skip
    if world.main:
        mark_complete(paths, source, len(files))
        log.info("fc7 features of %d training images: %s", len(files), paths.features)


def _training_set(
    trained, paths, world, bits, approx_threshold, batch_size, progress, method, train_on
) -> dict:
    training_features(trained, paths, world, batch_size=batch_size, progress=progress)
    if not world.main:
        return {}
    source = source_identity(trained)
    features = load_features(paths)
    if not len(features) and train_on is None:
        raise AlexnetError(
            f"run {trained.paths} has no training images to search (imported weights?): index "
            "a folder of photos as a gallery and search that"
        )
    labels = None if train_on is not None else np.array(split_files(trained.manifest, "train")[1])
    train_on = features if train_on is None else train_on
    record = read_record(paths)
    fc8 = trained.model.classifier[-1]  # the network's own classes: for the codes' choice

    def predictions() -> np.ndarray:
        weight, bias = (t.detach().float().cpu().numpy() for t in (fc8.weight, fc8.bias))
        return C.predicted_classes(train_on, weight, bias)

    model, state, retrained = _encoder(
        paths, source, record, train_on, labels, bits, method, progress, predictions
    )
    if not retrained and problem(paths, record, source) is None:
        if record["kind"] == auto_kind(record["count"], approx_threshold):
            log.info("index is current: %s", paths.index)
            return record
    codes = model.encode(features)
    _save_array(paths.codes, codes)
    start = time.perf_counter()
    index = build_index(codes, approx_threshold=approx_threshold)
    kind = index_kind(index)
    save_index(index, paths.index)
    record = {
        "version": VERSION,
        "source": source,
        "kind": kind,
        "count": int(index.ntotal),
        "rows": len(codes),
        "bits": int(codes.shape[1] * 8),
        "build_seconds": round(time.perf_counter() - start, 3),
        "recall_at_10": 1.0 if kind == "flat" else measure_recall(index, codes),
        **ivf_settings(index),
        "autoencoder_report": {k: v for k, v in state["report"].items() if k != "bit_balance"},
        "code_method": model.method,
        "code_settings": C.settings(model),
        "code_choice": state.get("choice"),  # without labels: which method, and why
        "files": identities(paths.autoencoder, paths.codes, paths.index),
        "features_identity": file_identity(paths.features, digest=True),
    }
    write_json(paths.meta, record)
    return record


def _save_array(path: Path, array: np.ndarray) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
            np.save(f, array)

    return atomic_write(path, write)


def _encoder(
    paths: IndexPaths, source: dict, record, features, labels, bits, method, progress, predictions
):
    """(encoder, saved state, whether it was fitted now): the saved code encoder when it is
    the file the collection's `record` names, made from these features with `bits` (None: any
    width) and `method` (None: any; the code methods of retrieval/codes.py), else one fitted
    now on `features` and their `labels`. Without labels and without a `method`, the method is
    chosen by a measurement on the features (codes.choose_codes; `predictions()`: the
    network's class of each)."""
    recorded = ((record or {}).get("files") or {}).get(paths.autoencoder.name)
    if recorded and identity_problem(paths.autoencoder, recorded, content=True):
        log.warning(
            "%s is not the file the index recorded: fitting the codes again", paths.autoencoder
        )
    elif paths.autoencoder.is_file():
        try:
            state = ae.load_autoencoder(paths.autoencoder)
            model = C.encoder_from_state(state)
            if state.get("source") == source and C.current(state, method, bits, labels):
                log.info("codes are current: %s", paths.autoencoder)
                return model, state, False
        except AlexnetError:
            pass
    width, choice = bits or ae.AutoencoderConfig.bits, {}
    if method is None and not C.label_count(labels):
        model, choice = C.choose_codes(features, predictions(), bits=width, progress=progress)
        log.info("%s", C.describe_choice(choice))
    else:
        method = method or C.DEFAULT_METHOD
        model = C.fit_codes(features, labels, method=method, bits=width, progress=progress)
    report = C.report(model, features)
    extra = {"choice": choice} if choice else {}
    state = C.encoder_state(model, source=source, report=report, **extra)
    ae.save_autoencoder(state, paths.autoencoder)
    log.info("%s", C.describe(model, report))
    return model, state, True


# --- a gallery -----------------------------------------------------------------------------


def update_gallery(
    trained: TrainedRun,
    paths: IndexPaths,
    world: World,
    *,
    name: str,
    folder: str | Path,
    source: dict,
    model: ae.Autoencoder,
    batch_size: int,
    min_size: int,
    max_pixels: int,
    progress: bool = True,
    approx_threshold: int = APPROX_THRESHOLD,
) -> dict:
    """Index every usable image below `folder` as gallery NAME, or bring it up to date (module
    docstring). `source` is what the gallery is made from (Collection's), `model` the training
    set's autoencoder; an IVF index above `approx_threshold` images. Returns the record with
    "added", "updated", "removed" (rank 0)."""
    run = trained.paths.root
    lock = RunLock(run, f"indexing gallery {name}") if world.main else contextlib.nullcontext()
    with lock:

        def plan() -> dict:
            live = live_paths(paths, read_record(paths))  # the feature file a record names
            p = _plan(live, source, Path(folder), name, min_size, max_pixels, progress)
            check_space(paths.folder, len(p["new"]) * ROW_BYTES, "the fc7 features")
            make_folder(paths.folder)
            if p["new"]:
                grow_features(live.features, p["first_row"] + len(p["new"]))
            return {**p, "features": live.feature_file}

        planned = _planned(world, plan)
        paths = replace(paths, feature_file=planned["features"])
        _extract(
            trained, paths, planned, world, batch_size=batch_size, reduce=True, progress=progress
        )
        if not world.main:
            return {}
        if planned["unchanged"]:  # nothing to write: the gallery stays as it is
            return {**read_record(paths), "last_update": {"added": 0, "updated": 0, "removed": 0}}
        mark_complete(paths, source_identity(trained), planned["first_row"] + len(planned["new"]))
        return _commit(paths, planned, source, model, approx_threshold)


def _plan(paths, source, folder, name, min_size, max_pixels, progress) -> dict:
    """What an update does: the files to extract and the rows they go to, the entries kept."""
    record = read_record(paths)
    wrong = problem(paths, record, source)
    if wrong not in (None, "missing"):
        log.warning("gallery %s is rebuilt from scratch: %s", name, wrong)
    if wrong is None:
        table = Table.load(paths.entries(record["generation"]))
        generation, rows, uid = record["generation"], record["rows"], record["uid"]
    else:
        paths.meta.unlink(missing_ok=True)  # from here on, nothing old is taken as complete
        paths.features_meta.unlink(missing_ok=True)
        paths.features.unlink(missing_ok=True)
        generation = (record or {}).get("generation", 0)  # its table goes at the commit
        table, rows, uid = Table.empty(source["bits"]), 0, secrets.token_hex(4)
    known = table.known()
    usable, skipped = images_below(
        folder,
        min_size=min_size,
        max_pixels=max_pixels,
        known=known,
        progress=progress,
    )
    if not usable and not len(table):
        listed = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        raise AlexnetError(
            f"no usable images in {folder}"
            + (f" ({len(skipped)} skipped: {listed})" if skipped else "")
        )
    now = {p: (s, t) for p, s, t in usable}
    keep = np.array([known.get(str(p)) == now.get(str(p)) for p in table.paths], bool)
    new = [(p, s, t) for p, s, t in usable if known.get(p) != (s, t)]
    return {
        "root": str(folder.resolve()),
        "generation": generation,
        "uid": uid,
        "first_row": rows,
        "keep": keep,
        "new": new,
        "skipped": skipped,
        "unchanged": wrong is None and not new and keep.all() and skipped == record["skipped"],
        "added": sum(p not in known for p, _, _ in new),
        "updated": sum(p in known for p, _, _ in new),
        "removed": int((~keep).sum()) - sum(p in known for p, _, _ in new),
    }


def _commit(
    paths: IndexPaths, plan: dict, source: dict, model: ae.Autoencoder, approx_threshold: int
) -> dict:
    """Encode the new rows, write the next table (and IVF index), then the record naming it."""
    old = (
        Table.load(paths.entries(plan["generation"]))
        if plan["keep"].size
        else Table.empty(source["bits"])
    )
    first, new, keep = plan["first_row"], plan["new"], plan["keep"]
    rows = np.arange(first, first + len(new), dtype=np.int64)
    codes = model.encode(load_features(paths)[first : first + len(new)])
    names = np.concatenate([old.paths[keep].astype(str), np.array([p for p, _, _ in new], str)])
    order = np.argsort(names, kind="stable")
    table = Table(
        names[order],
        np.concatenate([old.sizes[keep], np.array([s for _, s, _ in new], np.int64)])[order],
        np.concatenate([old.mtimes[keep], np.array([t for _, _, t in new], np.int64)])[order],
        np.concatenate([old.rows[keep], rows])[order],
        np.concatenate([old.codes[keep], codes])[order],
    )
    generation = plan["generation"] + 1
    table.save(paths.entries(generation))
    previous = read_record(paths) or {}
    ivf = (
        _gallery_ivf(paths, previous, table.codes, generation)
        if auto_kind(len(table), approx_threshold) == "ivf"
        else {}
    )
    record = {
        "version": VERSION,
        "source": source,
        "kind": "ivf" if ivf else "flat",
        "count": len(table),
        "rows": first + len(new),
        "bits": source["bits"],
        "files": identities(paths.entries(generation), *ivf.get("files", [])),
        **{k: v for k, v in ivf.items() if k != "files"},
        "features_identity": file_identity(paths.features, digest=True),
        "root": plan["root"],
        "uid": plan["uid"],
        "generation": generation,
        "features": paths.feature_file,
        "last_update": {k: plan[k] for k in ("added", "updated", "removed")},
        "skipped": plan["skipped"],
    }
    write_json(paths.meta, record)  # the commit
    if plan["generation"] != generation:
        paths.entries(plan["generation"]).unlink(missing_ok=True)
    if previous.get("index") and previous["index"] != record.get("index"):
        (paths.folder / previous["index"]).unlink(missing_ok=True)
    return record


def _gallery_ivf(paths: IndexPaths, previous: dict, codes: np.ndarray, generation: int) -> dict:
    """A gallery's IVF index of `codes` (ids: positions), written as codes.G.faissindex: the
    previous update's lists refilled, or new ones when there were none or the gallery has
    grown AS_TRAINED times since; nprobe chosen for the codes. Returns the record's entries
    ("index", "trained_on", "lists", "nprobe", "recall_at_10") and "files" (the index)."""
    start, trained_on = time.perf_counter(), previous.get("trained_on", 0)
    old = paths.folder / previous["index"] if previous.get("index") else None
    index = None
    if old is not None and old.is_file() and len(codes) <= AS_TRAINED * trained_on:
        index = load_index(old)
        if index.d != codes.shape[1] * 8:
            index = None
    if index is None:
        index, trained_on = build_index(codes, kind="ivf"), len(codes)
    else:
        index.reset()  # the lists stay; their codes are this update's
        index.add(np.ascontiguousarray(codes))
        tune_nprobe(index, codes)
    path = save_index(index, paths.folder / f"codes.{generation}.faissindex")
    log.info(
        "IVF index of %d gallery images: nprobe %d of %d lists (%.1f s)",
        len(codes),
        index.nprobe,
        index.nlist,
        time.perf_counter() - start,
    )
    return {
        "index": path.name,
        "trained_on": trained_on,
        **ivf_settings(index),
        "recall_at_10": measure_recall(index, codes),
        "files": [path],
    }
