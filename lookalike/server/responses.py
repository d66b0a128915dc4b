"""Small pieces every part of the app shares: the one-line JSON error, JSON text as JSONResponse writes it,
and the checks of ids and path-like values."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

NOT_FOUND = "not found"

json_str = json.encoder.encode_basestring  # a str as JSON with ensure_ascii=False, as JSONResponse writes it


def json_text(content: Any) -> str:
    """``content`` as JSONResponse renders it (compact, UTF-8 text, no NaN), before encoding."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def looks_like_path(value: str) -> bool:
    """True for a value that could name a file: ``..``, a slash, a backslash or NUL."""
    return ".." in value or "/" in value or "\\" in value or "\x00" in value


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one-line JSON error every failure answers with: ``{"error": "..."}``."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def parse_id(text: str) -> int | None:
    """An id from a path parameter: plain decimal digits only (anything else is 'not found')."""
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)
