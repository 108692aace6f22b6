"""`alexnet verify`: every file of a run checked whole, one line per problem."""

from __future__ import annotations

import click

from alexnet.cli.options import run_option


@click.command()
@run_option
@click.option("--gallery", "galleries", multiple=True, help="Also check this gallery; repeat.")
@click.option("--all", "all_galleries", is_flag=True, help="Also check every gallery.")
@click.option(
    "--files",
    is_flag=True,
    help="Also check that every image the manifest lists is there, as it was at prep.",
)
@click.pass_context
def verify(ctx, run, galleries, all_galleries, files):
    """Check RUN's files against what was recorded when they were written, reading each whole:

    \b
    - manifest: its file table against the fingerprint stored with it;
    - stats.npz: readable, and made from this manifest;
    - checkpoints/best.pt and last.pt: every tensor's bytes (weights and optimizer state) and
      every stored value against the xxh3-128 checksums written inside the file (a checkpoint
      older than checksums is only read);
    - the training set's index (and with --gallery/--all, galleries): codes, FAISS index and
      autoencoder against the size, modification time and xxh3-128 checksum recorded when
      written, and the whole fc7 feature file against its xxh3-128 checksum;
    - with --files: every image the manifest lists, its size and modification time.

    Prints one line per problem with what repairs it; exits 1 when any, 0 when none."""
    from alexnet.pipeline.errors import AlexnetError
    from alexnet.retrieval.verify import verify_run

    found = verify_run(run, galleries=True if all_galleries else galleries, files=files)
    group = ctx.find_root().command
    namer = group.flag_namer(ctx.find_root(), None) if hasattr(group, "flag_namer") else None
    for p in found:
        line = AlexnetError(f"{p['file']}: {p['problem']}; to repair: {p['fix']}")
        click.secho(line.render(namer) if namer else str(line), fg="red")
    if found:
        click.echo(f"{len(found)} problem{'s' * (len(found) != 1)} in {run}")
        ctx.exit(1)
    click.echo(f"{run}: every file checked is as it was written")


def register(group: click.Group) -> None:
    group.add_command(verify)
