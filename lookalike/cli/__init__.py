"""The ``lookalike`` command line: a thin shell over the Python API.

This is the only package that prints tables and progress bars or parses arguments (``_shell``: the app,
consoles, progress bars and error handling; one module per group of commands). Every user-facing
problem ends in one line on stderr (``error: <file>: <reason>``) and exit code 1.
"""

from __future__ import annotations

import os

# isort: off
# one module per group of commands; importing registers them, in the order `lookalike --help` lists them
from . import learn, query, compare, duplicates, serve, demo  # noqa: F401

# isort: on
from ._shell import DEFAULT_INDEX_SUBDIR, DEFAULT_SPEC, MODEL_SUBDIR, app, console, err_console

__all__ = ["DEFAULT_INDEX_SUBDIR", "DEFAULT_SPEC", "MODEL_SUBDIR", "app", "console", "err_console", "main"]


def main() -> None:
    """Entry point of the ``lookalike`` console script."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    app()
