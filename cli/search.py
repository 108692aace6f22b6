"""`alexnet index`, `search`, `eval-retrieval`, `serve`, `duplicates`: parse, call a
Collection (alexnet.retrieval.collection), print (or, for `serve`, answer HTTP requests with
cli/web.py's app).

`register(group)` adds the five commands to a click group (cli/main.py's `cli`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import click

from alexnet.cli.options import (
    NON_NEGATIVE,
    POSITIVE,
    csv_option,
    milvus_option,
    progress,
    run_option,
    workers_option,
)
from alexnet.pipeline.errors import AlexnetError
from alexnet.retrieval import defaults as R

JSONL_CHUNK = 256  # --jsonl: queries checked, then searched, this many at a time


def png_only(ctx, param, path: Path | None) -> Path | None:
    if path is not None and path.suffix.lower() != ".png":
        raise click.BadParameter(f"the contact sheet is a PNG: name it {path.stem}.png")
    return path


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
    type=click.Path(file_okay=False, path_type=Path),
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
                f"codes; written: {g['path']}"
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


def given(ctx: click.Context, name: str) -> bool:
    """Whether the option was typed, not left at its default."""
    return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT


def print_compacted(c: dict, asked: bool) -> None:
    why = "" if asked else " (more than half of its rows were dead)"
    click.echo(
        f"compacted{why}: {c['rows_before']} feature rows -> {c['rows_after']}, "
        f"{c['bytes_freed'] / 2**20:.2f} MiB freed; image ids were renumbered"
    )


def print_index(meta: dict) -> None:
    r = meta["autoencoder_report"]
    mse = r["reconstruction_mse"]
    click.echo(
        f"{meta['kind']} index of {meta['count']} images, {meta['bits']}-bit "
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
    from alexnet.pipeline.imagecheck import usable_images
    from alexnet.pipeline.walk import image_files
    from alexnet.retrieval.collection import collection

    if jsonl and (as_json or montage or csv):
        raise click.BadParameter("use it without --json, --montage and --csv", param_hint="--jsonl")
    files, skipped = image_files(images, check=not jsonl)  # --jsonl: checked as it goes
    for path, why in skipped:
        click.secho(f"skipped: {path} {why}", fg="yellow", err=True)
    c = collection(run, gallery, workers=workers, milvus=milvus).open(progress=progress(ctx))
    if jsonl:
        for start in range(0, len(files), JSONL_CHUNK):
            usable, skipped = usable_images(files[start : start + JSONL_CHUNK])
            for path, why in skipped:
                click.secho(f"skipped: {path} {why}", fg="yellow", err=True)
            for row in c.stream(usable, k=k, rerank=rerank):
                click.echo(json.dumps(row))
        return
    result = c.search(files, k=k, rerank=rerank)
    if as_json:
        click.echo(json.dumps({"run": str(run), **result}, indent=1))
    else:
        click.echo(search_table(result, None if absolute else c.root))
    if montage:
        from alexnet.retrieval.montage import make_montage

        unit = "fc7" if rerank else "bits"
        click.echo(f"montage: {make_montage(result['queries'], montage, unit=unit)}", err=as_json)
    if csv:
        from alexnet.retrieval.tables import SEARCH_COLUMNS, search_rows, write_csv

        click.echo(f"csv: {write_csv(csv, search_rows(result), SEARCH_COLUMNS)}", err=as_json)


def search_table(result: dict, root: str | None) -> str:
    """The results as aligned text: a header saying what answered, then a table per query;
    paths relative to `root` (the dataset) when given."""
    rerank = result["rerank"]
    lines = [
        f"{result['checkpoint']}, {result['bits']}-bit codes, {result['index']} index"
        + (f", fc7 re-rank of the top {rerank}" if rerank else "")
        + f"; {result['query_ms']:.0f} ms per query"
    ]
    for row in result["queries"]:
        rows = row["results"]
        width = max((len(r["class"] or "") for r in rows), default=5)
        known = f" ({row['class']})" if "class" in row else ""
        lines += ["", f"query: {row['query']}{known}"]
        fc7 = f"{'fc7 L2':>9}" if rerank else ""
        lines.append(f"{'rank':>4} {'bits':>5}{fc7}  {'class':{width}}  path")
        for r in rows:
            path = os.path.relpath(r["path"], root) if root else r["path"]
            dist = f"{r['distance']:9.3f}" if rerank else ""
            label = r["class"] or ""  # a gallery image outside the run's classes
            lines.append(f"{r['rank']:4d} {r['hamming']:5d}{dist}  {label:{width}}  {path}")
    return "\n".join(lines)


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


@click.command()
@run_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface, so other machines can connect).",
)
@click.option("--port", type=int, default=8000, show_default=True, help="0: any free port.")
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Larger uploads are refused (HTTP 413).",
)
@click.option(
    "--gallery",
    "galleries",
    multiple=True,
    help="Also offer this gallery (alexnet index --images) on the page; repeat for more.",
)
@milvus_option
@click.pass_context
def serve(ctx, run, host, port, max_upload_mb, galleries, milvus):
    """A search page and a JSON API for RUN in the browser (API documented at /docs).

    The run's index is opened once (and built first when missing); Ctrl-C stops the server.
    """
    from alexnet.cli.web import create_app, serve_until_stopped

    sock = listen(host, port)  # before the index loads: a taken port fails at once
    try:
        app = create_app(
            run,
            galleries=galleries,
            max_upload_mb=max_upload_mb,
            progress=progress(ctx),
            milvus=milvus,
        )
        port = sock.getsockname()[1]
        announce = f"serving {run} at http://{host}:{port}/ (API: /docs); Ctrl-C stops"
        stopped_by = serve_until_stopped(app, sock, lambda: click.echo(announce))
    except KeyboardInterrupt:  # while the index was still loading
        stopped_by = signal.SIGINT
    click.echo("stopped")
    ctx.exit(128 + stopped_by if stopped_by else 0)  # 130: Ctrl-C, as every command; 143: TERM


@click.command()
@run_option
@click.option("--gallery", required=True, help="The gallery to look in (alexnet index --images).")
@click.option(
    "--against",
    default=None,
    help="Instead: list the photos of --gallery that already exist in this other gallery.",
)
@click.option(
    "--max-distance",
    type=NON_NEGATIVE,
    default=None,
    help="Candidate pairs: codes at most this many bits apart (default: bits / 16, 4 of 64).",
)
@click.option(
    "--max-fc7",
    type=click.FloatRange(min=0),
    default=R.DUPLICATE_FC7,
    show_default=True,
    help="A candidate pair is a duplicate when its relative fc7 distance "
    "||a - b|| / sqrt(||a|| ||b||) is at most this.",
)
@click.option(
    "--mirrors/--no-mirrors",
    default=True,
    show_default=True,
    help="Also catch mirrored copies (checks close pairs with the mirrored crop).",
)
@csv_option
@milvus_option
@workers_option
@click.pass_context
def duplicates(ctx, run, gallery, against, max_distance, max_fc7, mirrors, csv, milvus, workers):
    """Groups of near-duplicate images in a gallery (resized, re-encoded, mirrored copies):
    writes RUN/galleries/NAME/duplicates.json and a contact sheet per group. With --against
    OLD, the photos of the gallery found in gallery OLD: RUN/galleries/NAME/against-OLD.json."""
    from alexnet.retrieval.collection import collection

    c = collection(run, gallery, workers=workers, milvus=milvus)
    options = dict(max_distance=max_distance, max_fc7=max_fc7, mirrors=mirrors)
    if against is not None:
        old = collection(run, against, workers=workers)
        report = c.duplicates(against=old, **options, progress=progress(ctx))
        print_found(report, c, old)
    else:
        report = c.duplicates(**options, progress=progress(ctx))
        print_groups(report, c)
    if csv:
        from alexnet.retrieval.tables import PAIR_COLUMNS, pair_rows, write_csv

        click.echo(f"csv: {write_csv(csv, pair_rows(report), PAIR_COLUMNS)}")


def print_groups(report: dict, c) -> None:
    groups = report["groups"]
    for n, group in enumerate(groups):
        names = ", ".join(os.path.relpath(p, c.root) for p in group["images"])
        click.echo(f"{n}: {names}")
    click.echo(
        f"{report['images']} images, {report['candidates']} pairs within "
        f"{report['max_distance']} bits, {len(groups)} groups of near-duplicates "
        f"({sum(len(g['images']) for g in groups)} images; fc7 <= {report['max_fc7']:g}); "
        f"written: {c.paths.duplicates}" + (f" and {len(groups)} contact sheets" if groups else "")
    )


def print_found(report: dict, c, old) -> None:
    for p in report["pairs"]:
        click.echo(
            f"{os.path.relpath(p['image'], c.root)} -> {os.path.relpath(p['original'], old.root)}"
            f"  hamming {p['hamming']}  fc7 {p['fc7']:.3f}"
            + ("  mirrored" if p["mirrored"] else "")
        )
    images = len({p["image"] for p in report["pairs"]})
    click.echo(
        f"{images} of {report['images']} images of {report['gallery']} found in "
        f"{report['against']} ({report['against_images']} images; {report['candidates']} pairs "
        f"within {report['max_distance']} bits, fc7 <= {report['max_fc7']:g}); written: "
        f"{c.paths.against(report['against'])}"
        + (f" and {len(report['sheets'])} contact sheets" if report["sheets"] else "")
    )


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on HOST:PORT, or one clear error (port taken, unknown address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle off only on sockets that say TCP, and
        # with Nagle on every answer waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)  # connections wait in the queue until the server takes them
    except OSError as e:
        raise AlexnetError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def register(group: click.Group) -> None:
    """Add `index`, `search`, `eval-retrieval`, `serve` and `duplicates` to `group`."""
    for command in (index_command, search, eval_retrieval, serve, duplicates):
        group.add_command(command)
