"""README.md's Python section runs as printed: prepare -> fit -> load -> predict/features ->
collection(run).update() -> search, in a fresh folder, saved as a file and run as a script
(without an `if __name__ == "__main__":` guard, as it is printed)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_script() -> str:
    """The ```python block of the "## Python" section, exactly as printed."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python section holds one script"
    return blocks[0]


@pytest.mark.slow
def test_the_readme_script_runs_as_printed(tmp_path):
    script = python_script()
    assert "alexnet.collection(run)" in script and ".search(" in script
    # The checkout's package first, whatever else the interpreter's path holds.
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    (tmp_path / "example.py").write_text(script, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(2, 4096)" in done.stdout and "'class_id': 'red'" in done.stdout
    assert (tmp_path / "runs" / "photos" / "checkpoints" / "best.pt").is_file()
    assert "'hamming'" in done.stdout  # the collection's search records
