"""Readable names of ImageNet's classes from WordNet 3.0, which ImageNet's ids index: the wnid
n01440764 is the noun synset at byte offset 01440764 of WordNet's data.noun, whose first word
is the name ("tench").

The 1,000 ILSVRC-2012 classes are named from a table shipped with the package
(ilsvrc2012_synsets.txt, 32 KB), so that the published networks' classes read as words with
nothing else installed; any other wnid is looked up in data.noun (Debian's `wordnet-base`
package installs it). Used wherever a class id is a wnid and no names file named it
(pipeline/imagenet.py), and for an imported reference network whose labels file lists wnids
alone. A wnid found in neither stays as it is."""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

WNID = re.compile(r"n(\d{8})")
DATA_NOUN = Path(os.environ.get("ALEXNET_WORDNET", "/usr/share/wordnet/data.noun"))
ILSVRC2012 = Path(__file__).with_name("ilsvrc2012_synsets.txt")


@cache
def _lines(path: Path) -> bytes | None:
    try:
        return path.read_bytes()  # 15 MB, read once per process, only when a wnid is named
    except OSError:
        return None


def wordnet_name(class_id: str, data: Path = DATA_NOUN) -> str | None:
    """The first word of the noun synset `class_id` ("n01440764" -> "tench"); None when the id
    is not a wnid or WordNet is not installed or does not list it."""
    m = WNID.fullmatch(class_id)
    text = _lines(data) if m else None
    if text is None:
        return None
    offset = int(m.group(1))
    line = text[offset : text.find(b"\n", offset)].split()
    # "01440764 05 n 02 tench 0 Tinca_tinca 0 ...": offset, lexicographer file, pos, word count
    if len(line) < 5 or line[0] != m.group(1).encode() or line[2] != b"n":
        return None
    return line[4].decode("utf-8", "replace").replace("_", " ")


@cache
def ilsvrc2012_words() -> dict[str, str]:
    """The shipped table: wnid -> its synset's words ("tench, Tinca tinca"), 1,000 classes in
    their class-index order."""
    lines = ILSVRC2012.read_text(encoding="utf-8").splitlines()
    pairs = (ln.split(" ", 1) for ln in lines if ln and not ln.startswith("#"))
    return {wnid: words for wnid, words in pairs}


def wnid_name(class_id: str) -> str | None:
    """The readable name of a wnid: the first word of its ILSVRC-2012 synset from the shipped
    table, else WordNet's (wordnet_name); None when neither knows it."""
    words = ilsvrc2012_words().get(class_id)
    return words.split(",")[0].strip() if words else wordnet_name(class_id)
