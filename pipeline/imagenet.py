"""What the folders do not say: labels of validation images kept in one flat folder, and the
readable names of the classes. ILSVRC-2012 as it ships, and other datasets of its shape.

ImageNet's training images sit in DATA/train/<wnid>/, but its 50,000 validation images sit
together in DATA/val/ (ILSVRC2012_val_00000001.JPEG ...) and are labelled by a separate file.
Found by themselves, in this order:

- Kaggle's files at DATA's root: LOC_val_solution.csv (ImageId, PredictionString; the first
  token of the string is the wnid) and LOC_synset_mapping.txt ("n01440764 tench, Tinca
  tinca": the wnid, then its WordNet synonyms).
- The ILSVRC-2012 devkit, ILSVRC2012_devkit_t12.tar.gz or that folder extracted, in DATA or
  beside it: data/ILSVRC2012_validation_ground_truth.txt holds the ILSVRC2012_ID (1-1000) of
  each validation image in file-number order, and data/meta.mat maps IDs to wnids and words.
- classes.json {id: name} at DATA's root (as imagenette ships): names only.
Given explicitly, for any dataset (and before anything found): a labels file (`val_labels`:
a CSV, or "filename label" lines, the label being a class folder's name) and a names file
(`class_names`: "id name" lines).

ImageNet's own files give the first synonym as the display name ("tench"); other files give
the whole name. A class no file names is shown by its WordNet name when its id is a wnid
(pipeline/wordnet.py: the ILSVRC-2012 classes from a table the package ships, others from
WordNet when installed), else by its folder name.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AlexnetError
from .wordnet import wnid_name

KAGGLE_LABELS = "LOC_val_solution.csv"
KAGGLE_NAMES = "LOC_synset_mapping.txt"
DEVKIT = "ILSVRC2012_devkit_t12"
DEVKIT_META = "data/meta.mat"
DEVKIT_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
CLASSES_JSON = "classes.json"


@dataclass(frozen=True)
class Annotations:
    """Labels of loose validation files (file name -> class id) and display names (class id ->
    name), each with the file it came from (None: nothing found)."""

    labels: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    labels_from: str | None = None
    names_from: str | None = None

    def label_of(self, file_name: str) -> str | None:
        """The class id listed for a file, by its name with or without the extension."""
        return self.labels.get(file_name) or self.labels.get(Path(file_name).stem)


def first_synonym(words: str) -> str:
    """WordNet lists synonyms: "tench, Tinca tinca" -> "tench"."""
    return words.split(",")[0].strip()


def _text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AlexnetError(f"cannot read the {what} {path} ({e})") from e


def read_val_labels(path: str | Path) -> dict[str, str]:
    """A labels file -> {file name: class id}. A .csv file: the first column is the file, the
    second the label (Kaggle's solution file, recognised by its header, gives the first token
    of its PredictionString); any other file: "filename label" lines."""
    path = Path(path)
    text = _text(path, "labels file")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        kaggle = bool(rows) and rows[0][:2] == ["ImageId", "PredictionString"]
        body = rows[1:] if kaggle else rows
        labels = {
            row[0].strip(): row[1].split()[0] if kaggle else row[1].strip()
            for row in body
            if len(row) >= 2 and row[1].strip()
        }
    else:
        pairs = (line.split(None, 1) for line in text.splitlines())
        labels = {p[0]: p[1].strip() for p in pairs if len(p) == 2}
    if not labels:
        raise AlexnetError(f"{path} lists no labels: expected 'filename label' lines or a CSV")
    return labels


def read_class_names(path: str | Path, *, wordnet: bool = False) -> dict[str, str]:
    """A names file -> {class id: name}: "id name" lines, or a JSON object {id: name}. With
    `wordnet`, each name is a synonym list and its first synonym is kept."""
    path = Path(path)
    text = _text(path, "class names file")
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise AlexnetError(f"{path} is not JSON ({e})") from e
        if not isinstance(doc, dict):
            raise AlexnetError(f"{path} must hold one object {{class id: name}}")
        names = {str(k): str(v) for k, v in doc.items()}
    else:
        pairs = (line.split(None, 1) for line in text.splitlines())
        names = {p[0]: p[1].strip() for p in pairs if len(p) == 2}
    if not names:
        raise AlexnetError(f"{path} names no classes: expected 'id name' lines")
    return {k: first_synonym(v) for k, v in names.items()} if wordnet else names


def _devkit_files(devkit: Path) -> tuple[bytes, bytes]:
    """meta.mat and the ground-truth file, from the folder or straight out of the archive."""
    if devkit.is_dir():
        return (devkit / DEVKIT_META).read_bytes(), (devkit / DEVKIT_TRUTH).read_bytes()
    with tarfile.open(devkit) as tar:
        found = {}
        for member in tar.getmembers():
            for name in (DEVKIT_META, DEVKIT_TRUTH):
                if member.name.endswith("/" + name) or member.name == name:
                    found[name] = tar.extractfile(member).read()
    if len(found) < 2:
        raise KeyError(f"{DEVKIT_META} or {DEVKIT_TRUTH} is not in the archive")
    return found[DEVKIT_META], found[DEVKIT_TRUTH]


def read_devkit(devkit: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """The ILSVRC-2012 devkit (folder or .tar.gz) -> (validation labels, display names)."""
    from scipy.io import loadmat

    devkit = Path(devkit)
    try:
        meta, truth = _devkit_files(devkit)
        synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    except (OSError, KeyError, ValueError, tarfile.TarError) as e:
        raise AlexnetError(f"{devkit} is not a readable ILSVRC-2012 devkit ({e})") from e
    # The 1000 classes are the leaves of the synset tree, numbered 1-1000 by ILSVRC2012_ID.
    leaves = [s for s in synsets if int(s["num_children"]) == 0]
    wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
    names = {str(s["WNID"]): first_synonym(str(s["words"])) for s in leaves}
    ids = [int(line) for line in truth.decode().split()]
    unknown = sorted(set(ids) - set(wnid))
    if unknown:
        raise AlexnetError(f"{devkit}: ground-truth IDs {unknown[:5]} are not in meta.mat")
    labels = {f"ILSVRC2012_val_{i:08d}": wnid[n] for i, n in enumerate(ids, start=1)}
    return labels, names


def find_devkit(data: Path) -> Path | None:
    for folder in (data, data.parent):
        for candidate in (folder / DEVKIT, folder / f"{DEVKIT}.tar.gz"):
            if candidate.exists():
                return candidate
    return None


def find_annotations(
    data: Path, *, val_labels: str | Path | None = None, class_names: str | Path | None = None
) -> Annotations:
    """Labels and names for the tree at `data`: the files given, else those found there."""
    labels = names = labels_from = names_from = None
    if val_labels is not None:
        labels, labels_from = read_val_labels(val_labels), str(val_labels)
    if class_names is not None:
        wordnet = Path(class_names).name == KAGGLE_NAMES
        names, names_from = read_class_names(class_names, wordnet=wordnet), str(class_names)
    if labels is None and (data / KAGGLE_LABELS).is_file():
        labels, labels_from = read_val_labels(data / KAGGLE_LABELS), str(data / KAGGLE_LABELS)
    if names is None and (data / KAGGLE_NAMES).is_file():
        names = read_class_names(data / KAGGLE_NAMES, wordnet=True)
        names_from = str(data / KAGGLE_NAMES)
    devkit = find_devkit(data) if labels is None or names is None else None
    if devkit is not None:
        devkit_labels, devkit_names = read_devkit(devkit)
        if labels is None:
            labels, labels_from = devkit_labels, str(devkit)
        if names is None:
            names, names_from = devkit_names, str(devkit)
    if names is None and (data / CLASSES_JSON).is_file():
        names, names_from = read_class_names(data / CLASSES_JSON), str(data / CLASSES_JSON)
    return Annotations(labels or {}, names or {}, labels_from, names_from)


def display_names(classes: list[str], names: dict[str, str]) -> list[str]:
    """One readable name per class id; a name two classes share (ImageNet has two "crane"s)
    gets its id appended, so that no two classes look alike."""
    shown = [names.get(c) or wnid_name(c) or c for c in classes]
    repeated = {n for n, count in Counter(shown).items() if count > 1}
    return [f"{n} ({c})" if n in repeated else n for n, c in zip(shown, classes, strict=True)]
