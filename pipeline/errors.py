"""The one exception type for problems a user can fix (bad paths, bad data, stale files).

The library speaks parameters: a message names a parameter to change by its Python name in
braces, `{force}`, and `str(error)` writes it as `force`. Each face renders the same error
in its own words: the CLI writes each parameter as the flag of the command that ran (cli/main.py)
and exits with `exit_code` (2). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable

PARAMETER = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class AlexnetError(Exception):
    """A problem with the user's input, with a message that names the file and what to do.

    `param` is the parameter the problem is about (None when it is about a file, say)."""

    exit_code = 2

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.template = message
        self.param = param

    def render(self, name: Callable[[str], str | None] = lambda p: f"`{p}`") -> str:
        """The message with each `{parameter}` written as `name(parameter)` (kept as it is
        where `name` returns None)."""
        return PARAMETER.sub(lambda m: name(m.group(1)) or m.group(0), self.template)

    def __str__(self) -> str:
        return self.render()
