"""`alexnet`: prep, train, eval, demo (+ index, search, eval-retrieval from cli/search.py).

Each command parses, calls the library, prints. The library is imported inside the commands,
so `alexnet --help` does not load torch, DALI or faiss."""

from __future__ import annotations

import json
import logging
from importlib.metadata import version
from pathlib import Path

import click

from alexnet.cli import weights
from alexnet.cli.options import (
    AMOUNT,
    POSITIVE,
    PROBABILITY,
    RATE,
    progress,
    quiet_option,
    run_option,
    set_quiet,
    workers_option,
)
from alexnet.cli.search import eval_retrieval, index_command, register, search
from alexnet.model.config import INIT_PRESETS, TrainConfig
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

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AlexnetError as e:
            click.secho(f"error: {e}", fg="red", err=True)
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
    "decompression-bomb limit).",
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
    run_prep(data, run, progress=progress(ctx), num_threads=workers, **options)


def run_prep(data: Path, run: Path, **options) -> None:
    from alexnet.pipeline.layout import RunPaths
    from alexnet.pipeline.prep import prepare
    from alexnet.pipeline.stats import format_summary

    paths = RunPaths(run)
    manifest, stats = prepare(data, run, **options)
    n = {s: len(manifest["files"].positions(s)) for s in ("train", "val")}
    click.echo(
        f"{len(manifest['classes'])} classes, {n['train']} training and {n['val']} validation "
        f"images ({manifest['layout']}); manifest: {paths.manifest}"
    )
    if manifest["labels_from"]:
        click.echo(f"validation labels: {manifest['labels_from']}")
    if manifest["names_from"]:
        names = manifest["class_names"]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        click.echo(f"class names: {manifest['names_from']} ({shown})")
    if manifest["skipped"]:
        click.secho(
            f"skipped {len(manifest['skipped'])} unusable files, listed with reasons under "
            f'"skipped" in {paths.manifest}',
            fg="yellow",
        )
        for s in manifest["skipped"][:5]:
            click.echo(f"  {s['path']}: {s['reason']}")
    click.echo(format_summary(stats))
    click.echo(f"statistics: {paths.stats} (readable: {paths.stats_summary})")
    if options.get("cache"):
        click.echo(f"patch cache: {paths.cache_patches}")


def train_options(f):
    d = TrainConfig()
    options = [
        click.option(
            "--epochs",
            type=POSITIVE,
            default=d.epochs,
            show_default=True,
            help="Passes over the data.",
        ),
        click.option(
            "-b",
            "--batch-size",
            type=POSITIVE,
            default=d.batch_size,
            show_default=True,
            help="Images per batch and process (the global batch is this times torchrun's "
            "processes).",
        ),
        click.option(
            "--lr",
            type=RATE,
            default=d.lr,
            show_default=True,
            help="Learning rate for a global batch of 128; the rate used is lr x global "
            "batch / 128.",
        ),
        click.option(
            "--warmup-epochs",
            type=AMOUNT,
            default=d.warmup_epochs,
            show_default=True,
            help="Ramp the rate up linearly over this many epochs (recommended above a global "
            "batch of 1024).",
        ),
        click.option(
            "--init",
            type=click.Choice(list(INIT_PRESETS)),
            default=d.init,
            show_default=True,
            help="Initialisation preset: paper (section 5), caffe (bvlc_alexnet), kaiming.",
        ),
        click.option(
            "--bias-lr-mult",
            type=AMOUNT,
            default=None,
            help="Biases' learning rate relative to the weights' (default: the preset's; "
            "caffe 2, else 1).",
        ),
        click.option(
            "--bias-decay/--no-bias-decay",
            default=None,
            help="Weight decay on biases too (default: the preset's; caffe off, else on).",
        ),
        click.option(
            "--input-scale",
            type=click.Choice(["pixels", "unit"]),
            default=d.input_scale,
            show_default=True,
            help="What the network sees: mean-subtracted 0-255 pixels (paper), or those "
            "divided by the channel std.",
        ),
        click.option(
            "--optimizer",
            type=click.Choice(["paper", "torch"]),
            default=d.optimizer,
            show_default=True,
            help="The paper's update rule, or PyTorch's SGD form.",
        ),
        click.option(
            "--plateau-on",
            type=click.Choice(["loss", "error"]),
            default=d.plateau_on,
            show_default=True,
            help="Validation metric whose plateau drops the rate 10x (the paper: error).",
        ),
        click.option(
            "--min-delta",
            type=AMOUNT,
            default=d.min_delta,
            show_default=True,
            help="How much the watched metric must improve to count (loss in nats, error as "
            "a fraction).",
        ),
        click.option(
            "--patience",
            type=POSITIVE,
            default=d.patience,
            show_default=True,
            help="Epochs without improvement before the rate drops 10x (never before a first "
            "improvement at the current rate).",
        ),
        click.option(
            "--mean",
            type=click.Choice(["image", "channel"]),
            default=d.mean,
            show_default=True,
            help="Subtract the mean image (paper) or the channel mean.",
        ),
        click.option(
            "--lighting-std",
            type=AMOUNT,
            default=d.lighting_std,
            show_default=True,
            help="Std of the PCA lighting alphas (in eigenvalue units); 0 turns it off.",
        ),
        click.option(
            "--columns",
            type=click.Choice(["1", "2"]),
            default=str(d.columns),
            show_default=True,
            help="2: the paper's grouped network; 1: one column.",
        ),
        click.option(
            "--lrn/--no-lrn",
            default=d.lrn,
            show_default=True,
            help="Local response normalisation after conv1 and conv2.",
        ),
        click.option(
            "--dropout",
            type=PROBABILITY,
            default=d.dropout,
            show_default=True,
            help="Dropout probability in fc6 and fc7.",
        ),
        click.option(
            "--seed",
            type=int,
            default=d.seed,
            show_default=True,
            help="Seed of the initialisation, order and augmentation.",
        ),
        click.option(
            "-j",
            "--workers",
            "--threads",
            "num_threads",
            type=POSITIVE,
            default=None,
            help="DALI CPU threads for decoding (default: all cores).",
        ),
        click.option(
            "--momentum",
            type=AMOUNT,
            default=d.momentum,
            show_default=True,
            help="SGD momentum.",
        ),
        click.option(
            "--wd",
            "--weight-decay",
            "weight_decay",
            type=AMOUNT,
            default=d.weight_decay,
            show_default=True,
            help="Weight decay (inside the velocity, as the paper writes it).",
        ),
        click.option(
            "--keep-every",
            type=click.IntRange(min=0),
            default=d.keep_every,
            show_default=True,
            help="Also keep checkpoints/epoch_N.pt every N epochs (0: last.pt and best.pt only).",
        ),
        click.option(
            "--tensorboard/--no-tensorboard",
            default=d.tensorboard,
            show_default=True,
            help="Also write the epoch scalars to RUN/tensorboard (pip install "
            "'alexnet[tensorboard]').",
        ),
        click.option(
            "--init-checkpoint",
            type=click.Path(exists=True),
            default=None,
            help="Start from this checkpoint's weights, or a run's best.pt (fine-tuning, e.g. "
            "from `alexnet import-weights`): its network settings are kept; fc8 starts afresh "
            "when its class count differs.",
        ),
        click.option(
            "--train-layers",
            default=d.train_layers,
            help="Train only these layers, e.g. fc6,fc7,fc8; the others stay frozen (default: "
            "all).",
        ),
        click.option(
            "--pretrained-lr-mult",
            type=AMOUNT,
            default=d.pretrained_lr_mult,
            show_default=True,
            help="Learning rate of the layers taken from --init-checkpoint, relative to the "
            "others'.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def make_config(ctx: click.Context, resume_from: Path | None, **kw) -> TrainConfig:
    """The options as a TrainConfig; on resume, the checkpoint's settings except those given
    again on this command line."""
    kw["columns"] = int(kw["columns"])
    if resume_from is None:
        return TrainConfig(**kw)
    from dataclasses import replace

    from alexnet.model.checkpoint import saved_config

    given = {
        k: v
        for k, v in kw.items()
        if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT
    }
    return replace(saved_config(resume_from), **given)


@cli.command()
@run_option
@train_options
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
    from alexnet.pipeline.layout import RunPaths

    source = None if resume is None else Path(resume) if resume else RunPaths(run).last
    config = make_config(ctx, source, **kw)
    metrics = fit(run, config, resume=source or False, progress=progress(ctx))
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
    from alexnet.model.train import evaluate_checkpoint
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
    from alexnet.model.inference import load_trained
    from alexnet.model.inference import predict as classify
    from alexnet.pipeline.dataset import image_files

    files, skipped = image_files(images)
    for path, why in skipped:
        click.secho(f"skipped: {path} {why}", fg="yellow", err=True)
    trained = load_trained(run, checkpoint, check_files=False, workers=workers)
    records = classify(trained, files, top=top, ten_crop=ten_crop, progress=progress(ctx))
    if as_json:
        click.echo(json.dumps({"checkpoint": str(trained.checkpoint), "images": records}, indent=1))
        return
    for r in records:
        click.echo(r["image"])
        for i, c in enumerate(r["top"], 1):
            click.echo(f"  {i}. {100 * c['probability']:5.1f}%  {c['class']} ({c['class_id']})")


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
    default=Path("runs/demo"),
    show_default=True,
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
def demo(ctx, data, run, epochs, batch_size, queries):
    """The whole chain on embedded photos (or --data DIR): prep, a short training run, the
    retrieval index, a few searches with a montage, and the retrieval evaluation."""
    from alexnet.model.train import fit
    from alexnet.pipeline import dataset, fashion_mnist
    from alexnet.pipeline.layout import RunPaths

    paths = RunPaths(run)
    show = progress(ctx)
    if data is None:
        data = fashion_mnist.build(paths.demo_data)
        click.echo(
            f"demo photos: {data} (Fashion-MNIST, 10 classes, {fashion_mnist.TRAIN_PER_CLASS} "
            f"train + {fashion_mnist.VAL_PER_CLASS} validation each)"
        )
    run_prep(data, run, progress=show)
    config = TrainConfig(epochs=epochs, batch_size=batch_size)
    metrics = fit(run, config, resume=paths.last.exists(), progress=show)
    print_training(run, metrics)
    print_curve(run)
    ctx.invoke(index_command, run=run)
    val_files, _ = dataset.split_files(dataset.load_manifest(run), "val")
    picks = val_files[:: max(1, len(val_files) // queries)][:queries]
    ctx.invoke(search, images=[Path(p) for p in picks], run=run, k=5, montage=paths.montage)
    ctx.invoke(eval_retrieval, run=run)
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


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:  # before a command could install its own handler
        click.echo("interrupted", err=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
