"""`alexnet`: predict, demo (+ prep, train, eval from cli/stages.py; index, search,
eval-retrieval from cli/search.py; serve, duplicates, import-weights, verify beside them).

Each command parses, calls the library, prints. The library is imported inside the commands,
so `alexnet --help` does not load torch, DALI or faiss."""

from __future__ import annotations

import json
import logging
from importlib.metadata import version
from pathlib import Path

import click

from alexnet.cli import stages, verify, weights
from alexnet.cli.options import (
    POSITIVE,
    progress,
    quiet_option,
    run_option,
    set_quiet,
    workers_option,
)
from alexnet.cli.search import print_index, register
from alexnet.demo import DEMO_RUN
from alexnet.pipeline.errors import AlexnetError


class Group(click.Group):
    """Turns AlexnetError (and a path argument that does not exist) into one line on stderr
    and exit code 2, and Ctrl-C into exit code 130 (as the shell reports it), without a
    traceback. Every command it holds also takes
    -q/--quiet."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any(p.name == "quiet" for p in cmd.params):
            cmd.params.append(quiet_option())
        super().add_command(cmd, name)

    def flag_namer(self, ctx: click.Context, command: click.Command | None):
        """How this face names a library parameter: the flag of the command that ran (`force`
        -> `--force`, `batch_size` -> `--batch-size`), else of any command, else the name."""
        commands = [command] if command else []
        commands += [self.get_command(ctx, name) for name in self.list_commands(ctx)]

        def name(parameter: str) -> str:
            for cmd in commands:
                for p in cmd.params:
                    if isinstance(p, click.Option) and p.name == parameter:
                        long = [o for o in p.opts if o.startswith("--")]
                        spelled = "--" + parameter.replace("_", "-")
                        return spelled if spelled in long else (long or p.opts)[0]
            return parameter

        return name

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AlexnetError as e:
            command = self.get_command(ctx, ctx.invoked_subcommand or "")
            line = e.render(self.flag_namer(ctx, command))
            if e.exit_code == 130:  # the trainer's own Ctrl-C: it says what it saved
                click.echo(line, err=True)
            else:
                click.secho(f"error: {line}", fg="red", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:  # Ctrl-C outside the trainer's own handler
            click.echo(interrupted(ctx.invoked_subcommand), err=True)
            ctx.exit(130)
        except click.BadParameter as e:  # a path that is not there: one line, as our errors
            if not isinstance(getattr(e.param, "type", None), click.Path):
                raise
            click.secho(f"error: {e.format_message()}", fg="red", err=True)
            ctx.exit(2)


# What Ctrl-C leaves, by command. Every file is written whole or not at all (a temporary file
# moved into place; an interrupted write removes its own), so what was written stays.
KEPT = {
    "prep": "the run is as it was, or no run (the manifest is written last)",
    "import-weights": "no run was made (the manifest is written last)",
    "train": "the checkpoints saved so far",
    "demo": "what the demo made so far: run it again to continue",
    "index": "the index as it was; fc7 rows extracted so far",
}


def interrupted(command: str | None) -> str:
    """The one line every command prints on Ctrl-C (and then exits 130)."""
    kept = KEPT.get(command or "", "the files written so far")
    return f"interrupted: kept {kept}; partial files removed"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("alexnet"), prog_name="alexnet")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or log lines.")
@click.pass_context
def cli(ctx, quiet):
    """AlexNet (Krizhevsky et al., 2012): DALI pipelines, a paper-exact trainer, fc7 retrieval."""
    ctx.obj = {"progress": not quiet}
    # Our own progress lines only; other libraries' loggers stay at their defaults.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("alexnet")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    if quiet:
        set_quiet(ctx)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@run_option
@click.option(
    "--top", type=POSITIVE, default=5, show_default=True, help="Classes to list per image."
)
@click.option(
    "--ten-crop/--no-ten-crop",
    default=False,
    show_default=True,
    help="Average the softmax of the ten crops (4 corners, centre, mirrors), as the paper tests.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Default: RUN/checkpoints/best.pt.",
)
@workers_option
@click.pass_context
def predict(ctx, images, run, top, ten_crop, as_json, checkpoint, workers):
    """What the network says each IMAGE is (files or folders): its top classes with their
    probabilities."""
    from alexnet.model.inference import load

    model = load(run, checkpoint or "best", workers=workers)  # skipped images are logged
    records = model.predict(images, top=top, ten_crop=ten_crop, progress=progress(ctx))
    if as_json:
        click.echo(json.dumps({"checkpoint": str(model.checkpoint), "images": records}, indent=1))
        return
    for r in records:
        click.echo(r["image"])
        for i, c in enumerate(r["top"], 1):
            named = c["class"] + ("" if c["class"] == c["class_id"] else f" ({c['class_id']})")
            click.echo(f"  {i}. {100 * c['probability']:5.1f}%  {named}")


@cli.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="An image folder to use instead of the embedded Fashion-MNIST photos.",
)
@click.option(
    "--run",
    "run",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEMO_RUN,
    show_default=True,
    help="The run folder to make (an interrupted demo continues where it stopped).",
)
@click.option(
    "--epochs", type=POSITIVE, default=6, show_default=True, help="Passes over the photos."
)
@click.option(
    "-b",
    "--batch-size",
    type=POSITIVE,
    default=32,
    show_default=True,
    help="Images per training batch.",
)
@click.option(
    "--queries",
    type=POSITIVE,
    default=3,
    show_default=True,
    help="Validation images to search for at the end.",
)
@click.pass_context
def demo(ctx, run, **options):
    """The whole chain on embedded photos (or --data DIR): prep, a short training run, the
    retrieval index, a few searches with a montage, and the retrieval evaluation."""
    from alexnet.demo import demo as run_demo
    from alexnet.pipeline import fashion_mnist
    from alexnet.retrieval.evaluate import format_table

    for stage, out in run_demo(run, progress=progress(ctx), **options):
        if stage == "photos":
            click.echo(
                f"demo photos: {out} (Fashion-MNIST, 10 classes, {fashion_mnist.TRAIN_PER_CLASS}"
                f" train + {fashion_mnist.VAL_PER_CLASS} validation each)"
            )
        elif stage == "prep":
            stages.print_prep(out)
        elif stage == "train":
            stages.print_training(run, out)
            stages.print_curve(run)
        elif stage == "index":
            print_index(out)
        elif stage == "search":
            from alexnet.retrieval.tables import search_table

            click.echo(search_table(out["result"], out["root"]))
            click.echo(f"montage: {out['montage']}")
        elif stage == "eval-retrieval":
            click.echo(format_table(out["result"]))
            click.echo(f"written: {out['path']}")
    click.echo(
        "\nnext:\n"
        f"  alexnet serve --run {run}                  # search in the browser\n"
        f"  alexnet search PHOTO.jpg --run {run}       # similar training photos\n"
        f"  alexnet predict PHOTO.jpg --run {run}      # what the network says it is\n"
        f"  alexnet eval --run {run}                   # top-1/top-5 error, ten-crop"
    )


register(cli)
stages.register(cli)
weights.register(cli)
verify.register(cli)


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:  # before a command started, or after it ended
        click.echo(interrupted(None), err=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
