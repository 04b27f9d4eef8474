"""``mmx serve``: a trained run as a local web page and JSON API (see :mod:`mmx.pipeline.serve.app`)."""

from __future__ import annotations

import click

from mmx.pipeline.cli_output import console
from mmx.pipeline.ranking import index_option


@click.command("serve")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option("--manifest", type=click.Path(dir_okay=False, exists=True),
              help="Manifest of the gallery's media (e.g. mmx-demo/data/manifest.fetched.csv): thumbnails and players.")
@click.option("--split", default="test", help="Which of RUN's embedded splits is the gallery.")
@click.option("--gallery", type=click.Path(dir_okay=False, exists=True), help="A gallery written by 'mmx embed --manifest ... -o' instead.")
@click.option("--host", default="127.0.0.1", help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", default=8765, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--max-upload-mb", default=50, type=click.IntRange(min=1), help="Largest upload accepted.")
@index_option()
@click.pass_context
def serve_cmd(ctx, run, manifest, split, gallery, host, port, max_upload_mb, index_mode):
    """Search RUN in a browser: text, an uploaded file or a gallery item; results with players.

    \b
    The page and a JSON API (OpenAPI at /docs) listen on HOST:PORT until Ctrl-C, e.g.
    after 'mmx demo' (the line its summary ends with; RUN is a folder under runs/quad-modal/):
      $ mmx serve RUN --manifest mmx-demo/data/manifest.fetched.csv
    or on a gallery embedded by 'mmx embed RUN --manifest ... -o gallery.npz':
      $ mmx serve RUN --gallery gallery.npz --manifest data/mine/manifest.fetched.csv --port 9000
    """
    import socket

    import uvicorn

    from mmx.pipeline.serve.app import create_app
    from mmx.pipeline.serve.backend import Backend

    con = console(ctx)
    backend = Backend(run, manifest, split, gallery, device="cpu", index_mode=index_mode)
    if not manifest:
        con.warn("no --manifest: results show ids and labels only (give the gallery's manifest for thumbnails and players)")
    app = create_app(backend, max_upload_mb * 1024 * 1024)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    con.line(f"serving {backend.run.name} ({len(backend.gallery['id'])} gallery items) at http://{shown}:{bound}/ "
             f"(JSON API: http://{shown}:{bound}/docs); Ctrl-C stops")
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


COMMANDS = [serve_cmd]
