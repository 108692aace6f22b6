"""`alexnet import-weights` and `alexnet export-onnx`: the published reference network in, a
run's network out (model/reference.py, model/onnx_io.py)."""

from __future__ import annotations

from pathlib import Path

import click

from alexnet.cli.options import run_option

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("import-weights")
@click.argument("file", type=EXISTING_FILE)
@click.option(
    "--run",
    "run",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The run folder to create; it then works with predict, search, index --images, eval "
    "--data, serve, export-onnx and train --init-checkpoint.",
)
@click.option(
    "--mean",
    type=EXISTING_FILE,
    default=None,
    help="The mean image the network was trained with: Caffe's imagenet_mean.binaryproto (BGR, "
    "3x256x256), a .npy of 256x256x3 RGB or 3x256x256 BGR. Default: ImageNet's channel mean "
    "(BGR 104.0, 116.7, 122.7).",
)
@click.option(
    "--labels",
    type=EXISTING_FILE,
    default=None,
    help="The class list, one line per output in order: Caffe's synset_words.txt "
    "('n01440764 tench, Tinca tinca'), or wnids alone (named from WordNet). Default: "
    "ILSVRC-2012's 1,000 wnids for a network of 1,000 classes, else class_0 ... class_N-1.",
)
@click.option(
    "--eval-protocol",
    type=click.Choice(["paper", "caffe"]),
    default=None,
    help="Test-time preprocessing. caffe (the default for Caffe files): the whole image "
    "squashed to 256x256, the crop at (256 - crop) // 2, as Caffe tested the network. paper "
    "(the default for ONNX files): the shorter side to 256, the central patch's centre crop.",
)
@click.option("--force", is_flag=True, help="Replace RUN if it is already a run.")
def import_weights_command(file, run, mean, labels, eval_protocol, force):
    """Make RUN from a published network: Caffe's bvlc_alexnet.caffemodel (either encoding)
    or the ONNX model zoo's bvlcalexnet-*.onnx. No dataset is needed.

    Every blob is checked against AlexNet's shapes and layer order (CaffeNet's order, pooling
    before LRN, is also read). Caffe's conventions are kept as the run's model settings:
    its LRN form, 227 crops with an unpadded conv1 (the ONNX file: 224 crops and pooling that
    rounds up), and conv1's input channels flipped from BGR so that images stay RGB."""
    from alexnet.model.reference import import_weights

    r = import_weights(
        file, run, mean=mean, labels=labels, force=force, eval_protocol=eval_protocol
    )
    s = r["settings"]
    click.echo(
        f"{file} ({r['format']}): {r['classes']} classes ({', '.join(r['names'])}, ...), "
        f"{s['crop']}x{s['crop']} crops, conv1 padding {s['conv1_padding']}, "
        f"{s['lrn_form']} LRN{', pooling before LRN' if s['pool_before_norm'] else ''}, "
        f"{r['mean']} mean, {r['eval_protocol']} test-time preprocessing"
    )
    click.echo(f"checkpoint: {r['checkpoint']}")
    click.echo(
        f"next: alexnet predict PHOTO.jpg --run {run}; "
        f"alexnet index --run {run} --images DIR --name photos"
    )


@click.command("export-onnx")
@run_option
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--output",
    type=click.Choice(["logits", "fc7"]),
    default="logits",
    show_default=True,
    help="What the graph returns: the class scores (before softmax), or the 4096-d fc7 "
    "features (after ReLU).",
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Default: RUN/checkpoints/best.pt.",
)
def export_onnx_command(run, out, output, checkpoint):
    """Write RUN's network to OUT as ONNX (opset 13, the standard LRN op, dynamic batch).
    Input "images": N x 3 x crop x crop RGB minus the run's mean (RUN/stats.npz)."""
    from alexnet.model.onnx_io import export_onnx

    r = export_onnx(run, out, output=output, checkpoint=checkpoint)
    click.echo(
        f"{r['path']}: images N x 3 x {r['crop']} x {r['crop']} (RGB minus the {r['mean']} "
        f"mean) -> {r['output']}"
    )


def register(group: click.Group) -> None:
    for command in (import_weights_command, export_onnx_command):
        group.add_command(command)
