"""Search results and duplicate pairs as flat rows, for spreadsheets and scripts (CSV), and
search results as the text table `alexnet search` prints.

One row per result: query, rank, result, class, class_id, hamming, distance; one row per
duplicate pair: group, a, b, hamming, fc7, mirrored. The same records the JSON output holds,
flattened; written atomically with Python's csv module (UTF-8, any file name's script).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from alexnet.pipeline.files import atomic_write

SEARCH_COLUMNS = ("query", "rank", "result", "class", "class_id", "hamming", "distance")
PAIR_COLUMNS = ("group", "a", "b", "hamming", "fc7", "mirrored")


def search_rows(result: dict) -> list[dict]:
    """A Collection.search result -> one row per (query, result)."""
    return [
        {
            "query": q["query"],
            "rank": r["rank"],
            "result": r["path"],
            "class": r["class"],
            "class_id": r["class_id"],
            "hamming": r["hamming"],
            "distance": r["distance"],
        }
        for q in result["queries"]
        for r in q["results"]
    ]


def pair_rows(report: dict) -> list[dict]:
    """A duplicates report -> one row per confirmed pair (`against` a gallery: a is the
    image, b the original found in the other gallery, and no group)."""
    if "groups" not in report:
        keys = {"a": "image", "b": "original", "hamming": "hamming", "fc7": "fc7"}
        return [
            {"group": "", **{k: p[v] for k, v in keys.items()}, "mirrored": p["mirrored"]}
            for p in report["pairs"]
        ]
    return [
        {"group": g, **{k: p[k] for k in PAIR_COLUMNS[1:]}}
        for g, group in enumerate(report["groups"])
        for p in group["pairs"]
    ]


def write_csv(path: str | Path, rows: list[dict], columns: tuple[str, ...]) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.DictWriter(f, fieldnames=columns)
            out.writeheader()
            out.writerows(rows)

    return atomic_write(path, write)


def search_table(result: dict, root: str | None) -> str:
    """The results as aligned text: a header saying what answered, then a table per query;
    paths relative to `root` (the dataset) when given."""
    rerank = result["rerank"]
    lines = [
        f"{result['checkpoint']}, {result['bits']}-bit codes, {result['index']} index"
        + (f", fc7 re-rank of the top {rerank}" if rerank else "")
        + f"; {result['query_ms']:.0f} ms per query"
    ]
    for row in result["queries"]:
        rows = row["results"]
        width = max((len(r["class"] or "") for r in rows), default=5)
        known = f" ({row['class']})" if "class" in row else ""
        lines += ["", f"query: {row['query']}{known}"]
        fc7 = f"{'fc7 L2':>9}" if rerank else ""
        lines.append(f"{'rank':>4} {'bits':>5}{fc7}  {'class':{width}}  path")
        for r in rows:
            path = os.path.relpath(r["path"], root) if root else r["path"]
            dist = f"{r['distance']:9.3f}" if rerank else ""
            label = r["class"] or ""  # a gallery image outside the run's classes
            lines.append(f"{r['rank']:4d} {r['hamming']:5d}{dist}  {label:{width}}  {path}")
    return "\n".join(lines)
