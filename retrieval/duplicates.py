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

Confirmed pairs are joined into groups (connected components). The report goes to
FOLDER/duplicates.json and a contact sheet per group to FOLDER/duplicates/N.png (FOLDER: the
collection's, RUN/galleries/NAME for a gallery).

One collection against another (`find_in`; `Collection.duplicates(against=...)`): the images
of a new folder that already exist in an old one. Step 1 range-searches each new image's code
in the old collection's codes (the old images are never compared with each other), steps 2
and 3 are the same; the confirmed pairs (new image, old image) go to
FOLDER/against-OTHER.json and contact sheets of SHEET_PAIRS pairs to FOLDER/against-OTHER/N.png.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import write_json
from alexnet.pipeline.lock import RunLock

from .defaults import DUPLICATE_FC7
from .features import query_features
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


def range_search(remote, table):
    """The range search of `remote` (a MilvusCodes holding `table`'s codes) answering with
    positions in the table, as FAISS's does; None (FAISS) without one."""
    if remote is None:
        return None

    def search(queries, radius):
        lims, D, ids = remote.range_search(queries, radius)  # Milvus answers with ids
        return lims, D, table.positions(ids)

    return search


def candidate_pairs(
    codes: np.ndarray, max_distance: int, range_search=None
) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (P, 2) int64 with i < j, their Hamming distances int32) of all codes within
    `max_distance` bits of each other (close_codes of the codes with themselves)."""
    pairs, dists = close_codes(codes, codes, max_distance, range_search)
    later = pairs[:, 1] > pairs[:, 0]
    return pairs[later], dists[later]


def confirm(a, b, pairs: np.ndarray, max_fc7: float, mirrors: bool, progress: bool):
    """(relative fc7 distance, mirrored) of each pair (position in open collection `a`'s
    table, position in `b`'s): steps 2 and 3 of the module docstring."""
    fa, fb, ta, tb = a.features, b.features, a.table, b.table
    rel = np.concatenate(
        [np.zeros(0, np.float32)]
        + [
            relative_distance(
                fa[ta.rows[pairs[s : s + BLOCK, 0]]], fb[tb.rows[pairs[s : s + BLOCK, 1]]]
            )
            for s in range(0, len(pairs), BLOCK)
        ]
    )
    mirrored = np.zeros(len(pairs), bool)
    if mirrors:
        retry = np.flatnonzero((rel > max_fc7) & (rel <= MIRROR_SHORTLIST))
        if len(retry):
            firsts = np.unique(pairs[retry, 0])
            files = [str(ta.paths[i]) for i in firsts]
            flipped = query_features(a.trained, files, crop=MIRRORED_CENTRE, progress=progress)
            at = np.searchsorted(firsts, pairs[retry, 0])
            again = relative_distance(flipped[at], fb[tb.rows[pairs[retry, 1]]])
            # A mirrored copy is explained by the flip: it must at least halve the distance.
            # Two distinct photos that look alike (a blue ball, blue sky) stay as close
            # mirrored as not, and are left apart.
            better = again <= MIRROR_GAIN * rel[retry]
            rel[retry[better]] = again[better]
            mirrored[retry[better]] = True
    return rel, mirrored


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
    c,
    *,
    max_distance: int | None = None,
    max_fc7: float = DUPLICATE_FC7,
    mirrors: bool = True,
    sheets: bool = True,
    progress: bool = True,
    remote=None,
) -> dict:
    """Groups of near-duplicate images in collection `c` (an open Collection; module
    docstring), written to FOLDER/duplicates.json with a contact sheet per group; returns
    that report (the codes shortlisted by Milvus's range search when `remote`, the
    collection's MilvusCodes, serves them): {"gallery" (the collection's name), "images",
    "bits", "max_distance", "max_fc7", "mirrors", "candidates", "groups": [{"images": [path],
    "ids", "pairs": [{"a", "b", "hamming", "fc7", "mirrored"}], "sheet"}]}."""
    table, paths = c.table, c.paths
    bits = table.codes.shape[1] * 8
    max_distance = default_distance(bits) if max_distance is None else max_distance
    pairs, hams = candidate_pairs(table.codes, max_distance, range_search(remote, table))
    rel, mirrored = confirm(c, c, pairs, max_fc7, mirrors, progress)
    confirmed = rel <= max_fc7
    groups = []
    for members in components(len(table), pairs[confirmed]):
        inside = np.flatnonzero(confirmed & np.isin(pairs[:, 0], members))
        groups.append(
            {
                "images": [str(table.paths[i]) for i in members],
                "ids": [int(table.rows[i]) for i in members],
                "pairs": [
                    {
                        "a": str(table.paths[pairs[p, 0]]),
                        "b": str(table.paths[pairs[p, 1]]),
                        "hamming": int(hams[p]),
                        "fc7": round(float(rel[p]), 4),
                        "mirrored": bool(mirrored[p]),
                    }
                    for p in inside
                ],
            }
        )
    report = {
        "gallery": c.name,
        "images": len(table),
        "bits": bits,
        "max_distance": max_distance,
        "max_fc7": max_fc7,
        "mirrors": mirrors,
        "candidates": len(pairs),
        "groups": groups,
    }
    with RunLock(c.run.root, f"duplicates of gallery {c.name}"):
        if sheets:
            for n, group in enumerate(groups):
                group["sheet"] = str(contact_sheet(c, group, n))
            remove_sheets(paths.duplicate_sheet, len(groups))
        write_json(paths.duplicates, report)
    return report


def contact_sheet(c, group: dict, n: int):
    """One row: the group's first image, then the others with their fc7 distance to it (as
    confirmed, mirrored where that was closer; else the plain one)."""
    first, rows = group["images"][0], group["ids"]
    confirmed = {p["b"]: p for p in group["pairs"] if p["a"] == first}
    plain = relative_distance(
        np.repeat(np.asarray(c.features[rows[:1]]), len(rows) - 1, 0), c.features[rows[1:]]
    )
    results = []
    for path, d in zip(group["images"][1:], plain, strict=True):
        pair = confirmed.get(path, {"fc7": float(d), "mirrored": False})
        label = "mirrored" if pair["mirrored"] else ""
        results.append({"path": path, "class": label, "distance": pair["fc7"]})
    row = {"query": first, "class": None, "results": results}
    return make_montage([row], c.paths.duplicate_sheet(n), unit="fc7")


def find_in(
    c,
    other,
    *,
    max_distance: int | None = None,
    max_fc7: float = DUPLICATE_FC7,
    mirrors: bool = True,
    sheets: bool = True,
    progress: bool = True,
    remote=None,
) -> dict:
    """The images of collection `c` that already exist in collection `other` (both open, of
    one run): each image's codes range-searched in `other`'s (FAISS, or Milvus's range search
    when `remote`, `other`'s MilvusCodes, serves them), confirmed by fc7 as
    find_duplicates does; `other` is not compared with itself. Written to
    FOLDER/against-OTHER.json with contact sheets of SHEET_PAIRS pairs each; returns that
    report: {"gallery", "against", "images", "against_images", "bits", "max_distance",
    "max_fc7", "mirrors", "candidates", "pairs": [{"image", "original", "id", "original_id",
    "hamming", "fc7", "mirrored"}], "sheets"}, pairs by image, then fc7."""
    if (c.run.root, c.name) == (other.run.root, other.name):
        raise AlexnetError(
            f"{c} compared with itself: leave out {{against}} to find its duplicates",
            param="against",
        )
    if c.table.codes.shape[1] != other.table.codes.shape[1]:
        raise AlexnetError(f"{c} and {other} have codes of different lengths: index them again")
    bits = c.table.codes.shape[1] * 8
    max_distance = default_distance(bits) if max_distance is None else max_distance
    search = range_search(remote, other.table)
    pairs, hams = close_codes(c.table.codes, other.table.codes, max_distance, search)
    rel, mirrored = confirm(c, other, pairs, max_fc7, mirrors, progress)
    found = [
        {
            "image": str(c.table.paths[a]),
            "original": str(other.table.paths[b]),
            "id": int(c.table.rows[a]),
            "original_id": int(other.table.rows[b]),
            "hamming": int(h),
            "fc7": round(float(d), 4),
            "mirrored": bool(m),
        }
        for (a, b), h, d, m in zip(pairs, hams, rel, mirrored, strict=True)
        if d <= max_fc7
    ]
    found.sort(key=lambda p: (p["image"], p["fc7"]))
    report = {
        "gallery": c.name,
        "against": other.name,
        "images": len(c.table),
        "against_images": len(other.table),
        "bits": bits,
        "max_distance": max_distance,
        "max_fc7": max_fc7,
        "mirrors": mirrors,
        "candidates": len(pairs),
        "pairs": found,
        "sheets": [],
    }
    name = other.name or "training-set"
    with RunLock(c.run.root, f"duplicates of gallery {c.name} in {name}"):
        if sheets:
            report["sheets"] = pair_sheets(c, name, found)
        write_json(c.paths.against(name), report)
    return report


def pair_sheets(c, name: str, found: list[dict]) -> list[str]:
    """Contact sheets of find_in's pairs, SHEET_PAIRS rows each: the image, then the one of
    collection NAME it was found in, with their fc7 distance."""
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
        sheets.append(str(make_montage(rows, c.paths.against_sheet(name, n), unit="fc7")))
    remove_sheets(lambda n: c.paths.against_sheet(name, n), len(sheets))
    return sheets


def remove_sheets(sheet, n: int) -> None:
    """Remove a previous report's sheets `sheet(n)`, `sheet(n + 1)`, ... beyond this one's n."""
    while sheet(n).is_file():
        sheet(n).unlink()
        n += 1
