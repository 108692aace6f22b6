"""`alexnet index`, `search`, `eval-retrieval`: parse, call alexnet.retrieval, print.

`register(group)` adds the three commands to a click group (cli/main.py's `cli`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from alexnet.cli.options import run_option


def _progress(ctx: click.Context) -> bool:
    return bool((ctx.find_root().obj or {}).get("progress", True))


def _open_index(net, run: Path, progress: bool):
    """RUN's index, built first (saying so) when there is none; a stale one is refused."""
    from alexnet.retrieval.index import build_run_index, index_problem, open_run_index

    if index_problem(run, net.source) == "missing":
        click.echo(
            f"no index in {run / 'index'} yet: building it now (fc7 features of the "
            "training set, autoencoder, index); later searches reuse it",
            err=True,
        )
        build_run_index(net, run, progress=progress)
    return open_run_index(net, run)


@click.command("index")
@run_option
@click.option(
    "--bits",
    type=int,
    default=64,
    show_default=True,
    help="Binary code length: a multiple of 8 from 32 to 256.",
)
@click.option(
    "--approx-threshold",
    type=int,
    default=200_000,
    show_default=True,
    help="Above this many training images (and without a GPU) use an approximate "
    "HNSW index instead of exact Hamming search.",
)
@click.option(
    "--batch-size",
    type=int,
    default=64,
    show_default=True,
    help="Images per batch for the fc7 features.",
)
@click.pass_context
def index_command(ctx, run, bits, approx_threshold, batch_size):
    """Build RUN's retrieval index: fc7 features, autoencoder, binary codes, FAISS index.

    Each step is skipped when its output is current; a stale index is rebuilt.
    """
    from alexnet.retrieval.autoencoder import AutoencoderConfig
    from alexnet.retrieval.features import load_network
    from alexnet.retrieval.index import build_run_index, index_path, index_problem

    AutoencoderConfig(bits=bits)  # refuse a bad --bits before any work
    net = load_network(run)
    problem = index_problem(run, net.source)
    if problem not in (None, "missing"):
        click.echo(f"rebuilding the index: {problem}", err=True)
    meta = build_run_index(
        net,
        run,
        bits=bits,
        approx_threshold=approx_threshold,
        batch_size=batch_size,
        progress=_progress(ctx),
    )
    r = meta["autoencoder_report"]
    click.echo(
        f"{meta['kind']} index of {meta['count']} images, {meta['bits']}-bit codes "
        f"({meta['bits'] // 8} bytes per image), recall@10 {meta['recall_at_10']:.3f}; "
        f"autoencoder reconstruction MSE {r['reconstruction_mse']:.4f} (standardised), "
        f"mean |bit balance - 0.5| {r['mean_abs_balance_offset']:.3f}, "
        f"{r['bits_always_on_or_off']} constant bits"
    )
    click.echo(f"written: {index_path(run)}")


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@run_option
@click.option("-k", "k", type=int, default=10, show_default=True, help="Results per query.")
@click.option(
    "--rerank",
    type=int,
    default=0,
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
    from alexnet.pipeline.dataset import split_files
    from alexnet.retrieval.autoencoder import encode
    from alexnet.retrieval.features import image_files, load_network, query_features
    from alexnet.retrieval.index import hamming

    files = image_files(images)
    net = load_network(run)
    ri = _open_index(net, run, _progress(ctx))
    ri.check_k(k)
    vectors = query_features(net, files)
    D, I = ri.query(vectors, k, rerank)
    codes = encode(ri.autoencoder, vectors)
    db_paths, db_labels = split_files(net.manifest, "train")  # index ids are positions here
    classes = net.manifest["classes"]
    rows = []
    for q, file in enumerate(files):
        ham = hamming(codes[q : q + 1], ri.codes[I[q]])[0]
        results = [
            {
                "rank": r + 1,
                "id": int(i),
                "path": db_paths[i],
                "class": classes[db_labels[i]],
                "hamming": int(ham[r]),
                "distance": float(D[q, r]),
            }
            for r, i in enumerate(I[q])
        ]
        rows.append({"query": file, "results": results})
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run": str(run),
                    "k": k,
                    "rerank": rerank,
                    "distance": "fc7 euclidean" if rerank else "hamming",
                    "queries": rows,
                },
                indent=1,
            )
        )
    else:
        for row in rows:
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

        click.echo(f"montage: {make_montage(rows, montage)}", err=as_json)


@click.command("eval-retrieval")
@run_option
@click.option("-k", "k", type=int, default=10, show_default=True, help="Precision at k.")
@click.option(
    "--rerank",
    type=int,
    default=100,
    show_default=True,
    help="Shortlist length for the Hamming + fc7 re-rank mode.",
)
@click.option(
    "--pixel-size",
    type=click.Choice(["16", "32", "64", "128", "256"]),
    default="32",
    show_default=True,
    help="Side the 256x256 centre patches are averaged down to for the raw-pixel mode.",
)
@click.option(
    "--max-queries",
    type=int,
    default=None,
    help="Use a seeded sample of this many validation images (default: all).",
)
@click.pass_context
def eval_retrieval(ctx, run, k, rerank, pixel_size, max_queries):
    """Validation images as queries against the training set: precision@k and mAP of binary
    codes, codes + re-rank, float fc7 and raw pixels; writes RUN/eval_retrieval.json."""
    from alexnet.retrieval.evaluate import evaluate_retrieval, format_table, write_result
    from alexnet.retrieval.features import load_network

    if k < 1:
        raise click.BadParameter("must be at least 1", param_hint="-k")
    net = load_network(run)
    ri = _open_index(net, run, _progress(ctx))
    result = evaluate_retrieval(
        ri,
        k=k,
        rerank_top=rerank,
        pixel_size=int(pixel_size),
        max_queries=max_queries,
        progress=_progress(ctx),
    )
    click.echo(format_table(result))
    click.echo(f"written: {write_result(result, run)}")


def register(group: click.Group) -> None:
    """Add `index`, `search` and `eval-retrieval` to `group`."""
    for command in (index_command, search, eval_retrieval):
        group.add_command(command)
