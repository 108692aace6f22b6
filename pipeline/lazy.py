"""Public names of a package, imported on first use (PEP 562), so that importing one light
module of a package (its settings, say) does not load torch, DALI or faiss."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str | None, exports: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that finds each name of `exports` in its submodule (relative to
    `package`, or an absolute module name when `package` is None)."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package or 'alexnet'!r} has no attribute {name!r}")
        module = exports[name] if package is None else f"{package}.{exports[name]}"
        return getattr(importlib.import_module(module), name)

    return __getattr__
