"""`alexnet duplicates`: parse, call a gallery's Collection.duplicates, print the groups (or
the photos found in another gallery)."""

from __future__ import annotations

import os

import click

from alexnet.cli.options import (
    NON_NEGATIVE,
    csv_option,
    milvus_option,
    progress,
    run_option,
    workers_option,
)
from alexnet.retrieval import defaults as R


@click.command()
@run_option
@click.option("--gallery", required=True, help="The gallery to look in (alexnet index --images).")
@click.option(
    "--against",
    default=None,
    help="Instead: list the photos of --gallery that already exist in this other gallery "
    "(with --milvus, range-searched in that gallery's codes in Milvus).",
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
        old = collection(run, against, workers=workers, milvus=milvus)  # its codes in Milvus
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
