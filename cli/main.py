"""`alexnet`: prep, train, eval, demo (+ index, search, eval-retrieval from cli/search.py).

Each command parses, calls the library, prints. The library is imported inside the commands,
so `alexnet --help` does not load torch, DALI or faiss."""

from __future__ import annotations

import json
import logging
from importlib.metadata import version
from pathlib import Path

import click
from click.core import ParameterSource

from alexnet.cli import verify, weights
from alexnet.cli.options import (
    POSITIVE,
    PROBABILITY,
    config_options,
    progress,
    quiet_option,
    run_option,
    set_quiet,
    workers_option,
)
from alexnet.cli.search import print_index, register, search_table
from alexnet.demo import DEMO_RUN
from alexnet.model.config import TrainConfig
from alexnet.pipeline import defaults as P
from alexnet.pipeline.errors import AlexnetError


class Group(click.Group):
    """Turns AlexnetError into one line on stderr and exit code 2, and Ctrl-C into exit code
    130 (as the shell reports it), without a traceback. Every command it holds also takes
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
            click.secho(f"error: {e.render(self.flag_namer(ctx, command))}", fg="red", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:  # Ctrl-C outside the trainer's own handler
            click.echo("interrupted", err=True)
            ctx.exit(130)


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
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--run",
    "run",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The run folder to create or update (default: runs/<name of DATA>).",
)
@click.option(
    "--val-fraction",
    type=PROBABILITY,
    default=P.VAL_FRACTION,
    show_default=True,
    help="Share of each class held out for validation when DATA has no train/val folders.",
)
@click.option(
    "--seed", type=int, default=P.SPLIT_SEED, show_default=True, help="Seed of the train/val split."
)
@click.option(
    "--min-size",
    type=POSITIVE,
    default=P.MIN_SIZE,
    show_default=True,
    help="Images with a shorter side below this many pixels are skipped.",
)
@click.option(
    "--max-pixels",
    type=POSITIVE,
    default=P.MAX_PIXELS,
    show_default=True,
    help="Images with more pixels (width x height) than this are skipped (default: PIL's "
    "decompression-bomb limit; PIL itself refuses twice that).",
)
@click.option(
    "--val-labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Labels of the images directly in DATA/val: a CSV (file, label) or 'filename label' "
    "lines, the label being a class folder's name. ImageNet's LOC_val_solution.csv or devkit "
    "beside the data is found without it.",
)
@click.option(
    "--class-names",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Readable class names: 'id name' lines (or a JSON object). Found without it: "
    "ImageNet's LOC_synset_mapping.txt or devkit, or classes.json at DATA's root.",
)
@click.option(
    "-b",
    "--batch-size",
    type=POSITIVE,
    default=P.PREP_BATCH,
    show_default=True,
    help="Images per batch of the statistics pass.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace the manifest and statistics of a run trained or indexed on other data.",
)
@click.option(
    "--cache",
    is_flag=True,
    help="Also keep every image's decoded 256x256 patch in RUN/cache (196,608 bytes an "
    "image); training and evaluation then read it instead of decoding the images.",
)
@workers_option
@click.pass_context
def prep(ctx, data, run, workers, **options):
    """Scan and validate DATA, then compute the mean image and RGB PCA statistics."""
    if run is None:
        from alexnet.pipeline.layout import RUNS

        run = RUNS / Path(data).resolve().name
        click.echo(f"run: {run}", err=True)
    run_prep(data, run, progress=progress(ctx), workers=workers, **options)


def run_prep(data: Path, run: Path, **options) -> None:
    from alexnet.pipeline.prep import prepare

    print_prep(prepare(data, run, **options), cache=options.get("cache", False))


def print_prep(run: Path, cache: bool = False) -> None:
    from alexnet.pipeline.layout import RunPaths
    from alexnet.pipeline.manifest import load_manifest
    from alexnet.pipeline.stats import format_summary, load_stats

    paths = RunPaths(run)
    manifest = load_manifest(run, check_files=False)
    stats = load_stats(run, manifest.fingerprint)
    n = {s: len(manifest.files.positions(s)) for s in ("train", "val")}
    click.echo(
        f"{len(manifest.classes)} classes, {n['train']} training and {n['val']} validation "
        f"images ({manifest.layout}); manifest: {paths.manifest}"
    )
    if manifest.labels_from:
        click.echo(f"validation labels: {manifest.labels_from}")
    if manifest.names_from:
        names = manifest.class_names
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        click.echo(f"class names: {manifest.names_from} ({shown})")
    if manifest.skipped:
        click.secho(
            f"skipped {len(manifest.skipped)} unusable files, listed with reasons under "
            f'"skipped" in {paths.manifest}',
            fg="yellow",
        )
        for s in manifest.skipped[:5]:
            click.echo(f"  {s['path']}: {s['reason']}")
    click.echo(format_summary(stats))
    click.echo(f"statistics: {paths.stats} (readable: {paths.stats_summary})")
    if cache:
        click.echo(f"patch cache: {paths.cache_patches}")


@cli.command()
@run_option
@config_options(TrainConfig)
@click.option(
    "--resume",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[PATH]",
    help="Continue a run from a checkpoint (default RUN/checkpoints/last.pt), with its "
    "settings unless given again.",
)
@click.pass_context
def train(ctx, run, resume, **kw):
    """Train AlexNet on RUN's data (after `alexnet prep`), with checkpoints and curves.

    --batch-size is per process: under torchrun the global batch is it times the processes,
    and the learning rate used is --lr x global batch / 128."""
    from alexnet.model.train import fit

    given = {
        k: v for k, v in kw.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT
    }
    resume = None if resume is None else Path(resume) if resume else True
    metrics = fit(run, resume=resume or False, progress=progress(ctx), **given)
    print_training(run, metrics)


def print_training(run: Path, metrics: dict) -> None:
    from alexnet.pipeline.layout import RunPaths

    paths = RunPaths(run)
    if "top1_error" in metrics:
        click.echo(
            f"epoch {metrics['epoch']}: top-1 error {100 * metrics['top1_error']:.2f}%, "
            f"top-5 error {100 * metrics['top5_error']:.2f}% (centre crop)"
        )
    if "ten_crop_top1_error" in metrics:
        click.echo(
            f"ten-crop: top-1 error {100 * metrics['ten_crop_top1_error']:.2f}%, "
            f"top-5 error {100 * metrics['ten_crop_top5_error']:.2f}%"
        )
    click.echo(
        f"checkpoints: {paths.checkpoints}; metrics: {paths.metrics}; curves: {paths.curves}"
    )


@cli.command("eval")
@run_option
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Default: RUN/checkpoints/best.pt.",
)
@click.option(
    "--ten-crop/--no-ten-crop",
    default=True,
    show_default=True,
    help="Also the paper's ten-crop test: 4 corners and the centre, and their mirrors.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Evaluate on this labelled folder instead (DATA/<class id>/<image>, or its val/), "
    "folders matched to the run's classes by name: e.g. ILSVRC-2012 val in wnid folders.",
)
@workers_option
@click.pass_context
def eval_(ctx, run, checkpoint, ten_crop, data, workers):
    """Top-1 and top-5 error of a checkpoint on the validation set; writes RUN/eval.json."""
    from alexnet.model.evaluate import evaluate_checkpoint
    from alexnet.pipeline.layout import RunPaths

    result = evaluate_checkpoint(
        run, checkpoint, ten_crop=ten_crop, progress=progress(ctx), workers=workers, data=data
    )
    click.echo(f"{result['checkpoint']} (epoch {result['epoch']})")
    click.echo(f"{'':10}{'top-1 error':>14}{'top-5 error':>14}{'images':>8}")
    for key, name in (("centre", "centre"), ("ten_crop", "ten-crop")):
        if key in result:
            r = result[key]
            click.echo(
                f"{name:10}{100 * r['top1_error']:13.2f}%{100 * r['top5_error']:13.2f}%"
                f"{r['images']:8d}"
            )
    chance = result["chance"]
    click.echo(
        f"{'chance':10}{100 * chance['top1_error']:13.2f}%{100 * chance['top5_error']:13.2f}%"
    )
    which = "ten-crop" if ten_crop else "centre crop"
    click.echo(f"hardest classes ({which} top-1 error; all of them in the file below):")
    for c in result["classes"][:5]:
        click.echo(
            f"{100 * c['top1_error']:8.2f}%  {c['class']} ({c['class_id']}, {c['images']} images)"
        )
    click.echo(f"written: {RunPaths(run).eval}")


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
    type=click.Path(dir_okay=False, path_type=Path),
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
            print_prep(out)
        elif stage == "train":
            print_training(run, out)
            print_curve(run)
        elif stage == "index":
            print_index(out)
        elif stage == "search":
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


def print_curve(run: Path) -> None:
    """The learning curve as a table, beside the PNG that plots it."""
    from alexnet.model.metrics import read_metrics
    from alexnet.pipeline.layout import RunPaths

    click.echo(f"{'epoch':>5}{'loss':>9}{'top-1 err':>11}{'top-5 err':>11}{'lr':>9}{'img/s':>8}")
    for m in read_metrics(run):
        click.echo(
            f"{m['epoch']:5d}{m['loss']:9.4f}{100 * m['top1_error']:10.2f}%"
            f"{100 * m['top5_error']:10.2f}%{m['lr']:9.2g}{m['images_per_s']:8.1f}"
        )
    click.echo(f"learning curve: {RunPaths(run).curves}")


register(cli)
weights.register(cli)
verify.register(cli)


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:  # before a command could install its own handler
        click.echo("interrupted", err=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
