"""The web page and HTTP API: search an index by picture in a browser.

    >>> from lookalike.server import create_app        # doctest: +SKIP
    >>> app = create_app("photos.index")               # a FastAPI app; the lifespan loads the index once

or from the command line, ``lookalike serve photos.index`` (uvicorn on 127.0.0.1:8000).

FastAPI, uvicorn and python-multipart come with the ``serve`` extra (``pip install "lookalike[serve]"``).
They are imported only here, lazily: ``import lookalike.server`` works without them, and
:func:`check_extra` turns a missing one into a one-line :class:`~lookalike.errors.LookalikeError`.

The modules: ``settings`` (limits and options), ``uploads`` (checking and decoding an uploaded file),
``admission`` (how many uploads and decodes run at once, within a memory budget), ``engine`` (one worker
thread that runs every search, batching the queries that wait), ``thumbs`` (thumbnails generated once into
a user cache folder, never the index folder), ``telemetry`` (Prometheus text for ``/metrics``), ``state``
(what the routes share: the served index, swapped whole when the folder changes), ``gate`` (the
middleware: metrics timing, path screening, token, upload admission, body cap and deadline, ``HEAD``),
``routes`` (one ``APIRouter`` per part), ``schemas`` (the JSON shapes), ``app`` (the factory), ``transport``
(uvicorn's h11 with deadlines for request heads and bodies) and ``background`` (uvicorn on a thread);
the page is in ``static/``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LookalikeError
from .settings import ServerSettings

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from ..search import Index

__all__ = ["SERVE_EXTRA_HINT", "ServerSettings", "check_extra", "create_app"]

# distribution -> the module names it may be imported as (python-multipart renamed its module)
REQUIRED = {"fastapi": ("fastapi",), "uvicorn": ("uvicorn",), "python-multipart": ("python_multipart", "multipart")}
SERVE_EXTRA_HINT = 'pip install "lookalike[serve]"'


def check_extra() -> None:
    """Raise one line naming the extra to install when FastAPI, uvicorn or python-multipart is missing."""
    missing = [dist for dist, modules in REQUIRED.items() if all(importlib.util.find_spec(m) is None for m in modules)]
    if missing:
        raise LookalikeError(
            f"the web server needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed; install the serve extra: {SERVE_EXTRA_HINT}"
        )


def create_app(
    index: Index | str | os.PathLike[str],
    settings: ServerSettings | None = None,
    **options: Any,
) -> FastAPI:
    """The FastAPI app serving ``index`` (a loaded :class:`~lookalike.search.Index`, or an index folder
    that the app's lifespan loads once at start-up).

    Args:
        index: the index, or its folder.
        settings: limits and options; ``options`` override single fields (``token="..."``).

    Raises:
        LookalikeError: the serve extra is not installed, or an option is invalid.
    """
    check_extra()
    from .app import build_app

    settings = (settings or ServerSettings()).replace(**options) if options else (settings or ServerSettings())
    if isinstance(index, str | os.PathLike):
        index = Path(index).expanduser()
    return build_app(index, settings)
