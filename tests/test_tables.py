"""`--csv` of search and duplicates: files Python's csv module reads back, a row per result
or per pair, the same records as the JSON output."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from retrieval_fixtures import indexed_run

from alexnet.cli.main import cli


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return indexed_run(tmp_path_factory.mktemp("tables"))


def read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_search_csv_holds_the_json_records(run, tmp_path):
    images = sorted((run.parent / "data").rglob("*.jpg"))[:2]
    out = invoke("search", *images, "--run", run, "-k", 3, "--json", "--csv", tmp_path / "r.csv")
    records = json.loads(out.stdout)["queries"]
    rows = read(tmp_path / "r.csv")
    assert len(rows) == 6
    assert [r["result"] for r in rows] == [x["path"] for q in records for x in q["results"]]
    assert [int(r["hamming"]) for r in rows] == [
        x["hamming"] for q in records for x in q["results"]
    ]
    assert rows[0]["query"] == str(images[0]) and rows[0]["rank"] == "1"


def test_duplicates_csv_has_a_row_per_pair(run, tmp_path):
    photos = tmp_path / "写真"
    shutil.copytree(run.parent / "data" / "red", photos)
    shutil.copy(photos / "0.jpg", photos / "0 copy.jpg")  # an exact copy: a certain pair
    invoke("index", "--run", run, "--images", photos, "--name", "dup")
    invoke("duplicates", "--run", run, "--gallery", "dup", "--csv", tmp_path / "d.csv")
    report = json.loads((run / "galleries" / "dup" / "duplicates.json").read_text())
    rows = read(tmp_path / "d.csv")
    assert len(rows) == sum(len(g["pairs"]) for g in report["groups"]) >= 1
    assert {rows[0]["a"], rows[0]["b"]} <= {str(p.resolve()) for p in photos.iterdir()} | {
        str(p) for p in photos.iterdir()
    }


def test_a_gallery_refuses_a_code_length_of_its_own(run, tmp_path):
    photos = tmp_path / "p"
    shutil.copytree(run.parent / "data" / "blue", photos)
    result = CliRunner().invoke(
        cli, ["index", "--run", str(run), "--images", str(photos), "--bits", "32"]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: --bits and --codes are the training set's: gallery p of run {run} uses its codes"
    ]
