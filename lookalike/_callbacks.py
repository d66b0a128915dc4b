"""Progress callbacks: plain objects whose optional methods the library calls; the CLI draws bars with them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def emit(callbacks: Sequence[Any], name: str, *args: Any) -> None:
    """Call ``name(*args)`` on every callback object that has such a method."""
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)
