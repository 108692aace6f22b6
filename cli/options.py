"""Options shared by several commands, and the progress switch set by `alexnet -q`."""

import math
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


class Number(click.FloatRange):
    """A finite number in a range: `nan` and `inf` are refused like any value out of range."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = click.IntRange(min=1)  # counts that must be at least 1
NON_NEGATIVE = click.IntRange(min=0)
RATE = Number(min=0, min_open=True)  # learning rates: above 0
AMOUNT = Number(min=0)  # stds, deltas, epochs of warm-up: 0 or more
PROBABILITY = Number(min=0, max=1, max_open=True)  # dropout, the validation share
