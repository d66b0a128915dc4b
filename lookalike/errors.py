"""User-facing errors, and how a file name is written in one."""

from __future__ import annotations

import os


def display_path(path: object) -> str:
    """A file name as one printable line: bytes that are not UTF-8 as ``\\xff``, control characters
    (a newline in a name) as ``\\n`` or ``\\x1b``, everything else as it is.

    Python hands undecodable bytes of file names around as lone surrogates (``os.fsdecode``), which
    cannot be printed or written as UTF-8; this is the one place that turns them into text.
    """
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in utf8_name(text))


class LookalikeError(Exception):
    """An error with a one-line, user-facing message naming the file and the reason."""


class ImageDecodeError(LookalikeError):
    """An image file that cannot be read, with the file, the reason and what kind of refusal it is.

    ``kind`` is one of ``unreadable`` (missing, permission, not a regular file), ``not-image``, ``unsupported``
    (an image format lookalike does not read), ``too-large`` (file size or pixels over the limit) and
    ``corrupt`` (truncated or damaged).
    """

    def __init__(self, path: object, reason: str, *, kind: str = "corrupt") -> None:
        self.path = path
        self.reason = reason
        self.kind = kind
        super().__init__(f"{display_path(path)}: {reason}")


def utf8_name(text: str) -> str:
    """A file name as valid UTF-8 text for JSON or HTML: itself, or, when it holds bytes that are not UTF-8
    (lone surrogates), with those bytes written as ``\\xff`` (other characters, newlines too, unchanged)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # surrogates that stand for no byte: as \udXXX
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
