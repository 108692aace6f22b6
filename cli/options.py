"""Options shared by several commands, and the progress switch set by `alexnet -q`."""

import math
from pathlib import Path

import click


def _existing_run(ctx, param, run: Path | None) -> Path | None:
    if ctx.resilient_parsing:  # --help, completion: nothing to check
        return run
    from alexnet.pipeline.layout import find_run

    found, note = find_run(run)  # an AlexnetError: one line, exit 2 (cli/main.py's Group)
    if note:
        click.echo(note, err=True)
    return found


run_option = click.option(
    "--run",
    "run",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    callback=_existing_run,
    help="The run folder (default: $ALEXNET_RUN, else the only run in ./runs).",
)


def given(ctx: click.Context, name: str) -> bool:
    """Whether the option was typed, not left at its default."""
    return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT


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


def _quiet(ctx, param, quiet: bool) -> None:
    if quiet:
        set_quiet(ctx)


def set_quiet(ctx: click.Context) -> None:
    """No progress bars, and only warnings from alexnet's loggers."""
    import logging

    root = ctx.find_root()
    root.obj = {**(root.obj or {}), "progress": False}
    logging.getLogger("alexnet").setLevel(logging.WARNING)


def quiet_option() -> click.Option:
    """-q/--quiet, which every command takes too, so it works before or after its name."""
    return click.Option(
        ["-q", "--quiet"],
        is_flag=True,
        expose_value=False,
        callback=_quiet,
        help="No progress bars or log lines.",
    )


workers_option = click.option(
    "-j",
    "--workers",
    "workers",
    type=POSITIVE,
    default=None,
    help="DALI CPU threads for decoding (default: all cores).",
)


def _click_type(kind: str, choices: tuple):
    if choices:
        return click.Choice([str(c) for c in choices])
    types = {
        "count": POSITIVE,
        "count0": NON_NEGATIVE,
        "int": int,
        "rate": RATE,
        "amount": AMOUNT,
        "probability": PROBABILITY,
        "file": click.Path(dir_okay=False, exists=True),
        "path": click.Path(exists=True),
        "text": str,
    }
    return types[kind]


def _as_choice_type(choices: tuple):
    """Choices given as text on the command line, turned back into the field's own values."""
    by_text = {str(c): c for c in choices}
    return lambda ctx, param, value: by_text.get(value, value)


# The flags of settings whose flag is not just --field-name (short ones, older names).
FLAGS = {
    "batch_size": ("-b", "--batch-size"),
    "weight_decay": ("--wd", "--weight-decay"),
    "num_threads": ("-j", "--workers", "--threads"),
}


def config_options():
    """Click options made from the training settings (model/config.py's `setting`, the
    network's among them): one per setting, with its flags, check, default and help (where
    `{field}` names the field's flag); on/off settings as --x/--no-x."""
    from alexnet.model.config import setting_fields

    def flags_of(name: str) -> tuple[str, ...]:
        return FLAGS.get(name, ("--" + name.replace("_", "-"),))

    settings = setting_fields()
    names = {fld.name: flags_of(fld.name)[-1] for fld, _ in settings}

    def decorate(f):
        for fld, default in reversed(settings):
            meta = fld.metadata
            flags = flags_of(fld.name)
            help = meta["help"].format_map(names)  # "{patience}" is the flag of `patience`
            extra = {"show_default": default is not None, "help": help}
            if meta["kind"] == "switch":
                on = [fl for fl in flags if fl.startswith("--")][-1]
                option = click.option(f"{on}/--no-{on[2:]}", fld.name, default=default, **extra)
            else:
                choices = meta["choices"]
                option = click.option(
                    *flags,
                    fld.name,
                    type=_click_type(meta["kind"], choices),
                    default=str(default) if choices and default is not None else default,
                    callback=_as_choice_type(choices) if choices else None,
                    **extra,
                )
            f = option(f)
        return f

    return decorate


milvus_option = click.option(
    "--milvus",
    "milvus",
    envvar="ALEXNET_MILVUS",
    default=None,
    metavar="URI",
    help="Serve the codes from Milvus (http://host:19530, or a local .db file for Milvus Lite; "
    "$ALEXNET_MILVUS): index stores them there, the others search there. Needs "
    "pip install 'alexnet[milvus]'.",
)


csv_option = click.option(
    "--csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Also write the results as CSV, one row each (for spreadsheets and scripts).",
)
