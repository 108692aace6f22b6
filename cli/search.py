"""`alexnet index`, `search`, `eval-retrieval`: parse, call alexnet.retrieval, print.

`register(group)` adds the three commands to a click group (cli/main.py's `cli`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from alexnet.cli.options import NON_NEGATIVE, POSITIVE, progress, run_option
from alexnet.retrieval import defaults as R


def check_bits(ctx, param, bits: int) -> int:
    if bits % 8 or not R.MIN_BITS <= bits <= R.MAX_BITS:
        raise click.BadParameter(f"must be a multiple of 8 from {R.MIN_BITS} to {R.MAX_BITS}")
    return bits


@click.command("index")
@run_option
@click.option(
    "--bits",
    type=int,
    default=R.BITS,
    show_default=True,
    callback=check_bits,
    help=f"Binary code length: a multiple of 8 from {R.MIN_BITS} to {R.MAX_BITS}.",
)
@click.option(
    "--approx-threshold",
    type=POSITIVE,
    default=R.APPROX_THRESHOLD,
    show_default=True,
    help="Above this many training images (and without a GPU) use an approximate "
    "IVF index instead of exact Hamming search.",
)
@click.option(
    "--batch-size",
    type=POSITIVE,
    default=R.FEATURE_BATCH,
    show_default=True,
    help="Images per batch for the fc7 features.",
)
@click.pass_context
def index_command(ctx, run, bits, approx_threshold, batch_size):
    """Build RUN's retrieval index: fc7 features, autoencoder, binary codes, FAISS index.

    Each step is skipped when its output is current; a stale index is rebuilt.
    """
    from alexnet.retrieval.api import index_run

    meta = index_run(
        run,
        bits=bits,
        approx_threshold=approx_threshold,
        batch_size=batch_size,
        progress=progress(ctx),
    )
    r = meta["autoencoder_report"]
    click.echo(
        f"{meta['kind']} index of {meta['count']} images, {meta['bits']}-bit codes "
        f"({meta['bits'] // 8} bytes per image), recall@10 {meta['recall_at_10']:.3f}; "
        f"autoencoder reconstruction MSE {r['reconstruction_mse']:.4f} (standardised), "
        f"mean |bit balance - 0.5| {r['mean_abs_balance_offset']:.3f}, "
        f"{r['bits_always_on_or_off']} constant bits"
    )
    click.echo(f"written: {meta['path']}")


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@run_option
@click.option("-k", "k", type=POSITIVE, default=R.K, show_default=True, help="Results per query.")
@click.option(
    "--rerank",
    type=NON_NEGATIVE,
    default=R.SEARCH_RERANK,
    show_default=True,
    help="Re-rank the R nearest by Hamming distance by float fc7 distance (0: off).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--montage",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a PNG contact sheet of each query and its results.",
)
@click.pass_context
def search(ctx, images, run, k, rerank, as_json, montage):
    """The training images most similar to each IMAGE (files or folders of images)."""
    from alexnet.retrieval.api import image_files, open_index
    from alexnet.retrieval.api import search as run_search

    files, skipped = image_files(images)
    for path, why in skipped:
        click.secho(f"skipped: {path} {why}", fg="yellow", err=True)
    ri = open_index(run, progress=progress(ctx))
    result = run_search(ri, files, k=k, rerank_top=rerank)
    if as_json:
        click.echo(json.dumps({"run": str(run), **result}, indent=1))
    else:
        for row in result["queries"]:
            click.echo(f"query: {row['query']}")
            click.echo(
                f"{'rank':>5}{'hamming':>9}"
                + (f"{'fc7 L2':>10}" if rerank else "")
                + "  class  path"
            )
            for res in row["results"]:
                click.echo(
                    f"{res['rank']:5d}{res['hamming']:9d}"
                    + (f"{res['distance']:10.3f}" if rerank else "")
                    + f"  {res['class']}  {res['path']}"
                )
    if montage:
        from alexnet.retrieval.montage import make_montage

        click.echo(f"montage: {make_montage(result['queries'], montage)}", err=as_json)


@click.command("eval-retrieval")
@run_option
@click.option("-k", "k", type=POSITIVE, default=R.K, show_default=True, help="Precision at k.")
@click.option(
    "--rerank",
    type=POSITIVE,
    default=R.EVAL_RERANK,
    show_default=True,
    help="Shortlist length for the Hamming + fc7 re-rank mode.",
)
@click.option(
    "--pixel-size",
    type=click.Choice(["16", "32", "64", "128", "256"]),
    default=str(R.PIXEL_SIZE),
    show_default=True,
    help="Side the 256x256 centre patches are averaged down to for the raw-pixel mode.",
)
@click.option(
    "--max-queries",
    type=POSITIVE,
    default=None,
    help="Use a seeded sample of this many validation images (default: all).",
)
@click.pass_context
def eval_retrieval(ctx, run, k, rerank, pixel_size, max_queries):
    """Validation images as queries against the training set: precision@k and mAP of binary
    codes, codes + re-rank, float fc7 and raw pixels; writes RUN/eval_retrieval.json."""
    from alexnet.retrieval.api import open_index
    from alexnet.retrieval.evaluate import evaluate_retrieval, format_table, write_result

    ri = open_index(run, progress=progress(ctx))
    result = evaluate_retrieval(
        ri,
        k=k,
        rerank_top=rerank,
        pixel_size=int(pixel_size),
        max_queries=max_queries,
        progress=progress(ctx),
    )
    click.echo(format_table(result))
    click.echo(f"written: {write_result(result, run)}")


def register(group: click.Group) -> None:
    """Add `index`, `search` and `eval-retrieval` to `group`."""
    for command in (index_command, search, eval_retrieval):
        group.add_command(command)
