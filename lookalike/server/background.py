"""Run the app with uvicorn on a background thread (tests, notebooks, the screenshot script).

>>> from lookalike.server import create_app                       # doctest: +SKIP
>>> from lookalike.server.background import serve_in_background    # doctest: +SKIP
>>> with serve_in_background(create_app("photos.index")) as url:   # doctest: +SKIP
...     print(url)                                                  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import LookalikeError


@contextmanager
def serve_in_background(app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 120.0) -> Iterator[str]:
    """Serve ``app`` on ``host:port`` (port 0: a free one) until the block ends; yields the base URL.

    The lifespan (loading the index, warming up) has finished when the URL is yielded. The server has the
    app's deadlines for request heads and bodies (:func:`lookalike.server.transport.uvicorn_config`).

    Raises:
        LookalikeError: the server did not start within ``timeout`` seconds, or stopped at start-up.
    """
    import uvicorn

    from .transport import uvicorn_config

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lookalike-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise LookalikeError(f"{host}:{bound}: the server stopped while starting (see the log above)")
            if time.monotonic() > deadline:
                raise LookalikeError(f"{host}:{bound}: the server did not start within {timeout:.0f} s")
            time.sleep(0.02)
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
