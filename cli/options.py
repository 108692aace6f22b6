"""Options shared by several commands."""

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
