"""Options shared by several commands, and the progress switch set by `alexnet -q`."""

from pathlib import Path

import click

run_option = click.option(
    "--run",
    "run",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/default"),
    show_default=True,
    help="Folder that holds everything this run writes.",
)


def progress(ctx: click.Context) -> bool:
    """Whether to draw progress bars (off with `alexnet -q`)."""
    return bool((ctx.find_root().obj or {}).get("progress", True))
