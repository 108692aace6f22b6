"""What a collection keeps on disk, and the one rule that says whether it is current.

A collection's folder (pipeline.layout's IndexPaths: RUN/index for the training set,
RUN/galleries/NAME for a gallery) holds:
- features.f16.npy + features.json: fc7 rows and the count of complete ones (features.py);
  a compacted gallery's are features.G.f16.npy + features.G.json, named by its record;
- codes.json, the record: written last, so a folder without a current record is incomplete.
  It names what the collection was made from ("source": manifest fingerprint, checkpoint file
  identity; for a gallery also the training set's autoencoder file identity and code length),
  the identity of every other file it depends on ("files": size, time and an xxh3 checksum,
  verified whenever the collection is opened), the feature file's identity ("features_identity":
  checked by `alexnet verify`, which reads it whole) and the feature rows in use ("rows");
- the training set: autoencoder.pt, codes.u8.npy (codes in manifest order), codes.faissindex;
- a gallery: files.G.npz, the table of update G (Table).

`problem(paths, record, source)` is the staleness rule of every collection: None when the
record is of this version, made from `source`, every file it names is as it was written, and
the features hold its rows; else what is wrong, in words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write, file_identity, identity_problem, read_json
from alexnet.pipeline.layout import IndexPaths, RunPaths

from .features import complete_rows, source_identity

VERSION = 2
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MADE = {  # source key -> how a record made from another one is described
    "manifest": "built for another manifest (the data changed since)",
    "checkpoint": "built from another checkpoint",
    "autoencoder": "built with another autoencoder",
    "bits": "built with another code length",
}


def collection_paths(run: str | Path, name: str | None) -> IndexPaths:
    """The folder of RUN's training set (name None) or of gallery NAME (a checked name)."""
    if name is None:
        return RunPaths(run).index
    if not NAME.fullmatch(name):
        raise AlexnetError(
            f"gallery name {name!r} ({{name}}): use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit",
            param="name",
        )
    return RunPaths(run).gallery(name)


def made_from(trained, name: str | None, bits: int | None) -> dict:
    """What collection NAME (None: the training set) is made from; a change means rebuild.
    A gallery's codes also depend on the training set's autoencoder and its width."""
    source = source_identity(trained)
    if name is None:
        return source
    autoencoder = trained.paths.index.autoencoder
    identity = file_identity(autoencoder) if autoencoder.is_file() else None
    return {**source, "autoencoder": identity, "bits": bits}


def refresh(run: RunPaths, name: str | None, record: dict) -> str:
    """What brings collection NAME (None: the training set) up to date, in words."""
    if name is None:
        return f"rebuild it with `alexnet index` on {run}"
    return (
        f"rerun `alexnet index` on {run} with {{images}} {record.get('root')} and {{name}} {name}"
    )


def gallery_names(run: str | Path) -> list[str]:
    """The galleries of RUN that have a record, sorted."""
    folder = RunPaths(run).galleries
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if RunPaths(run).gallery(p.name).meta.is_file())


def read_record(paths: IndexPaths) -> dict | None:
    """The collection's record; None when there is none, {} when it cannot be read."""
    if not paths.meta.is_file():
        return None
    try:
        record = read_json(paths.meta, "collection record", "")
    except AlexnetError:
        return {}
    return record if isinstance(record, dict) else {}


def problem(paths: IndexPaths, record: dict | None, source: dict) -> str | None:
    """None when the collection in `paths` is complete and made from `source`; else what is
    wrong with it ("missing" when it was never made)."""
    if record is None:
        return "missing"
    if not record:
        return "unreadable"
    if record.get("version") != VERSION:
        return "written by another version"
    made = record.get("source", {})
    for key, what in MADE.items():
        if made.get(key) != source.get(key):
            return f"{what} ({(made.get(key) or {}).get('file')})" if key == "checkpoint" else what
    for name, identity in record["files"].items():
        wrong = identity_problem(paths.folder / name, identity)  # content too: small files
        if wrong:
            return wrong
    features = {k: source[k] for k in ("manifest", "checkpoint")}
    if complete_rows(live_paths(paths, record), features) < record["rows"]:
        return "the fc7 features are missing or incomplete"
    return None


def live_paths(paths: IndexPaths, record: dict | None) -> IndexPaths:
    """`paths` with the feature file `record` names (a compacted gallery's, compact.py)."""
    name = (record or {}).get("features")
    return replace(paths, feature_file=name) if name else paths


def identities(*files: Path) -> dict:
    """{file name: identity, content checksum included} of the files a record depends on, as
    they are now."""
    return {f.name: file_identity(f, digest=True) for f in files}


class ManifestPaths(Sequence):
    """The absolute paths of the manifest's files at `positions`, made when asked for (a
    list of 1.28 million paths would take longer to build than most searches)."""

    def __init__(self, manifest: dict, positions: np.ndarray):
        self.root, self.names, self.positions = manifest.root, manifest.files.paths, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> str:
        return f"{self.root}/{self.names[self.positions[i]]}"


@dataclass
class Table:
    """A collection's images by position: path, bytes, mtime_ns, feature row, packed code and
    (the training set) class. The training set's are its manifest split in manifest order (row
    = position); a gallery's the images of its folder in path order (rows: wherever each was
    appended, so an unchanged file keeps its row, its id, across updates)."""

    paths: Sequence[str]
    sizes: np.ndarray  # int64
    mtimes: np.ndarray  # int64
    rows: np.ndarray  # int64: row of features.f16.npy
    codes: np.ndarray  # uint8 (N, bits / 8)
    labels: np.ndarray | None = None  # int: class of each image, where known

    @classmethod
    def empty(cls, bits: int) -> Table:
        z = np.zeros(0, np.int64)
        return cls(np.zeros(0, "U1"), z, z, z, np.zeros((0, bits // 8), np.uint8))

    @classmethod
    def of_manifest(cls, manifest: dict, split: str, codes: np.ndarray) -> Table:
        table = manifest.files
        at = table.positions(split)
        rows = np.arange(len(at), dtype=np.int64)
        labels = table.labels[at]
        return cls(
            ManifestPaths(manifest, at), table.sizes[at], table.mtimes[at], rows, codes, labels
        )

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
        return len(self.rows)

    def known(self) -> dict[str, tuple[int, int]]:
        """{path: (bytes, mtime_ns)} of every image: what a folder walk need not decode again."""
        return {
            str(p): (int(s), int(t))
            for p, s, t in zip(self.paths, self.sizes, self.mtimes, strict=True)
        }

    @cached_property
    def _by_row(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.rows, kind="stable")
        return order, self.rows[order]

    def positions(self, ids) -> np.ndarray:
        """The positions of images by id (feature row); an unknown id is an error."""
        order, rows = self._by_row
        try:
            ids = np.asarray(ids, np.int64)
            at = np.minimum(np.searchsorted(rows, ids), max(0, len(rows) - 1))
            bad = ids[rows[at] != ids] if len(rows) else ids
        except OverflowError:  # an id from outside (a web request) beyond int64
            bad = ids
        if len(bad):
            raise AlexnetError(f"there is no image {bad[0]}: ids are those a search returns")
        return order[at]

    def hits(self, positions: Sequence[int], trained) -> list[dict]:
        """{"path", "class", "class_id"} of the images at `positions`: the class of each
        training image; a gallery image's from its folder's name (None when no class's)."""
        out = []
        for p in positions:
            path = str(self.paths[p])
            if self.labels is None:
                out.append(
                    {"path": path, "class": None, "class_id": None, **class_of(path, trained)}
                )
            else:
                out.append({"path": path, **class_named(int(self.labels[p]), trained)})
        return out

    def changed(self, positions: Sequence[int]) -> str | None:
        """The first file at `positions` that is gone or no longer as indexed (by bytes and
        modification time), or None."""
        for p in positions:
            path = self.paths[p]
            try:
                st = Path(path).stat()
            except OSError:
                return path
            if (st.st_size, st.st_mtime_ns) != (self.sizes[p], self.mtimes[p]):
                return path
        return None


def class_named(label: int, trained) -> dict:
    return {"class": trained.class_names[label], "class_id": trained.classes[label]}


def class_of(path: str, trained) -> dict:
    """The class of an image whose folder is named after one of the run's classes (as in the
    dataset's own tree), so faces can say whether a result matches it; else {}."""
    folder = Path(path).parent.name
    return class_named(trained.classes.index(folder), trained) if folder in trained.classes else {}
