"""pipeline/manifest.py: a damaged manifest.json is one clear line in every command."""

import json

import pytest
from click.testing import CliRunner
from fixtures import make_images

from alexnet.cli.main import cli
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths, is_run
from alexnet.pipeline.manifest import Manifest, load_manifest


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A run (an untrained checkpoint as best.pt and last.pt) whose manifest lacks "root"."""
    from retrieval_fixtures import make_run

    root = tmp_path_factory.mktemp("manifest")
    run = make_run(make_images(root / "data", train=3, val=1), root / "run")
    assert isinstance(load_manifest(run), Manifest)
    doc = json.loads(RunPaths(run).manifest.read_text())
    del doc["root"]
    RunPaths(run).manifest.write_text(json.dumps(doc))
    return run


def test_a_manifest_without_a_field_is_refused_on_load(damaged):
    assert is_run(damaged)  # still a run folder: the damage is reported, not hidden
    with pytest.raises(AlexnetError, match="lacks field 'root': rerun `alexnet prep DATA`"):
        load_manifest(damaged, check_files=False)


@pytest.mark.parametrize("command", [["search", "x.jpg"], ["train", "--resume"], ["eval"]])
def test_a_manifest_without_a_field_is_one_line_in_each_command(damaged, tmp_path, command):
    if command[0] == "search":
        make_images(tmp_path / "q", classes=1, train=1, val=0)
        command = ["search", str(tmp_path / "q")]
    result = CliRunner().invoke(cli, ["-q", *command, "--run", str(damaged)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert str(RunPaths(damaged).manifest) in lines[0] and "rerun `alexnet prep" in lines[0]
