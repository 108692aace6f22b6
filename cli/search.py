"""`alexnet index`, `search`, `eval-retrieval`: parse, call a Collection
(alexnet.retrieval.collection), print.

`register(group)` adds them, with `serve` (cli/serve.py) and `duplicates`
(cli/duplicates.py), to a click group (cli/main.py's `cli`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from alexnet.cli.options import (
    NON_NEGATIVE,
    POSITIVE,
    csv_option,
    given,
    milvus_option,
    progress,
    run_option,
    workers_option,
)
from alexnet.retrieval import defaults as R


def png_only(ctx, param, path: Path | None) -> Path | None:
    if path is not None and path.suffix.lower() != ".png":
        raise click.BadParameter(f"the contact sheet is a PNG: name it {path.stem}.png")
    return path


def check_bits(ctx, param, bits: int) -> int:
    problem = R.bits_problem(bits)  # the library's rule, checked before any work
    if problem:
        raise click.BadParameter(problem)
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
    "--codes",
    type=click.Choice(R.CODE_METHODS),
    default=R.CODES,
    show_default=True,
    help="How fc7 becomes binary codes: the autoencoder (label-aware when the training set "
    "has labels), or ITQ, PCA-sign or LSH projections. A change rebuilds the codes, not fc7.",
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
    "-b",
    "--batch-size",
    type=POSITIVE,
    default=R.FEATURE_BATCH,
    show_default=True,
    help="Images per batch for the fc7 features.",
)
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Index this folder of photos (any depth, any names) as a gallery instead of the "
    "training set, with the training set's autoencoder (and its code length); run again to "
    "add new and changed files and drop deleted ones.",
)
@click.option("--name", default=None, help="The gallery's name (default: the folder's name).")
@click.option(
    "--compact",
    is_flag=True,
    help="After the update, rewrite the gallery's feature file with only the rows of its "
    "current files (done anyway when more than half are dead); image ids change.",
)
@milvus_option
@workers_option
@click.pass_context
def index_command(
    ctx, run, bits, codes, approx_threshold, batch_size, images, name, compact, milvus, workers
):
    """Build RUN's retrieval index: fc7 features, autoencoder, binary codes, FAISS index.

    Each step is skipped when its output is current; a stale index is rebuilt. With
    --images DIR, index DIR as gallery NAME (RUN/galleries/NAME) with the training set's
    network and autoencoder; under torchrun the processes share the extraction.
    """
    from alexnet.retrieval.collection import collection

    if images is None and name is not None:
        raise click.BadParameter(
            "a gallery is made from a folder: add --images DIR", param_hint="--name"
        )
    if images is not None:
        name = name or images.resolve().name
        g = collection(run, name, workers=workers, milvus=milvus).update(
            images,
            bits=bits if given(ctx, "bits") else None,  # the training set's: refused here
            codes=codes if given(ctx, "codes") else None,
            approx_threshold=approx_threshold,
            batch_size=batch_size,
            progress=progress(ctx),
            compact=compact,
        )
        if g:  # the other torchrun processes return nothing to print
            for s in g["skipped"]:
                click.secho(f"skipped: {s['path']}: {s['reason']}", fg="yellow", err=True)
            click.echo(
                f"gallery {name}: {g['count']} images ({g['added']} added, {g['updated']} "
                f"updated, {g['removed']} removed, {len(g['skipped'])} skipped); {g['bits']}-bit "
                f"codes; {g['kind']} index"
                + (f" (nprobe {g['nprobe']} of {g['lists']} lists)" if "nprobe" in g else "")
                + f"; written: {g['path']}"
            )
            if g.get("code_choice"):
                print_choice(g["code_choice"])
        if g.get("compacted"):
            print_compacted(g["compacted"], compact)
        return

    meta = collection(run, workers=workers, milvus=milvus).update(
        bits=bits,
        codes=codes,
        approx_threshold=approx_threshold,
        batch_size=batch_size,
        progress=progress(ctx),
    )
    if meta:  # the other torchrun processes have nothing to say
        print_index(meta)


def print_compacted(c: dict, asked: bool) -> None:
    why = "" if asked else " (more than half of its rows were dead)"
    click.echo(
        f"compacted{why}: {c['rows_before']} feature rows -> {c['rows_after']}, "
        f"{c['bytes_freed'] / 2**20:.2f} MiB freed; image ids were renumbered"
    )


def print_index(meta: dict) -> None:
    r = meta["autoencoder_report"]
    mse = r["reconstruction_mse"]
    probe = f" (nprobe {meta['nprobe']} of {meta['lists']} lists)" if "nprobe" in meta else ""
    click.echo(
        f"{meta['kind']} index{probe} of {meta['count']} images, {meta['bits']}-bit "
        f"{meta.get('code_method', 'autoencoder')} codes ({meta['bits'] // 8} bytes per "
        f"image), recall@10 {meta['recall_at_10']:.3f}; "
        + ("" if mse is None else f"reconstruction MSE {mse:.4f} (standardised), ")
        + f"mean |bit balance - 0.5| {r['mean_abs_balance_offset']:.3f}, "
        f"{r['bits_always_on_or_off']} constant bits"
    )
    if meta.get("code_choice"):
        print_choice(meta["code_choice"])
    click.echo(f"written: {meta['path']}")


def print_choice(choice: dict) -> None:
    from alexnet.retrieval.codes import describe_choice

    click.echo(describe_choice(choice))


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@run_option
@click.option(
    "-k", "--top-k", "k", type=POSITIVE, default=R.K, show_default=True, help="Results per query."
)
@click.option(
    "--rerank",
    type=NON_NEGATIVE,
    default=R.SEARCH_RERANK,
    show_default=True,
    help="Re-rank the R nearest by Hamming distance by float fc7 distance (0: off).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--jsonl",
    is_flag=True,
    help="Print one JSON line per query as each batch is answered (for large folders).",
)
@click.option(
    "--gallery", default=None, help="Search this gallery (alexnet index --images) instead."
)
@click.option(
    "--montage",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=png_only,
    help="Write a PNG contact sheet (FILE.png) of each query and its results.",
)
@click.option(
    "--absolute", is_flag=True, help="Print absolute paths (default: relative to the dataset)."
)
@csv_option
@milvus_option
@workers_option
@click.pass_context
def search(
    ctx, images, run, k, rerank, as_json, jsonl, gallery, montage, absolute, csv, milvus, workers
):
    """The training images (or --gallery's) most similar to each IMAGE (files or folders)."""
    from alexnet.retrieval.collection import collection

    if jsonl and (as_json or montage or csv):
        raise click.BadParameter("use it without --json, --montage and --csv", param_hint="--jsonl")
    c = collection(run, gallery, workers=workers, milvus=milvus)
    if jsonl:  # read, searched and printed a batch at a time; skipped images are logged
        for row in c.stream(images, k=k, rerank=rerank, progress=progress(ctx)):
            click.echo(json.dumps(row))
        return
    result = c.search(images, k=k, rerank=rerank, progress=progress(ctx))
    if as_json:
        click.echo(json.dumps({"run": str(run), **result}, indent=1))
    else:
        from alexnet.retrieval.tables import search_table

        click.echo(search_table(result, None if absolute else c.root))
    if montage:
        from alexnet.retrieval.montage import make_montage

        unit = "fc7" if rerank else "bits"
        click.echo(f"montage: {make_montage(result['queries'], montage, unit=unit)}", err=as_json)
    if csv:
        from alexnet.retrieval.tables import SEARCH_COLUMNS, search_rows, write_csv

        click.echo(f"csv: {write_csv(csv, search_rows(result), SEARCH_COLUMNS)}", err=as_json)


@click.command("eval-retrieval")
@run_option
@click.option(
    "-k", "--top-k", "k", type=POSITIVE, default=R.K, show_default=True, help="Precision at k."
)
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
@workers_option
@click.pass_context
def eval_retrieval(ctx, run, k, rerank, pixel_size, max_queries, workers):
    """Validation images as queries against the training set: precision@k and mAP of binary
    codes, codes + re-rank, ITQ / PCA-sign / LSH codes of as many bits, float fc7 and raw
    pixels; writes RUN/eval_retrieval.json."""
    from alexnet.retrieval.collection import collection
    from alexnet.retrieval.evaluate import format_table

    train = collection(run, workers=workers).open(progress=progress(ctx))
    result = train.evaluate(
        k=k,
        rerank_top=rerank,
        pixel_size=int(pixel_size),
        max_queries=max_queries,
        progress=progress(ctx),
    )
    click.echo(format_table(result))
    click.echo(f"written: {train.run.eval_retrieval}")


def register(group: click.Group) -> None:
    """Add `index`, `search`, `eval-retrieval`, `serve` and `duplicates` to `group`."""
    from alexnet.cli.duplicates import duplicates
    from alexnet.cli.serve import serve

    for command in (index_command, search, eval_retrieval, serve, duplicates):
        group.add_command(command)
