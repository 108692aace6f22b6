"""The package's shape: which folder may import which, public names, a light command line.

Each folder owns one stage and depends only on the stages before it:
pipeline <- model <- retrieval <- cli (docs/architecture.md). These rules are read from the
source with `ast`, so they hold after every change.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model", "retrieval", "cli")


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (functions too), relative ones resolved."""
    package = f"alexnet.{path.parent.name}"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).glob("*.py"))


def offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(package)
        for name in sorted(imports(path))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("pipeline", ("alexnet.model", "alexnet.retrieval", "alexnet.cli", "click")),
        ("model", ("alexnet.retrieval", "alexnet.cli", "click")),
        ("retrieval", ("alexnet.cli", "alexnet.model.train", "alexnet.model.optim", "click")),
        ("cli", ("torch", "faiss", "nvidia.dali")),
    ],
)
def test_import_boundaries(package, forbidden):
    assert sources(package), f"no sources found in {ROOT / package}"
    assert offending(package, forbidden) == []


def test_the_boundary_check_sees_function_level_and_relative_imports(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "x.py").write_text("from .alexnet import AlexNet\ndef f():\n    import faiss\n")
    assert imports(folder / "x.py") >= {"alexnet.model.alexnet", "faiss"}


def test_public_names():
    from alexnet import collection, collections
    from alexnet.model import AlexNet, AlexNetConfig, TrainConfig, fit, load_trained
    from alexnet.pipeline import RunPaths, prepare, scan
    from alexnet.retrieval import Collection

    assert AlexNet(AlexNetConfig(num_classes=3)).classifier[-1].out_features == 3
    assert TrainConfig().lr == 0.01 and RunPaths("r").best == Path("r/checkpoints/best.pt")
    assert all(map(callable, (fit, load_trained, prepare, scan, collection, collections)))
    assert callable(Collection.search)
    for package in ("model", "pipeline", "retrieval"):
        module = __import__(f"alexnet.{package}", fromlist=["__all__"])
        for name in module.__all__:
            assert getattr(module, name) is not None, f"alexnet.{package}.{name}"


def test_the_command_line_loads_without_torch_dali_or_faiss():
    code = (
        "import sys, alexnet.cli.main; "
        "print(sorted(m for m in ('torch', 'nvidia.dali', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def flags_in_strings(path: Path, root: Path = ROOT) -> list[str]:
    """The `--flag`s written in `path`'s string literals (messages, docstrings, log lines)."""
    return [
        f"{path.relative_to(root)}:{node.lineno}: {flag}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        for flag in FLAG.findall(node.value)
    ]


def test_the_library_names_parameters_not_flags():
    """Flags belong to the command line: a library message names the parameter as `{name}`
    and each face writes it its own way (pipeline/errors.py)."""
    import alexnet

    assert Path(alexnet.__file__).resolve().parent == ROOT / "alexnet", "not this checkout"
    found = [f for folder in ("alexnet", "pipeline", "model", "retrieval") for f in sources(folder)]
    assert len(found) > 30
    assert [hit for path in found for hit in flags_in_strings(path)] == []


def test_the_flag_check_finds_a_flag_in_a_message(tmp_path):
    (tmp_path / "x.py").write_text('raise ValueError(f"pass --force, not {x}-y or a -- b")\n')
    assert flags_in_strings(tmp_path / "x.py", tmp_path) == ["x.py:1: --force"]


def import_cycles(package: str) -> list[list[str]]:
    """The import circles among `package`'s modules (function-level imports count: a circle
    hidden in a function is still a circle)."""
    modules = {p.stem: p for p in sources(package) if p.stem != "__init__"}
    prefix = f"alexnet.{package}."
    graph = {
        name: sorted(
            {m[len(prefix) :].split(".")[0] for m in imports(path) if m.startswith(prefix)}
            & set(modules) - {name}
        )
        for name, path in modules.items()
    }
    cycles, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for nxt in graph[name]:
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_model_has_no_import_circle():
    assert import_cycles("model") == []


# What a Collection holds once open (retrieval/collection.py): a helper that reads one of
# these from its argument has been handed the Collection instead of its arrays.
COLLECTION_STATE = ("trained", "table", "autoencoder", "record", "remote", "fast", "open")


def collection_uses(path: Path) -> list[str]:
    """Where `path` imports the Collection's module or reads a Collection's state."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [
        f"{path.name}:{node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in COLLECTION_STATE
    ]
    return found + [
        f"{path.name} imports {name}"
        for name in sorted(imports(path))
        if name.startswith("alexnet.retrieval.collection")
    ]


@pytest.mark.parametrize("module", ["evaluate.py", "duplicates.py", "remote.py"])
def test_retrieval_helpers_take_arrays_not_a_collection(module):
    """Helpers take arrays and return arrays or dicts; only the Collection knows its files."""
    assert collection_uses(ROOT / "retrieval" / module) == []


def test_the_collection_check_finds_a_collection_read(tmp_path):
    folder = tmp_path / "retrieval"
    folder.mkdir()
    (folder / "x.py").write_text("from .collection import Collection\ndef f(c):\n    c.table\n")
    assert collection_uses(folder / "x.py") == [
        "x.py:3: .table",
        "x.py imports alexnet.retrieval.collection",
        "x.py imports alexnet.retrieval.collection.Collection",
    ]


def test_the_faces_are_thin():
    """The commands parse, call the library and print: no cli/ module grows past 300 lines,
    and none reads images itself (pipeline/images.py is the one way in)."""
    for path in sources("cli"):
        text = path.read_text()
        assert len(text.splitlines()) <= 300, path.name
        readers = {"alexnet.pipeline.walk", "alexnet.pipeline.imagecheck", "PIL"}
        assert "Image.open" not in text and not readers & imports(path), path.name
