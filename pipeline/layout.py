"""The run folder: every file a run keeps under RUN/, named once.

    RUN/.lock                      who is writing the run now
    RUN/manifest.json              classes, names, counts, skipped files, the dataset fingerprint
    RUN/manifest.files.npz         the usable files as columns: paths, labels, splits, sizes, mtimes
    RUN/stats.npz, stats.json      mean image, channel mean, RGB PCA (and a readable summary)
    RUN/cache/patches.u8.npy, .json  with prep's `cache`: every image's decoded 256x256 patch
    RUN/checkpoints/last.pt, best.pt
    RUN/metrics.jsonl, curves.png  one line per epoch, and its plot
    RUN/eval.json, eval_retrieval.json, search.png
    RUN/index/...                  the training set's retrieval index (IndexPaths)
    RUN/galleries/NAME/...         other photo collections, each an IndexPaths of its own
                                   (+ files.G.npz per update, duplicates.json, duplicates/,
                                   against-OTHER.json, against-OTHER/)
    RUN/thumbs/FINGERPRINT/ID.jpg  thumbnails of indexed images, made by `alexnet serve`

Every module asks `RunPaths(run)` for a path; none spells one itself.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import AlexnetError


@dataclass(frozen=True)
class IndexPaths:
    """One searchable collection: fc7 features, autoencoder, packed codes and FAISS index."""

    folder: Path
    feature_file: str = "features.f16.npy"  # a compacted gallery's: features.G.f16.npy

    @property
    def features(self) -> Path:
        return self.folder / self.feature_file

    @property
    def features_meta(self) -> Path:  # features.json, features.G.json
        return self.folder / self.feature_file.replace(".f16.npy", ".json")

    def feature_files(self) -> list[Path]:
        """Every feature file and sidecar in the folder, live or left by a killed compaction."""
        return [*self.folder.glob("features*.f16.npy"), *self.folder.glob("features*.json")]

    def compacted(self, generation: int) -> IndexPaths:
        """These paths with the feature file a compaction to `generation` writes."""
        return IndexPaths(self.folder, f"features.{generation}.f16.npy")

    @property
    def autoencoder(self) -> Path:
        return self.folder / "autoencoder.pt"

    @property
    def codes(self) -> Path:
        return self.folder / "codes.u8.npy"

    @property
    def index(self) -> Path:
        return self.folder / "codes.faissindex"

    @property
    def meta(self) -> Path:
        return self.folder / "codes.json"

    def entries(self, generation: int) -> Path:
        """A gallery's files, sizes, times, feature rows and codes, as of one update."""
        return self.folder / f"files.{generation}.npz"

    @property
    def duplicates(self) -> Path:
        return self.folder / "duplicates.json"

    def duplicate_sheet(self, group: int) -> Path:
        return self.folder / "duplicates" / f"{group}.png"

    def against(self, other: str) -> Path:
        """The report of this gallery's photos found in gallery `other`."""
        return self.folder / f"against-{other}.json"

    def against_sheet(self, other: str, n: int) -> Path:
        return self.folder / f"against-{other}" / f"{n}.png"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def __str__(self) -> str:
        return str(self.root)

    def __fspath__(self) -> str:  # a RunPaths is a path: open(), Path() and every verb take it
        return str(self.root)

    @property
    def lock(self) -> Path:
        """Held by the one command writing the run (pipeline/lock.py)."""
        return self.root / ".lock"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def manifest_files(self) -> Path:
        return self.root / "manifest.files.npz"

    @property
    def stats(self) -> Path:
        return self.root / "stats.npz"

    @property
    def stats_summary(self) -> Path:
        return self.root / "stats.json"

    @property
    def cache_patches(self) -> Path:
        """Every image's uint8 256x256x3 centre patch, in manifest order (pipeline/cache.py)."""
        return self.root / "cache" / "patches.u8.npy"

    @property
    def cache_record(self) -> Path:
        """What the patch cache holds; written last, so a cache without it is incomplete."""
        return self.root / "cache" / "patches.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        """The checkpoint evaluation, features and search use unless told otherwise."""
        return self.checkpoints / "best.pt"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch}.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_retrieval(self) -> Path:
        return self.root / "eval_retrieval.json"

    @property
    def montage(self) -> Path:
        return self.root / "search.png"

    @property
    def demo_data(self) -> Path:
        return self.root / "data"

    @property
    def thumbs(self) -> Path:
        return self.root / "thumbs"

    def thumb(self, fingerprint: str, i: int) -> Path:
        """Indexed image i's thumbnail; under the manifest's fingerprint, so that after a new
        prep an id never shows the picture it had before."""
        return self.thumbs / fingerprint / f"{i}.jpg"

    @property
    def index(self) -> IndexPaths:
        """The training set's index."""
        return IndexPaths(self.root / "index")

    @property
    def galleries(self) -> Path:
        return self.root / "galleries"

    def gallery(self, name: str) -> IndexPaths:
        return IndexPaths(self.galleries / name)


RUNS = Path("runs")  # where runs live unless a command is told which


def is_run(folder: str | Path) -> bool:
    """What a run folder is, everywhere: a folder whose manifest.json alexnet wrote (any
    version; a damaged one is reported when it is loaded). Prep's walk never enters one, and
    a command's `run` must be one."""
    try:
        doc = json.loads(RunPaths(folder).manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"version", "fingerprint"} <= doc.keys()


def runs_in(folder: Path) -> list[Path]:
    """The run folders directly below `folder`, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and is_run(p))


def find_run(run: str | Path | None) -> tuple[Path, str | None]:
    """The run a command works on, and a note when it was not named: `run` itself; else
    $ALEXNET_RUN; else the one run in ./runs. Anything else is an error that lists the runs."""
    note = None
    if run is None and os.environ.get("ALEXNET_RUN"):
        run = Path(os.environ["ALEXNET_RUN"])
        note = f"run {run} (from $ALEXNET_RUN)"
    if run is None:
        found = runs_in(RUNS)
        if len(found) != 1:
            listed = ", ".join(str(p) for p in found) if found else "none"
            raise AlexnetError(
                f"which run? Pass {{run}} RUN or set ALEXNET_RUN (runs in {RUNS}/: {listed}); "
                "make one with prep (`alexnet prep DATA`) or `alexnet demo`"
            )
        return found[0], f"run {found[0]} (the only one in {RUNS}/)"
    run = Path(run)
    if not is_run(run):
        near = [str(p) for p in runs_in(run.parent) + runs_in(RUNS)]
        guess = difflib.get_close_matches(str(run), sorted(set(near)), n=3, cutoff=0.5)
        raise AlexnetError(
            f"no such run: {run} has no manifest.json written by alexnet"
            + (f" (did you mean {', '.join(guess)}?)" if guess else "")
            + f"; make it with prep (`alexnet prep DATA`, or alexnet.prepare(DATA, {str(run)!r}))"
        )
    return run, note
