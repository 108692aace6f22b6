"""`alexnet prep`, `train`, `eval`: parse, call the library (prepare, fit,
evaluate_checkpoint), print. `register(group)` adds them to a click group (cli/main.py's)."""

from __future__ import annotations

from pathlib import Path

import click

from alexnet.cli.options import (
    POSITIVE,
    PROBABILITY,
    config_options,
    given,
    progress,
    run_option,
    workers_option,
)
from alexnet.pipeline import defaults as P


@click.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
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
@click.option(
    "--reduced-decoding",
    is_flag=True,
    help="With --cache: decode JPEGs at least twice the 256 patch on both sides at a reduced "
    "size (libjpeg's DCT scaling; phone photos about 5x faster), for the statistics, the "
    "patches and the run's queries. Default: every image decoded in full (the paper's pixels).",
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
    from alexnet.pipeline.prep import prep_report

    r = prep_report(run)
    click.echo(
        f"{r['classes']} classes, {r['train']} training and {r['val']} validation images "
        f"({r['layout']}); manifest: {r['manifest']}"
    )
    if r["labels_from"]:
        click.echo(f"validation labels: {r['labels_from']}")
    if r["names_from"]:
        names = r["class_names"]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        click.echo(f"class names: {r['names_from']} ({shown})")
    if r["skipped"]:
        click.secho(
            f"skipped {len(r['skipped'])} unusable files, listed with reasons under "
            f'"skipped" in {r["manifest"]}',
            fg="yellow",
        )
        for s in r["skipped"][:5]:
            click.echo(f"  {s['path']}: {s['reason']}")
    click.echo(r["summary"])
    click.echo(f"statistics: {r['stats']} (readable: {r['stats_summary']})")
    if cache:
        click.echo(f"patch cache: {r['cache']}")


@click.command()
@run_option
@config_options()
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

    typed = {k: v for k, v in kw.items() if given(ctx, k)}
    resume = None if resume is None else Path(resume) if resume else True
    metrics = fit(run, resume=resume or False, progress=progress(ctx), **typed)
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


@click.command("eval")
@run_option
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
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


def register(group: click.Group) -> None:
    """Add `prep`, `train` and `eval` to `group`."""
    for command in (prep, train, eval_):
        group.add_command(command)
