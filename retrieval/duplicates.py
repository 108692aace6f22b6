"""Near-duplicates in a collection: the same photo resized, re-encoded or mirrored.

    report = alexnet.collection(run, "photos").duplicates()  # also writes duplicates.json
    report["groups"][0]["images"]                             # paths of one group

Two stages, as a search does: the binary codes shortlist, fc7 decides.
1. Candidate pairs: every pair of images whose codes lie within `max_distance` bits
   (faiss IndexBinaryFlat.range_search, in blocks of queries; checked against a numpy
   popcount scan in the tests). Default: bits / 16, 4 bits of a 64-bit code.
2. Confirmation by the relative fc7 distance ||a - b|| / sqrt(||a|| ||b||) (the float16
   features, so the scale of a run's fc7 does not matter): at most `max_fc7` (0.075).
   Measured with the imagenette-mini run (BENCHMARKS.md, "Galleries"): a photo resized to
   3/4 or re-encoded at JPEG quality 25 lies at 0.003 to 0.071 from its original; the
   closest distinct photos at 0.082 (a blue golf ball and parachutists in a blue sky) and
   0.124 (two parachutists). The margin is thin with a network at 53% top-1 error: lower
   `max_fc7` for fewer false groups, raise it to catch harder edits.
3. Mirrors: fc7 of a mirrored photo lies at 0.1 to 0.33 from the original's, as far as
   similar distinct photos do, though its code stays close (within 3 bits there). So a
   candidate pair that fails step 2 but lies within MIRROR_SHORTLIST (0.4) is checked once
   more with the mirrored centre crop of its first image (the evaluation pipeline's tenth
   crop): a mirrored copy then lies as close as a re-encoded one (0.02 to 0.07), and it
   counts when that at least halves the pair's distance (MIRROR_GAIN), which keeps apart
   two distinct look-alikes that are as close mirrored as not. `mirrors=False` skips this
   (it costs one network pass per image in such pairs).

Confirmed pairs are joined into groups (connected components). The collection writes the
report to FOLDER/duplicates.json and a contact sheet per group to FOLDER/duplicates/N.png
(FOLDER: the collection's, RUN/galleries/NAME for a gallery). The functions here take the
collection's arrays (`Images`: codes, fc7 rows, ids, paths) and return plain dicts, as
faiss's contrib does; only the Collection knows its files.

One collection against another (`find_in`; `Collection.duplicates(against=...)`): the images
of a new folder that already exist in an old one. Step 1 range-searches each new image's code
in the old collection's codes (the old images are never compared with each other), steps 2
and 3 are the same; the confirmed pairs (new image, old image) go to
FOLDER/against-OTHER.json and contact sheets of SHEET_PAIRS pairs to FOLDER/against-OTHER/N.png.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from .defaults import DUPLICATE_FC7
from .montage import make_montage

log = logging.getLogger(__name__)

MIRROR_SHORTLIST = 0.4  # pairs closer than this get the mirrored check
MIRROR_GAIN = 0.5  # ... which must at least halve their distance
MIRRORED_CENTRE = 9  # eval_crops' ten crops: 5 positions (centre last), then their mirrors
BLOCK = 4096  # queries per range search
SHEET_PAIRS = 10  # pairs (rows) per contact sheet of find_in


def default_distance(bits: int) -> int:
    return max(1, bits // 16)


def close_codes(
    queries: np.ndarray, codes: np.ndarray, max_distance: int, range_search=None
) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (P, 2) int64: (query position, code position), their Hamming distances int32)
    of every query and code within `max_distance` bits, by query then code.
    `range_search(queries, radius) -> (lims, D, I)` (I: positions in `codes`) defaults to a
    FAISS flat index of the codes; a collection served by Milvus passes its own."""
    if range_search is None:
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(np.ascontiguousarray(codes))
        range_search = index.range_search
    pairs, dists = [np.zeros((0, 2), np.int64)], [np.zeros(0, np.int32)]
    for s in range(0, len(queries), BLOCK):
        # range_search keeps distances strictly below the radius
        lims, D, I = range_search(np.ascontiguousarray(queries[s : s + BLOCK]), max_distance + 1)
        rows = s + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
        pairs.append(np.stack([rows, I], 1).astype(np.int64))
        dists.append(D.astype(np.int32))
    pairs, dists = np.concatenate(pairs), np.concatenate(dists)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], dists[order]


def candidate_pairs(
    codes: np.ndarray, max_distance: int, range_search=None
) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (P, 2) int64 with i < j, their Hamming distances int32) of all codes within
    `max_distance` bits of each other (close_codes of the codes with themselves)."""
    pairs, dists = close_codes(codes, codes, max_distance, range_search)
    later = pairs[:, 1] > pairs[:, 0]
    return pairs[later], dists[later]


class Images(NamedTuple):
    """The images of one collection by position, as arrays: what the helpers below read."""

    codes: np.ndarray  # uint8 (N, bits / 8): packed codes
    features: np.ndarray  # fc7 rows (memory-mapped float16 is fine), indexed by `rows`
    rows: np.ndarray  # int64 (N,): each image's row of `features`, its id
    files: Sequence[str]  # each image's path


def confirm(
    a: Images,
    b: Images,
    pairs: np.ndarray,
    max_fc7: float,
    mirrored: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(relative fc7 distance, mirrored) of each pair (position in `a`, position in `b`):
    steps 2 and 3 of the module docstring. `mirrored(positions)`: float fc7 of the mirrored
    centre crops of `a`'s images at those positions (MIRRORED_CENTRE); None skips step 3."""
    fa, fb = a.features, b.features
    rel = np.concatenate(
        [np.zeros(0, np.float32)]
        + [
            relative_distance(
                fa[a.rows[pairs[s : s + BLOCK, 0]]], fb[b.rows[pairs[s : s + BLOCK, 1]]]
            )
            for s in range(0, len(pairs), BLOCK)
        ]
    )
    flags = np.zeros(len(pairs), bool)
    if mirrored is not None:
        retry = np.flatnonzero((rel > max_fc7) & (rel <= MIRROR_SHORTLIST))
        if len(retry):
            firsts = np.unique(pairs[retry, 0])
            flipped = mirrored(firsts)
            at = np.searchsorted(firsts, pairs[retry, 0])
            again = relative_distance(flipped[at], fb[b.rows[pairs[retry, 1]]])
            # A mirrored copy is explained by the flip: it must at least halve the distance.
            # Two distinct photos that look alike (a blue ball, blue sky) stay as close
            # mirrored as not, and are left apart.
            better = again <= MIRROR_GAIN * rel[retry]
            rel[retry[better]] = again[better]
            flags[retry[better]] = True
    return rel, flags


def relative_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / sqrt(||a|| ||b||) row by row (0 for two zero vectors)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = np.sqrt(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.linalg.norm(a - b, axis=1) / np.maximum(scale, 1e-12)


def components(n: int, pairs: np.ndarray) -> list[list[int]]:
    """The groups of 2 or more of n items joined by `pairs`, each sorted, by first item."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def find_duplicates(
    images: Images,
    *,
    max_distance: int | None = None,
    max_fc7: float = DUPLICATE_FC7,
    mirrored: Callable[[np.ndarray], np.ndarray] | None = None,
    range_search=None,
) -> dict:
    """Groups of near-duplicates among `images` (module docstring): {"images", "bits",
    "max_distance", "max_fc7", "mirrors", "candidates", "groups": [{"images": [path], "ids",
    "pairs": [{"a", "b", "hamming", "fc7", "mirrored"}]}]}. `mirrored`: as confirm's (None:
    no mirror check); `range_search`: as close_codes's (default: FAISS on the codes)."""
    bits = images.codes.shape[1] * 8
    max_distance = default_distance(bits) if max_distance is None else max_distance
    pairs, hams = candidate_pairs(images.codes, max_distance, range_search)
    rel, mirrored_pairs = confirm(images, images, pairs, max_fc7, mirrored)
    confirmed = rel <= max_fc7
    files, rows = images.files, images.rows
    groups = []
    for members in components(len(rows), pairs[confirmed]):
        inside = np.flatnonzero(confirmed & np.isin(pairs[:, 0], members))
        groups.append(
            {
                "images": [str(files[i]) for i in members],
                "ids": [int(rows[i]) for i in members],
                "pairs": [
                    {
                        "a": str(files[pairs[p, 0]]),
                        "b": str(files[pairs[p, 1]]),
                        "hamming": int(hams[p]),
                        "fc7": round(float(rel[p]), 4),
                        "mirrored": bool(mirrored_pairs[p]),
                    }
                    for p in inside
                ],
            }
        )
    return {
        "images": len(rows),
        "bits": bits,
        "max_distance": max_distance,
        "max_fc7": max_fc7,
        "mirrors": mirrored is not None,
        "candidates": len(pairs),
        "groups": groups,
    }


def group_sheets(features: np.ndarray, groups: list[dict], sheet: Callable[[int], Path]) -> None:
    """A contact sheet per group of find_duplicates at `sheet(n)` (its path recorded in the
    group as "sheet"), and a previous report's surplus sheets removed. `features`: the fc7
    rows the groups' ids index."""
    for n, group in enumerate(groups):
        group["sheet"] = str(contact_sheet(features, group, sheet(n)))
    remove_sheets(sheet, len(groups))


def contact_sheet(features: np.ndarray, group: dict, out: Path) -> Path:
    """One row: the group's first image, then the others with their fc7 distance to it (as
    confirmed, mirrored where that was closer; else the plain one)."""
    first, rows = group["images"][0], group["ids"]
    confirmed = {p["b"]: p for p in group["pairs"] if p["a"] == first}
    plain = relative_distance(
        np.repeat(np.asarray(features[rows[:1]]), len(rows) - 1, 0), features[rows[1:]]
    )
    results = []
    for path, d in zip(group["images"][1:], plain, strict=True):
        pair = confirmed.get(path, {"fc7": float(d), "mirrored": False})
        label = "mirrored" if pair["mirrored"] else ""
        results.append({"path": path, "class": label, "distance": pair["fc7"]})
    row = {"query": first, "class": None, "results": results}
    return make_montage([row], out, unit="fc7")


def find_in(
    images: Images,
    other: Images,
    *,
    max_distance: int | None = None,
    max_fc7: float = DUPLICATE_FC7,
    mirrored: Callable[[np.ndarray], np.ndarray] | None = None,
    range_search=None,
) -> dict:
    """The `images` that already exist among `other` (both of one run): each image's codes
    range-searched in `other`'s (FAISS; or `range_search`, as close_codes's, e.g. Milvus
    holding `other`'s codes), confirmed by fc7 as find_duplicates does; `other` is not
    compared with itself. {"images", "against_images", "bits", "max_distance",
    "max_fc7", "mirrors", "candidates", "pairs": [{"image", "original", "id", "original_id",
    "hamming", "fc7", "mirrored"}]}, pairs by image, then fc7."""
    bits = images.codes.shape[1] * 8
    max_distance = default_distance(bits) if max_distance is None else max_distance
    pairs, hams = close_codes(images.codes, other.codes, max_distance, range_search)
    rel, mirrored_pairs = confirm(images, other, pairs, max_fc7, mirrored)
    found = [
        {
            "image": str(images.files[a]),
            "original": str(other.files[b]),
            "id": int(images.rows[a]),
            "original_id": int(other.rows[b]),
            "hamming": int(h),
            "fc7": round(float(d), 4),
            "mirrored": bool(m),
        }
        for (a, b), h, d, m in zip(pairs, hams, rel, mirrored_pairs, strict=True)
        if d <= max_fc7
    ]
    found.sort(key=lambda p: (p["image"], p["fc7"]))
    return {
        "images": len(images.rows),
        "against_images": len(other.rows),
        "bits": bits,
        "max_distance": max_distance,
        "max_fc7": max_fc7,
        "mirrors": mirrored is not None,
        "candidates": len(pairs),
        "pairs": found,
    }


def pair_sheets(found: list[dict], sheet: Callable[[int], Path]) -> list[str]:
    """Contact sheets of find_in's pairs at `sheet(n)`, SHEET_PAIRS rows each: the image,
    then the one it was found in, with their fc7 distance; a previous report's surplus
    sheets removed."""
    sheets = []
    for n, s in enumerate(range(0, len(found), SHEET_PAIRS)):
        rows = [
            {
                "query": p["image"],
                "class": None,
                "results": [
                    {
                        "path": p["original"],
                        "class": "mirrored" if p["mirrored"] else "",
                        "distance": p["fc7"],
                    }
                ],
            }
            for p in found[s : s + SHEET_PAIRS]
        ]
        sheets.append(str(make_montage(rows, sheet(n), unit="fc7")))
    remove_sheets(sheet, len(sheets))
    return sheets


def remove_sheets(sheet, n: int) -> None:
    """Remove a previous report's sheets `sheet(n)`, `sheet(n + 1)`, ... beyond this one's n."""
    while sheet(n).is_file():
        sheet(n).unlink()
        n += 1
