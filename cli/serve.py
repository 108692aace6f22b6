"""`alexnet serve`: parse, open the run's collections, serve cli/web.py's app until stopped."""

from __future__ import annotations

import signal

import click

from alexnet.cli.options import milvus_option, progress, run_option


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
    from alexnet.cli.web import create_app, listen, serve_until_stopped

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
