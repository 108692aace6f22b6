"""Galleries: any folder of photos, indexed with a trained run's network, statistics and the
training-set index's autoencoder, and searched like the training set.

    index_gallery("runs/demo", "~/Pictures", "photos")  # build, or bring up to date
    gi = open_gallery("runs/demo", "photos")             # a RunIndex: api.search takes it
    api.search(gi, ["query.jpg"], k=10)

A gallery lives in RUN/galleries/NAME/ (pipeline.layout's IndexPaths):
- features.f16.npy: float16 fc7 rows (4096-d, centre crop, as for the training set), memory-
  mapped. Append-only: each new or changed file gets the next free row, and the rows of
  deleted or changed files are no longer listed. The file grows in place: numpy pads the
  .npy header for growth along the first axis, so the header is rewritten in its place.
  Unlisted rows are not reclaimed (8 KiB each): a gallery whose files change often
  is compacted by deleting RUN/galleries/NAME and indexing the folder again.
- files.G.npz: update G's table: path, bytes, mtime_ns, feature row and packed code of each
  indexed image, in path order.
- codes.json: the completion record: the generation G, the rows in use, what the gallery was
  made from (manifest fingerprint, checkpoint file identity, autoencoder file identity, bits),
  the folder, and the files skipped with their reasons.
The FAISS index is an exact IndexBinaryFlat built from the stored codes when the gallery is
opened (a copy of N x bits/8 bytes: milliseconds at 10^6 images; the GPU flat index where a
GPU is), so a deleted file is gone from it exactly, with nothing to patch. Result ids are
feature rows: an unchanged file keeps its id across updates.

Update protocol: new rows are written past the rows the record lists; then files.G+1.npz;
then the record, naming G+1 (the commit); then the old table is removed. A kill at any point
leaves the previous record, table and rows intact, so the previous gallery still opens; the
next update overwrites what the killed one left. The writer holds RUN/.lock.

Under torchrun every process extracts its share of the new files (a DALI reader shard) into
its rows of the one feature file; rank 0 scans, plans, encodes and commits.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.distributed as dist

from alexnet.model.distributed import World, setup_world
from alexnet.model.inference import TrainedRun, load_trained
from alexnet.pipeline.dali import Loader, eval_pipeline, pipe_options
from alexnet.pipeline.dataset import images_below
from alexnet.pipeline.defaults import MAX_PIXELS, MIN_SIZE
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import (
    atomic_write,
    check_space,
    file_identity,
    make_folder,
    read_json,
    write_json,
)
from alexnet.pipeline.layout import IndexPaths, RunPaths
from alexnet.pipeline.lock import RunLock

from . import autoencoder as ae
from .codes import load_encoder
from .defaults import FEATURE_BATCH
from .features import DIM, fc7_batches, source_identity, to_float16
from .index import RunIndex, search, to_device

log = logging.getLogger(__name__)

GALLERY_VERSION = 1
ROW_BYTES = DIM * 2  # one float16 fc7 vector
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def gallery_paths(run: str | Path, name: str) -> IndexPaths:
    if not NAME.fullmatch(name):
        raise AlexnetError(
            f"gallery name {name!r}: use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit"
        )
    return RunPaths(run).gallery(name)


def gallery_names(run: str | Path) -> list[str]:
    """The galleries of RUN that have a completion record, sorted."""
    folder = RunPaths(run).galleries
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if RunPaths(run).gallery(p.name).meta.is_file())


def unknown_gallery(run: str | Path, name: str) -> AlexnetError:
    names = ", ".join(gallery_names(run)) or "none"
    return AlexnetError(
        f"run {run} has no gallery {name!r} (galleries: {names}); make it with "
        f"`alexnet index --run {run} --images DIR --name {name}`"
    )


def gallery_source(trained: TrainedRun, autoencoder_file: Path, bits: int) -> dict:
    """What a gallery's features and codes are derived from; a change means re-extract."""
    return {
        **source_identity(trained),
        "autoencoder": file_identity(autoencoder_file) if autoencoder_file.is_file() else None,
        "bits": bits,
    }


# --- the table of indexed files ------------------------------------------------------------


@dataclass
class Table:
    """The indexed images in path order: absolute paths, bytes, mtime_ns, feature row, code."""

    paths: np.ndarray  # str
    sizes: np.ndarray  # int64
    mtimes: np.ndarray  # int64
    rows: np.ndarray  # int64: row of features.f16.npy
    codes: np.ndarray  # uint8 (N, bits / 8)

    @classmethod
    def empty(cls, bits: int) -> Table:
        z = np.zeros(0, np.int64)
        return cls(np.zeros(0, "U1"), z, z, z, np.zeros((0, bits // 8), np.uint8))

    @classmethod
    def load(cls, path: Path) -> Table:
        with np.load(path, allow_pickle=False) as z:
            return cls(*(z[k] for k in ("paths", "sizes", "mtimes", "rows", "codes")))

    def save(self, path: Path) -> Path:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    paths=self.paths,
                    sizes=self.sizes,
                    mtimes=self.mtimes,
                    rows=self.rows,
                    codes=self.codes,
                )

        return atomic_write(path, write)

    def __len__(self) -> int:
        return len(self.paths)

    def known(self) -> dict[str, tuple[int, int]]:
        return {
            str(p): (int(s), int(t))
            for p, s, t in zip(self.paths, self.sizes, self.mtimes, strict=True)
        }


def read_record(paths: IndexPaths) -> dict | None:
    """The gallery's completion record, or None when there is no readable one of this version."""
    if not paths.meta.is_file():
        return None
    try:
        record = read_json(paths.meta, "gallery record", "")
    except AlexnetError:
        return None
    return record if record.get("version") == GALLERY_VERSION else None


def gallery_problem(paths: IndexPaths, record: dict | None, source: dict) -> str | None:
    """None when the record and what it names are intact and made from `source`."""
    if record is None:
        return "missing"
    for key, what in (
        ("manifest", "the run's data (manifest)"),
        ("checkpoint", "checkpoint"),
        ("autoencoder", "autoencoder"),
        ("bits", "code length"),
    ):
        if record["source"].get(key) != source.get(key):
            return f"made with another {what}"
    table = paths.entries(record["generation"])
    if not table.is_file() or file_identity(table) != record["table"]:
        return f"{table.name} is missing or was rewritten"
    try:
        shape = np.load(paths.features, mmap_mode="r").shape
    except (OSError, ValueError):
        return f"{paths.features.name} is missing or unreadable"
    if shape[1:] != (DIM,) or shape[0] < record["rows"]:
        return f"{paths.features.name} is shorter than the record says"
    return None


# --- the feature file ----------------------------------------------------------------------


def _header(rows: int) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": (rows, DIM)}
    )
    return buf.getvalue()


def grow_features(path: Path, rows: int) -> None:
    """Make the .npy at `path` hold `rows` float16 rows (created when missing); rows before
    the end are kept as they are, so readers of the committed rows are never disturbed."""
    header = _header(rows)
    if not path.is_file():
        with open(path, "wb") as f:
            f.write(header)
            f.truncate(len(header) + rows * ROW_BYTES)
        return
    with open(path, "r+b") as f:
        try:
            ok = np.lib.format.read_magic(f) == (1, 0)
            ok = ok and np.lib.format.read_array_header_1_0(f)[1:] == (False, np.float16)
        except ValueError:
            ok = False
        if not ok or f.tell() != len(header):
            raise AlexnetError(
                f"{path} has an unexpected header: delete the gallery folder and index it again"
            )
        f.truncate(len(header) + rows * ROW_BYTES)
        f.seek(0)
        f.write(header)  # same length: padded by numpy for growth of the first axis


def extract_rows(
    trained: TrainedRun,
    files: list[str],
    features: Path,
    first_row: int,
    world: World,
    *,
    batch_size: int = FEATURE_BATCH,
    progress: bool = True,
) -> None:
    """fc7 of `files` into rows first_row.. of `features`; under torchrun each rank reads its
    contiguous shard of the files (DALI's reader split) and writes those rows only."""
    from tqdm import tqdm

    n = len(files)
    begin, end = n * world.rank // world.size, n * (world.rank + 1) // world.size
    if end == begin:
        return
    device = world.dali_device
    config = trained.config
    pipe = eval_pipeline(
        files,
        [0] * n,
        trained.stats.mean(config.mean),
        std=trained.stats.std(config.input_scale),
        device=device,
        shard_id=world.rank,
        num_shards=world.size,
        **pipe_options(device, min(batch_size, end - begin), config.seed, config.num_threads),
    )
    loader = Loader(pipe, torch_device=world.device)
    sizes = []

    def padded():
        # The network always sees batch_size images (the last batch padded by repeating its
        # last image): the arithmetic of a batch depends on its size, so this makes each
        # image's vector the same whichever batch, update or shard it was extracted in.
        for x, _ in loader:
            if not len(x):  # a shard's padding, cut off by the Loader
                continue
            sizes.append(len(x))
            yield torch.cat([x, x[-1:].expand(batch_size - len(x), *x.shape[1:])])

    out = np.load(features, mmap_mode="r+")
    row = first_row + begin
    with tqdm(total=end - begin, desc="fc7 features", unit="img", disable=not progress) as bar:
        for h, n in zip(fc7_batches(trained, padded()), sizes, strict=True):
            out[row : row + n] = to_float16(h[:n])
            row += n
            bar.update(n)
    out.flush()
    del out
    if row != first_row + end:
        raise AlexnetError(
            f"the pipeline yielded {row - first_row - begin} of {end - begin} images"
        )


# --- building and updating -----------------------------------------------------------------


def _plan(
    trained: TrainedRun,
    paths: IndexPaths,
    source: dict,
    images: Path,
    name: str,
    *,
    min_size: int,
    max_pixels: int,
    workers: int | None,
    progress: bool,
) -> dict:
    """What an update does: the files to extract and the rows they go to, the entries kept."""
    record = read_record(paths)
    problem = gallery_problem(paths, record, source)
    if problem not in (None, "missing"):
        log.warning("gallery %s is rebuilt from scratch: %s", name, problem)
    if problem is None:
        table = Table.load(paths.entries(record["generation"]))
        generation, rows, uid = record["generation"], record["rows"], record["uid"]
    else:
        paths.meta.unlink(missing_ok=True)  # from here on, nothing old is taken as complete
        paths.features.unlink(missing_ok=True)
        generation = record["generation"] if record else 0  # its table goes at the commit
        table, rows, uid = Table.empty(source["bits"]), 0, secrets.token_hex(4)
    known = table.known()
    usable, skipped = images_below(
        images,
        min_size=min_size,
        max_pixels=max_pixels,
        known=known,
        workers=workers,
        progress=progress,
    )
    if not usable and not len(table):
        listed = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        raise AlexnetError(
            f"no usable images in {images}"
            + (f" ({len(skipped)} skipped: {listed})" if skipped else "")
        )
    now = {p: (s, t) for p, s, t in usable}
    keep = np.array([known.get(str(p)) == now.get(str(p)) for p in table.paths], bool)
    new = [(p, s, t) for p, s, t in usable if known.get(p) != (s, t)]
    return {
        "root": str(Path(images).resolve()),
        "generation": generation,
        "uid": uid,
        "first_row": rows,
        "keep": keep,
        "new": new,
        "skipped": skipped,
        "added": sum(p not in known for p, _, _ in new),
        "updated": sum(p in known for p, _, _ in new),
        "removed": int((~keep).sum()) - sum(p in known for p, _, _ in new),
    }


def _commit(paths: IndexPaths, plan: dict, source: dict, model: ae.Autoencoder) -> dict:
    """Encode the new rows, write the next table, then the record that names it."""
    old = (
        Table.load(paths.entries(plan["generation"]))
        if plan["keep"].size
        else Table.empty(source["bits"])
    )
    first, new = plan["first_row"], plan["new"]
    rows = np.arange(first, first + len(new), dtype=np.int64)
    features = np.load(paths.features, mmap_mode="r")
    codes = model.encode(features[first : first + len(new)])
    keep = plan["keep"]
    paths_ = np.concatenate([old.paths[keep].astype(str), np.array([p for p, _, _ in new], str)])
    order = np.argsort(paths_, kind="stable")
    table = Table(
        paths_[order],
        np.concatenate([old.sizes[keep], np.array([s for _, s, _ in new], np.int64)])[order],
        np.concatenate([old.mtimes[keep], np.array([t for _, _, t in new], np.int64)])[order],
        np.concatenate([old.rows[keep], rows])[order],
        np.concatenate([old.codes[keep], codes])[order],
    )
    generation = plan["generation"] + 1
    table.save(paths.entries(generation))
    record = {
        "version": GALLERY_VERSION,
        "kind": "flat",
        "root": plan["root"],
        "uid": plan["uid"],
        "generation": generation,
        "rows": first + len(new),
        "count": len(table),
        "bits": source["bits"],
        "source": source,
        "table": file_identity(paths.entries(generation)),
        "last_update": {k: plan[k] for k in ("added", "updated", "removed")},
        "skipped": plan["skipped"],
    }
    write_json(paths.meta, record)  # the commit
    paths.entries(plan["generation"]).unlink(missing_ok=True)
    return record


def index_gallery(
    run: str | Path,
    images: str | Path,
    name: str,
    *,
    batch_size: int = FEATURE_BATCH,
    min_size: int = MIN_SIZE,
    max_pixels: int = MAX_PIXELS,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Index every usable image below `images` as gallery NAME of RUN, or bring the gallery up
    to date: only new and changed files (by path, size and mtime) are read, deleted ones are
    dropped. The training-set index is built first when missing (its autoencoder makes the
    codes). Returns the record, with "added", "updated", "removed" and "path".

    Under torchrun every process calls this; the extraction is split over them."""
    from .api import open_index

    world = setup_world()
    paths = gallery_paths(run, name)
    if world.main:
        ri = open_index(run, progress=progress, workers=workers)
    _barrier(world)
    if not world.main:
        ri = open_index(run, progress=False, workers=workers)
    bits = int(ri.codes.shape[1] * 8)
    source = gallery_source(ri.trained, ri.paths.autoencoder, bits)
    lock = RunLock(run, f"index --name {name}") if world.main else contextlib.nullcontext()
    with lock:
        plan: dict | None = None
        if world.main:
            try:
                plan = _plan(
                    ri.trained,
                    paths,
                    source,
                    Path(images),
                    name,
                    min_size=min_size,
                    max_pixels=max_pixels,
                    workers=workers,
                    progress=progress,
                )
                check_space(paths.folder, len(plan["new"]) * ROW_BYTES, "the fc7 features")
                make_folder(paths.folder)
                grow_features(paths.features, plan["first_row"] + len(plan["new"]))
            except AlexnetError as e:
                plan = {"error": str(e)}
        plan = _share(plan, world)
        if "error" in plan:
            raise AlexnetError(plan["error"])
        files = [p for p, _, _ in plan["new"]]
        extract_rows(
            ri.trained,
            files,
            paths.features,
            plan["first_row"],
            world,
            batch_size=batch_size,
            progress=progress and world.main,
        )
        _barrier(world)
        if not world.main:
            return {}
        record = _commit(paths, plan, source, ri.autoencoder)
    return {**record, **record["last_update"], "path": str(paths.folder)}


def _barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def _share(plan: dict | None, world: World) -> dict:
    """Rank 0's plan, on every rank."""
    if world.size == 1:
        return plan
    box = [plan]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- searching -----------------------------------------------------------------------------


@dataclass
class GalleryIndex(RunIndex):
    """A gallery, searched like the training set: ids are feature rows, `codes` is indexed by
    row (rows no longer listed hold zeros and are never returned)."""

    name: str = ""
    table: Table | None = None
    record: dict | None = None
    unit = "gallery images"

    @cached_property
    def by_row(self) -> dict[int, int]:
        return {int(r): i for i, r in enumerate(self.table.rows)}

    @property
    def thumb_key(self) -> str:
        return f"gallery-{self.name}-{self.record['uid']}"

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        D, I = search(self.fast, codes, k)
        return D, np.where(I >= 0, self.table.rows[np.maximum(I, 0)], -1)

    def entry(self, i: int) -> int:
        if int(i) not in self.by_row:
            raise AlexnetError(f"there is no image {i} in gallery {self.name}")
        return self.by_row[int(i)]

    def file_of(self, i: int) -> str:
        return str(self.table.paths[self.entry(i)])

    def hits(self, ids: np.ndarray) -> list[dict]:
        from .api import query_class

        out = []
        for i in ids:
            e = self.entry(i)
            path = str(self.table.paths[e])
            try:
                st = Path(path).stat()
                same = (st.st_size, st.st_mtime_ns) == (self.table.sizes[e], self.table.mtimes[e])
            except OSError:
                same = False
            if not same:
                raise AlexnetError(
                    f"{path} is gone or changed since gallery {self.name} was indexed: "
                    f"{self.refresh}"
                )
            out.append(
                {"path": path, "class": None, "class_id": None, **query_class(self.trained, path)}
            )
        return out

    @property
    def refresh(self) -> str:
        return (
            f"rerun `alexnet index --run {self.trained.paths} --images {self.record['root']} "
            f"--name {self.name}`"
        )


def open_gallery(
    run: str | Path, name: str, *, checkpoint: str | Path | None = None, workers: int | None = None
) -> GalleryIndex:
    """Gallery NAME of RUN, ready to search; refused when the run's checkpoint, data or the
    training-set index's autoencoder changed since it was indexed."""
    paths = gallery_paths(run, name)
    record = read_record(paths)
    if record is None:
        raise unknown_gallery(run, name)
    trained = load_trained(run, checkpoint, check_files=False, workers=workers)
    source = gallery_source(trained, trained.paths.index.autoencoder, record["bits"])
    problem = gallery_problem(paths, record, source)
    if problem:
        raise AlexnetError(
            f"gallery {name} is stale ({problem}): rerun `alexnet index --run {run} --images "
            f"{record['root']} --name {name}`"
        )
    model = load_encoder(trained.paths.index.autoencoder)
    table = Table.load(paths.entries(record["generation"]))
    features = np.load(paths.features, mmap_mode="r")[: record["rows"]]
    codes = np.zeros((record["rows"], record["bits"] // 8), np.uint8)
    codes[table.rows] = table.codes
    index = faiss.IndexBinaryFlat(record["bits"])
    index.add(np.ascontiguousarray(table.codes))
    return GalleryIndex(
        trained,
        paths,
        model,
        codes,
        index,
        to_device(index),
        features,
        record,
        name=name,
        table=table,
        record=record,
    )
