"""Collection: everything a run can search, through one type (the vocabulary: retrieval/__init__).

    import alexnet
    train = alexnet.collection("runs/demo")             # the training set (the manifest's)
    photos = alexnet.collection("runs/demo", "photos")   # a gallery: RUN/galleries/photos
    photos.update("~/Pictures")                          # build, or bring up to date
    result = train.search(["query.jpg", png_bytes], k=10)
    result["queries"][0]["results"][0]                   # {"rank", "id", "path", "class",
                                                         #  "class_id", "hamming", "distance"}
    photos.duplicates()                                  # groups of near-duplicate photos
    photos.duplicates(against=train)                     # photos already in another collection
    train.evaluate()                                     # eval-retrieval, on the training set
    train.file(7), train.thumbnail(7), len(train), train.describe()

A collection opens itself on first use (`open`): the network, the code encoder, its table
of files (`table`: paths, codes, ids), FAISS index (or Milvus: `milvus=URI`, remote.py) and
fc7 features; a stale one is refused (store.problem). Images are whatever
pipeline/images.py takes (paths, folders, encoded bytes, PIL images, uint8 HxWx3 arrays),
all through the evaluation centre crop. "class" is
a result's display name, "class_id" its folder name (a gallery image's: None unless its
folder is named after a class). Opening checks the manifest, not the files behind it: a
search checks the files it returns, and building an index every file it reads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from alexnet.model.distributed import setup_world
from alexnet.model.inference import load_trained, query_crops
from alexnet.model.metrics import read_metrics
from alexnet.pipeline.cache import reduced_decoding
from alexnet.pipeline.dali import SIZE
from alexnet.pipeline.defaults import MAX_PIXELS, MIN_SIZE
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import write_json
from alexnet.pipeline.images import read_images
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.lock import RunLock
from alexnet.pipeline.manifest import split_files, verify_files

from . import remote
from .codes import load_encoder
from .compact import compact_gallery, needs_compaction
from .defaults import (
    APPROX_THRESHOLD,
    DUPLICATE_FC7,
    FEATURE_BATCH,
    QUERY_BATCH,
    SEARCH_RERANK,
    K,
)
from .duplicates import (
    MIRRORED_CENTRE,
    Images,
    find_duplicates,
    find_in,
    group_sheets,
    pair_sheets,
)
from .evaluate import evaluate_retrieval
from .features import load_features, query_features, source_identity
from .index import GPU_MAX_K, build_index, hamming, load_index, rerank, search, to_device
from .milvus import milvus_uri
from .montage import thumbnail
from .reference_index import index_from_photos
from .store import (
    Table,
    class_of,
    collection_paths,
    gallery_names,
    live_paths,
    made_from,
    problem,
    read_record,
    refresh,
)
from .update import barrier, update_gallery, update_training_set

log = logging.getLogger(__name__)

Image = str | Path | bytes | bytearray | memoryview | np.ndarray  # or a PIL image


class Collection:
    """The training set of a run (name None) or one of its galleries: files, fc7 features,
    binary codes, a FAISS index and the record of what made them (module docstring)."""

    def __init__(
        self,
        run: str | Path,
        name: str | None = None,
        *,
        checkpoint: str | Path | None = None,
        workers: int | None = None,
        milvus: str | None = None,
    ):
        self.run, self.name = RunPaths(run), name
        self.paths = collection_paths(run, name)  # a bad name is refused here
        self.checkpoint, self.workers = checkpoint, workers
        self.milvus, self.remote = milvus_uri(milvus), None  # codes served by Milvus (remote.py)
        self.trained = None  # set by open()

    def __repr__(self) -> str:  # noqa: D105
        return f"Collection({str(self.run)!r}, {self.name!r})"

    def __str__(self) -> str:
        what = "the training set" if self.name is None else f"gallery {self.name}"
        return f"{what} of run {self.run}"

    def open(self, *, progress: bool = False, trained=None) -> Collection:
        """Load what a search needs (once; `trained`: the run already loaded); the training
        set's index is built first, saying so, when there is none. A stale one is refused."""
        if self.trained is not None:
            return self
        trained = trained or load_trained(
            self.run.root, self.checkpoint, check_files=False, workers=self.workers
        )
        record = read_record(self.paths)
        if self.name is None and record is None:
            log.warning(
                "no index in %s yet: building it now (fc7 features of the training set, "
                "autoencoder, index); later searches reuse it",
                self.paths.folder,
            )
            verify_files(trained.manifest, trained.manifest.files.positions("train"))
            record = update_training_set(
                trained, self.paths, trained.world, "search, building the index", progress=progress
            )
        if record is None:
            names = ", ".join(gallery_names(self.run.root)) or "none"
            raise AlexnetError(
                f"run {self.run} has no gallery {self.name!r} (galleries: {names}); make it "
                f"with `alexnet index` on {self.run} with {{images}} DIR and {{name}} {self.name}"
            )
        wrong = problem(self.paths, record, made_from(trained, self.name, record.get("bits")))
        if wrong:
            raise AlexnetError(
                f"{self} is stale or incomplete ({wrong}): {refresh(self.run, self.name, record)}"
            )
        self.record = record
        self.autoencoder = load_encoder(self.run.index.autoencoder)
        features = load_features(live_paths(self.paths, record))  # a whole file maps fastest
        self.features = features if len(features) == record["rows"] else features[: record["rows"]]
        if self.name is None:
            self.table = Table.of_manifest(trained.manifest, "train", np.load(self.paths.codes))
            self.index = load_index(self.paths.index)
        else:
            self.table = Table.load(self.paths.entries(record["generation"]))
            self.index = (  # the IVF index above the threshold (update.py), else flat
                load_index(self.paths.folder / record["index"])
                if record.get("index")
                else build_index(self.table.codes, kind="flat")
            )
        self.fast = to_device(self.index)  # the GPU copy where there is a GPU
        self.trained = trained
        self.remote = self._remote() if self.milvus else None
        return self

    def _remote(self):
        """The Milvus collection of these codes (remote.py), searched as the local index is."""
        index = self.index
        probe = (index.nprobe, index.nlist) if hasattr(index, "nprobe") else None
        network = json.dumps(source_identity(self.trained)["checkpoint"], sort_keys=True)
        root = str(self.run.root.resolve())
        codes = remote.remote_codes(self.milvus, root, self.name, self.bits, network, probe)
        log.info("codes in Milvus collection %s: %s", codes.name, codes.describe())
        return codes

    def __len__(self) -> int:
        return len(self.open().table)

    @property
    def kind(self) -> str:
        return self.open().record["kind"]

    @property
    def bits(self) -> int:
        return int(self.open().record["bits"])

    @property
    def root(self) -> str:
        """The folder the files lie below: the dataset's, or the gallery's."""
        self.open()
        return self.trained.manifest.root if self.name is None else self.record["root"]

    def update(
        self,
        folder: str | Path | None = None,
        *,
        bits: int | None = None,
        codes: str | None = None,
        approx_threshold: int = APPROX_THRESHOLD,
        batch_size: int = FEATURE_BATCH,
        min_size: int = MIN_SIZE,
        max_pixels: int = MAX_PIXELS,
        progress: bool = True,
        compact: bool = False,
    ) -> dict:
        """Build the collection, or bring it up to date (update.py); returns its record with
        "path" (a gallery's also "added", "updated", "removed"). The training set: `bits` and
        `codes` (codes.py's methods) None keep the codes' width and method. Either: an IVF index
        above `approx_threshold` images. A gallery: the images below `folder` (default: its own),
        coded with the training set's encoder; `min_size`, `max_pixels` as prep's; `compact`
        (compact.py). Under torchrun every process calls this (the others return {})."""
        world, self.trained = setup_world(), None
        for kept in ("_crops", "reduced"):  # of the collection as it was: read again
            self.__dict__.pop(kept, None)
        if self.name is None:
            if folder is not None:
                raise AlexnetError(
                    "the training set's files come from the run's manifest: {folder} is for "
                    "galleries (give the collection a name)",
                    param="folder",
                )
            trained = load_trained(
                self.run.root, self.checkpoint, check_files="train", workers=self.workers
            )
            record = update_training_set(
                trained,
                self.paths,
                world,
                "index",
                bits=bits,
                codes=codes,
                approx_threshold=approx_threshold,
                batch_size=batch_size,
                progress=progress,
            )
            return self._synced({**record, "path": str(self.paths.index)} if record else {})
        if bits is not None or codes is not None:  # one encoder for the run's collections
            raise AlexnetError(
                f"{{bits}} and {{codes}} are the training set's: {self} uses its codes",
                param="bits" if bits is not None else "codes",
            )
        folder = folder or (read_record(self.paths) or {}).get("root")
        if folder is None:
            raise AlexnetError(
                f"{self} does not exist yet: pass the {{folder}} of images to index", param="folder"
            )
        train = Collection(self.run.root, checkpoint=self.checkpoint, workers=self.workers)
        if world.main:  # builds the training set's index when missing, once
            index_from_photos(self.run.root, folder, progress=progress, workers=self.workers)
            train.open(progress=progress)
        barrier(world)
        train.open()
        record = update_gallery(
            train.trained,
            self.paths,
            world,
            name=self.name,
            folder=folder,
            source=made_from(train.trained, self.name, train.bits),
            model=train.autoencoder,
            batch_size=batch_size,
            min_size=min_size,
            max_pixels=max_pixels,
            progress=progress,
            approx_threshold=approx_threshold,
        )
        out = {**record, **record["last_update"], "path": str(self.paths.folder)} if record else {}
        if out and train.record.get("code_choice"):  # the codes were chosen without labels
            out["code_choice"] = train.record["code_choice"]
        if record and (compact or needs_compaction(record)):  # adds "compacted"
            out |= compact_gallery(self.run.root, self.paths, self.name)
        return self._synced(out)

    def _synced(self, record: dict) -> dict:  # and what the update changed in Milvus
        if not (record and self.milvus):
            return record
        t = self.open().table

        def records(at: np.ndarray) -> tuple[list[str], list[str]]:
            classes = [h["class_id"] or "" for h in t.hits(at, self.trained)]
            return [str(t.paths[i]) for i in at], classes

        digests = remote.digests(t.codes, t.sizes, t.mtimes)
        return {**record, **remote.sync(self.remote, t.rows, t.codes, digests, records)}

    # --- searching -------------------------------------------------------------------------

    def search(
        self,
        images: Sequence[Image],
        *,
        k: int = K,
        rerank: int = SEARCH_RERANK,
        names: Sequence[str] | None = None,
        progress: bool = False,
    ) -> dict:
        """The k most similar images of the collection to each image, as records.

        Paths name themselves; the other images (pipeline/images.py) are named by `names`
        (default "image N"). `rerank` R > 0 re-orders the R nearest by Hamming distance by
        float fc7 distance. Returns {"query_ms", "k", "rerank", "distance", "bits", "index",
        "checkpoint", "queries": [{"query", ("class", "class_id": when the query's folder
        names a class), "results": [{"rank", "id", "path", "class", "class_id", "hamming",
        "distance"}]}], "skipped": [{"query", "reason"}] (files that cannot be used, of
        several)}. The files returned are checked first (gone or changed: an error).
        """
        images = self._queries(images, names, k, rerank, progress)
        start = time.perf_counter()
        rows = list(self._answers(images, k, rerank))
        return {
            "query_ms": 1000 * (time.perf_counter() - start) / max(1, len(rows)),
            "k": k,
            "rerank": rerank,
            "distance": "fc7 euclidean" if rerank else "hamming",
            "bits": self.bits,
            "index": self.kind,
            "checkpoint": str(self.trained.checkpoint),
            "queries": rows,
            "skipped": [{"query": name, "reason": why} for name, why in images.skipped],
        }

    def stream(
        self,
        images: Sequence[Image],
        *,
        k: int = K,
        rerank: int = SEARCH_RERANK,
        names: Sequence[str] | None = None,
        progress: bool = False,
    ) -> Iterator[dict]:
        """search's per-query records ({"query", ("class", "class_id"), "results"}), yielded
        as each batch of queries is read and answered: a folder of 10^5 queries prints as it
        goes, in bounded memory. An image that cannot be used is skipped with a warning."""
        return self._answers(self._queries(images, names, k, rerank, progress), k, rerank)

    def _answers(self, images, k: int, rerank: int) -> Iterator[dict]:
        reduce = SIZE if self.reduced else None
        for names, encoded in images.batches(QUERY_BATCH, reduce=reduce):
            vectors = query_features(self.trained, encoded, crops=self._crops)
            codes = self.autoencoder.encode(vectors)
            D, I = self.neighbours(vectors, k, rerank, codes)
            for q, name in enumerate(names):
                found = I[q] >= 0  # an approximate index may find fewer than k
                at = self.table.positions(I[q][found])
                ham = hamming(codes[q : q + 1], self.table.codes[at])[0]
                results = [
                    {"rank": r + 1, "id": int(i), **hit, "hamming": int(h), "distance": float(d)}
                    for r, (i, hit, h, d) in enumerate(
                        zip(I[q][found], self._hits(at), ham, D[q][found], strict=True)
                    )
                ]
                yield {"query": name, **class_of(name, self.trained), "results": results}

    @cached_property
    def reduced(self) -> bool:
        """Whether this collection's images had large JPEGs decoded reduced (pipeline/
        images.py), and so its queries must: a gallery's always, the training set's when
        prep was asked to (its images are otherwise decoded in full, as the paper's). Read
        once: a server's searches do not read the cache record again."""
        return self.name is not None or reduced_decoding(self.run.root)

    def _hits(self, at: np.ndarray) -> list[dict]:
        """{"path", "class", "class_id"} of the images at positions `at`, after checking that
        each file is as it was when indexed."""
        changed = self.table.changed(at)
        if changed:
            since, fix = ("prep", "rerun `alexnet prep`")
            if self.name is not None:
                since, fix = f"{self} was indexed", refresh(self.run, self.name, self.record)
            raise AlexnetError(f"{changed} is gone or changed since {since}: {fix}")
        return self.table.hits(at, self.trained)

    def neighbours(
        self, vectors: np.ndarray, k: int, rerank_top: int = 0, codes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Float fc7 query vectors (and their codes, when already encoded) -> (D, I): the ids
        of the k best images and their distances.

        - rerank_top 0: D are Hamming distances between the codes.
        - rerank_top R > 0: the R nearest by Hamming (at least k) re-ordered by Euclidean fc7
          distance; D are those Euclidean distances.
        """
        self._check_k(k)
        if codes is None:
            codes = self.autoencoder.encode(vectors)
        n = len(self.table)
        shortlist = k if rerank_top <= 0 else min(max(rerank_top, k), n)
        if self.remote is not None:  # Milvus answers with ids
            D, I = self.remote.search(codes, shortlist)
        else:
            D, at = search(self.fast if shortlist <= GPU_MAX_K else self.index, codes, shortlist)
            I = np.where(at >= 0, self.table.rows[np.maximum(at, 0)], -1)
        return (D, I) if rerank_top <= 0 else rerank(self.features, vectors, I, k)

    def _queries(self, images, names, k: int, rerank: int, progress: bool):
        """The images, listed (pipeline/images.py) before the collection is opened (and its
        index built, when missing: `progress` shows it), then k and rerank checked, so that
        no image is read for a search that cannot be made."""
        listed = read_images(images, names)
        self.open(progress=progress)
        self._check_k(k)
        if rerank < 0:
            raise AlexnetError(
                f"{{rerank}}: the re-rank shortlist must be 0 (off) or more, got {rerank}",
                param="rerank",
            )
        return listed

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= len(self):
            raise AlexnetError(
                f"{{k}} must be from 1 to {len(self)} (the images in {self}), got {k}", param="k"
            )

    @cached_property
    def _crops(self):
        """The query pipeline, built on the first search and kept for every later one."""
        return query_crops(self.trained, QUERY_BATCH)

    def file(self, id: int) -> str:
        """The file of image `id` (an id a search returned; an unknown one: an error)."""
        return str(self.open().table.paths[self.table.positions([id])[0]])

    def thumbnail(self, id: int) -> bytes:
        """A small JPEG of image `id` (montage.thumbnail), kept under RUN/thumbs."""
        source = self.file(id)
        gallery = self.name is not None  # a new prep (or gallery): new ids, new thumbnails
        key = (
            f"gallery-{self.name}-{self.record['uid']}"
            if gallery
            else self.trained.manifest.fingerprint
        )
        return thumbnail(source, self.run.thumb(key, id))

    def describe(self) -> dict:
        """What a face shows about the collection: the run, its classes, the number of images,
        the code length and index kind (or the Milvus collection and its index), the
        checkpoint, its epoch and that epoch's validation top-1 error (None when
        RUN/metrics.jsonl has no line for it)."""
        trained = self.open().trained
        errors = {m["epoch"]: m.get("top1_error") for m in read_metrics(self.run.root)}
        index = self.kind if self.remote is None else f"milvus {self.remote.name}"
        return {
            "run": str(self.run),
            "collection": self.name,
            "classes": trained.classes,
            "count": len(self),
            "bits": self.bits,
            "index": index,
            "nprobe": getattr(self.remote or self.index, "nprobe", None),  # None: exact
            **({} if self.remote is None else {"milvus_index": self.remote.describe()}),
            "checkpoint": str(trained.checkpoint),
            "epoch": trained.epoch,
            "top1_error": errors.get(trained.epoch),
        }

    def duplicates(
        self,
        *,
        against: Collection | None = None,
        max_distance: int | None = None,
        max_fc7: float = DUPLICATE_FC7,
        mirrors: bool = True,
        sheets: bool = True,
        progress: bool = True,
    ) -> dict:
        """Near-duplicate groups (find_duplicates), written to FOLDER/duplicates.json with a
        contact sheet per group; with `against` (another collection of the run): this one's
        images found in it (find_in), written to FOLDER/against-OTHER.json with contact
        sheets of its pairs. `mirrors` False skips the mirrored check (duplicates.py)."""
        self.open()
        options = {"max_distance": max_distance, "max_fc7": max_fc7}
        if mirrors:
            options["mirrored"] = lambda at: query_features(
                self.trained,
                [str(self.table.paths[i]) for i in at],
                crop=MIRRORED_CENTRE,
                reduce=self.reduced,
                progress=progress,
            )
        if against is not None:
            other = against.open(trained=self.trained)
            if other.remote is not None and other.remote.count() != len(other):
                raise AlexnetError(
                    f"Milvus collection {other.remote.name} does not hold the codes of {other}"
                    f" ({other.remote.count()} of {len(other)}): "
                    f"{refresh(other.run, other.name, other.record)} and {{milvus}}"
                )
            return self._found_in(other, options, sheets)
        found = find_duplicates(self._images(), range_search=self._range_search(), **options)
        report = {"gallery": self.name, **found}
        with RunLock(self.run.root, f"duplicates of gallery {self.name}"):
            if sheets:
                group_sheets(self.features, report["groups"], self.paths.duplicate_sheet)
            write_json(self.paths.duplicates, report)
        return report

    def _found_in(self, other: Collection, options: dict, sheets: bool) -> dict:
        if (self.run.root, self.name) == (other.run.root, other.name):
            raise AlexnetError(
                f"{self} compared with itself: leave out {{against}} to find its duplicates",
                param="against",
            )
        if self.table.codes.shape[1] != other.table.codes.shape[1]:
            raise AlexnetError(
                f"{self} and {other} have codes of different lengths: index them again"
            )
        search = other._range_search()
        found = find_in(self._images(), other._images(), range_search=search, **options)
        report = {"gallery": self.name, "against": other.name, **found, "sheets": []}
        name = other.name or "training-set"
        with RunLock(self.run.root, f"duplicates of gallery {self.name} in {name}"):
            if sheets:
                sheet = partial(self.paths.against_sheet, name)
                report["sheets"] = pair_sheets(report["pairs"], sheet)
            write_json(self.paths.against(name), report)
        return report

    def _range_search(self):
        """Milvus's range search over this collection's codes, answering with positions in
        the table as FAISS's does (duplicates.close_codes); None: FAISS on the codes."""
        if self.remote is None:
            return None

        def search(queries, radius):
            lims, D, ids = self.remote.range_search(queries, radius)  # Milvus answers with ids
            return lims, D, self.table.positions(ids)

        return search

    def _images(self) -> Images:
        """The arrays the helpers of duplicates.py read."""
        t = self.table
        return Images(t.codes, self.features, t.rows, t.paths)

    def evaluate(self, *, progress: bool = True, **options) -> dict:
        """eval-retrieval, written to RUN/eval_retrieval.json (evaluate_retrieval: `options`
        k, rerank_top, pixel_size, baselines, max_queries, seed)."""
        if self.name is not None:
            raise AlexnetError(f"{self} has no validation images: evaluate the training set")
        net = self.open().trained
        verify_files(net.manifest)  # every file is read, for the raw-pixel baseline
        db_files, db_labels = split_files(net.manifest, "train")
        q_files, q_labels = split_files(net.manifest, "val")
        if not db_files:  # imported weights (model/reference.py): no images of its own
            raise AlexnetError(
                f"run {net.paths} has no training or validation images (imported weights?): "
                "eval-retrieval searches a run's training set with its validation images; prep "
                "a labelled dataset and fine-tune on it from this run ({init_checkpoint})"
            )
        if not q_files:
            raise AlexnetError(
                "the run has no validation images to use as queries: "
                "prepare it again with {val_fraction} above 0",
                param="val_fraction",
            )
        found = evaluate_retrieval(
            self.features,
            self.table.codes,
            self.autoencoder.encode,
            db_files,
            db_labels,
            q_files,
            q_labels,
            fc7=lambda files: query_features(net, files, reduce=self.reduced, progress=progress),
            num_threads=net.config.num_threads,
            progress=progress,
            **options,
        )
        result = {
            "checkpoint": str(net.checkpoint),
            **found,
            "index": self.kind,
            "default_mode": "hamming",  # the run's own codes, made by code_method
            "code_method": self.autoencoder.method,
            "code_settings": self.record.get("code_settings"),
        }
        write_json(self.run.eval_retrieval, result)
        return result


def collection(run: str | Path, name: str | None = None, **options) -> Collection:
    """RUN's training set (name None) or its gallery NAME (made by its first `update`);
    `options`: checkpoint (default RUN's best.pt), workers (DALI threads), milvus (a URI)."""
    return Collection(run, name, **options)


def collections(run: str | Path) -> list[Collection]:
    """RUN's collections: the training set, then each gallery with a record, by name."""
    return [collection(run)] + [collection(run, name) for name in gallery_names(run)]
