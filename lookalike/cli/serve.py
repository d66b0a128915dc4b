"""``serve``: the web page and HTTP API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import LookalikeError
from ._shell import (
    _resolve_index_dir,
    _show_path,
    app,
    console,
    err_console,
    handles_errors,
)


# ---------------------------------------------------------------------------------------- serve
def _listen_socket(host: str, port: int) -> Any:
    """A bound listening socket for uvicorn, so a busy port or a bad host ends in one error line."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise LookalikeError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise LookalikeError(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


@app.command()
@handles_errors
def serve(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder indexed without -o).")],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="LOOKALIKE_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on every route but /health (browsers: open /?token=TOKEN).",
        ),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, in MiB (larger: 413).")] = 16.0,
    max_k: Annotated[int, typer.Option(help="Most results per query (larger k is clamped, with a notice).")] = 100,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Thumbnail cache folder (default: $LOOKALIKE_CACHE/thumbs/<index fingerprint>)."),
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Model directory to check against.")] = None,
    max_uploads: Annotated[
        int, typer.Option(help="Uploads received or decoded at once; more wait up to 2 s, then get 503.", min=1)
    ] = 4,
    max_decodes: Annotated[int, typer.Option(help="Uploads decoded at once (in worker threads).", min=1)] = 2,
    decode_memory_mb: Annotated[
        int, typer.Option(help="Estimated memory the decodes running at once may take, in MiB.", min=1)
    ] = 384,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request head (slow clients are cut off).")
    ] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds a client has to send a request body (then 408).")] = 60.0,
    reload_interval: Annotated[
        float, typer.Option(help="Seconds between checks for an index updated under the server (0: never reload).")
    ] = 2.0,
) -> None:
    """Serve INDEX_DIR as a web page and a JSON API (FastAPI + uvicorn).

    The page (at http://HOST:PORT/) searches by a dropped, pasted or chosen picture or by an indexed image,
    browses the collection and shows what is indexed; the API is documented at /docs. The index is never
    written to; when `lookalike index` updates it, the server loads the new state and swaps it in between
    requests. Only files that are still what was indexed are served (regular files inside the indexed
    folder, same size and mtime). Uploads are decoded as indexed files are, a bounded number at a time
    (503 with Retry-After beyond); slow clients are cut off. Thumbnails are cached in --cache-dir.
    Needs the serve extra: pip install "lookalike[serve]".
    """
    from ..server import ServerSettings, check_extra

    check_extra()
    if not 0 <= port <= 65535:
        raise LookalikeError(f"--port must be 0 to 65535, got {port}")
    if max_upload_mb <= 0:
        raise LookalikeError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    settings = ServerSettings(
        token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_k=max_k, cache_dir=cache_dir,
        max_uploads=max_uploads, max_decodes=max_decodes, decode_memory_bytes=decode_memory_mb * 1024 * 1024,
        header_timeout=header_timeout, body_timeout=body_timeout, reload_interval=reload_interval,
    )  # fmt: skip
    import uvicorn

    from ..search import Index
    from ..server import create_app
    from ..server.transport import uvicorn_config

    directory = _resolve_index_dir(index_dir)
    idx = Index.load(directory, model=model)
    sock = _listen_socket(host, port)
    bound_port = sock.getsockname()[1]
    web_app = create_app(idx, settings)
    shown_host = f"[{host}]" if ":" in host else host
    console.print(
        f"serving {len(idx):,} images from [bold]{_show_path(directory)}[/] at "
        f"[bold]http://{shown_host}:{bound_port}/[/] (API docs at /docs; Ctrl-C to stop)",
        highlight=False,
        soft_wrap=True,
    )
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"[yellow]warning:[/] listening on {host} without --token: anyone who can reach this port can "
            "search and download the indexed images",
            highlight=False,
            soft_wrap=True,
        )
    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
    config = uvicorn_config(  # with the header and body deadlines
        web_app, settings, log_level="info" if verbose else "warning", access_log=verbose, timeout_graceful_shutdown=5
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
