"""Download one file safely: stream it into a ``.part`` file beside its destination, verify its digest, rename.

:func:`download` is what :mod:`lookalike.datasets` and the pretrained weights in :mod:`lookalike.models.vgg`
use. It fetches ``http://``, ``https://`` and ``file://`` URLs with :mod:`urllib.request`, writes into a
temporary ``<name>.<random>.part`` file in the destination's folder, checks the digest it was given (a full
SHA-256, a SHA-256 prefix such as torch.hub's ``397923af`` file-name suffix, or an MD5) and only then renames
the file into place, so the destination is either absent, untouched, or complete and verified. The part
file is deleted on every failure.

Every failure is a :class:`~lookalike.errors.LookalikeError` with a one-line message naming the URL and
the reason: :class:`DownloadError` for the transfer (``Connection refused``, ``timed out after 5 s``,
``HTTP 404 Not Found``, ``the connection closed after 10 of 100 bytes``), :class:`ChecksumError` for a
digest mismatch (naming the expected and the actual digest), and a plain ``LookalikeError`` when the
destination cannot be written.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from lookalike._fs import current_umask
from lookalike.errors import LookalikeError

__all__ = [
    "ChecksumError",
    "DownloadError",
    "Progress",
    "USER_AGENT",
    "download",
    "file_digest",
    "os_reason",
    "reason_text",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]
"""A progress callback: ``progress(done, total)`` in bytes; ``total`` is ``None`` when unknown."""

USER_AGENT = "lookalike/1 (+https://pypi.org/project/lookalike/)"
"""The default ``User-Agent`` header of :func:`download`."""

CHUNK = 1 << 20
"""Bytes read (and hashed) at a time."""

_HEX = re.compile(r"[0-9a-f]+")


class DownloadError(LookalikeError):
    """A file could not be fetched; ``str()`` is ``"could not download <url>: <reason>"``.

    Attributes:
        url: The URL that failed.
        reason: A short reason, e.g. ``"Connection refused"`` or ``"HTTP 404 Not Found"``.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"could not download {url}: {reason}")


class ChecksumError(LookalikeError):
    """A downloaded file does not have the expected digest; the download was deleted.

    ``str()`` is ``"checksum mismatch for <url>: expected <algorithm> <expected>, got <actual>; the download
    was deleted"`` (for a prefix: ``"expected sha256 starting with <prefix>"``).

    Attributes:
        url: The URL downloaded.
        algorithm: ``"sha256"`` or ``"md5"``.
        expected: The expected hex digest, or its prefix.
        actual: The full hex digest of what was downloaded.
    """

    def __init__(self, url: str, algorithm: str, expected: str, actual: str, *, prefix: bool = False) -> None:
        self.url = url
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        wanted = f"{algorithm} starting with {expected}" if prefix else f"{algorithm} {expected}"
        super().__init__(f"checksum mismatch for {url}: expected {wanted}, got {actual}; the download was deleted")


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    progress: Progress | None = None,
    user_agent: str = USER_AGENT,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its digest first.

    The file is streamed into a ``.part`` file in ``dest``'s folder (which must exist), hashed on the way,
    checked against every digest given, flushed to disk and renamed onto ``dest`` (replacing a file there).
    On any failure the part file is deleted and ``dest`` is left as it was.

    Args:
        url: An ``http://``, ``https://`` or ``file://`` URL.
        dest: Where the file goes.
        sha256: The expected full SHA-256 hex digest (64 characters).
        sha256_prefix: The expected start of the SHA-256 hex digest (as torch.hub checks ``name-<hash>.pth``).
        md5: The expected MD5 hex digest (32 characters).
        timeout: Seconds to wait for the server to connect or to send more data.
        progress: Called as ``progress(bytes_done, bytes_total_or_None)``: once before the first byte, then
            after each chunk.
        user_agent: The ``User-Agent`` header sent.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If a digest argument is not lower- or upper-case hex of the right length.
        DownloadError: If the server cannot be reached, answers with an HTTP error, times out, or closes the
            connection before sending the announced ``Content-Length``.
        ChecksumError: If the file's digest differs from one given.
        LookalikeError: If the part file cannot be created, written or renamed.
    """
    dest = Path(dest)
    expected = _expected_digests(sha256=sha256, sha256_prefix=sha256_prefix, md5=md5)
    logger.info("downloading %s to %s", url, dest)
    try:
        fd, part_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise LookalikeError(f"cannot write to directory {dest.parent}: {os_reason(exc)}") from exc
    part = Path(part_name)
    try:
        hashes = {algorithm: hashlib.new(algorithm, usedforsecurity=False) for algorithm, _, _ in expected}
        with os.fdopen(fd, "wb") as out:
            _fetch_into(url, out, hashes, timeout, progress, user_agent)
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as exc:
                raise LookalikeError(f"cannot write the download of {url}: {os_reason(exc)}") from exc
        for algorithm, digest, is_prefix in expected:
            actual = hashes[algorithm].hexdigest()
            matches = actual.startswith(digest) if is_prefix else actual == digest
            if not matches:
                raise ChecksumError(url, algorithm, digest, actual, prefix=is_prefix)
        try:
            os.chmod(part, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
            os.replace(part, dest)
        except OSError as exc:
            raise LookalikeError(f"cannot write {dest}: {os_reason(exc)}") from exc
    finally:
        part.unlink(missing_ok=True)
    logger.debug("downloaded %s (%d bytes)", dest, dest.stat().st_size)
    return dest


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Return the hex digest of a file, read in 1 MiB chunks.

    Args:
        path: The file.
        algorithm: A :mod:`hashlib` name, e.g. ``"sha256"`` or ``"md5"``.

    Returns:
        The lower-case hex digest.

    Raises:
        OSError: If the file cannot be read.
    """
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def reason_text(reason: object, timeout: float) -> str:
    """Turn an exception (or a :class:`urllib.error.URLError`'s reason) into a short, one-line reason.

    Args:
        reason: An exception, or any object whose ``str()`` describes the failure.
        timeout: The timeout in force, named when ``reason`` is a timeout.

    Returns:
        E.g. ``"Connection refused"`` or ``"timed out after 5 s"``; never empty, never several lines.
    """
    if isinstance(reason, (socket.timeout, TimeoutError)):
        text = f"timed out after {timeout:g} s"
    elif isinstance(reason, OSError) and reason.strerror:
        text = reason.strerror
    elif isinstance(reason, BaseException):
        text = str(reason) or type(reason).__name__
    else:
        text = str(reason)
    return " ".join(text.split()) or "unknown error"


def os_reason(exc: OSError) -> str:
    """The one-line reason of an :class:`OSError`: its ``strerror`` (e.g. ``"No space left on device"``)."""
    return " ".join((exc.strerror or str(exc) or type(exc).__name__).split())


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _expected_digests(*, sha256: str | None, sha256_prefix: str | None, md5: str | None) -> list[tuple[str, str, bool]]:
    """``(algorithm, lower-case hex, is_prefix)`` for each digest given, after checking its form."""
    expected: list[tuple[str, str, bool]] = []
    for name, value, algorithm, length, is_prefix in (
        ("sha256", sha256, "sha256", 64, False),
        ("sha256_prefix", sha256_prefix, "sha256", 64, True),
        ("md5", md5, "md5", 32, False),
    ):
        if value is None:
            continue
        value = value.strip().lower()
        good_length = 0 < len(value) <= length if is_prefix else len(value) == length
        if not (good_length and _HEX.fullmatch(value)):
            raise ValueError(f"{name} must be {'1 to ' if is_prefix else ''}{length} hex digits, got {value!r}")
        expected.append((algorithm, value, is_prefix))
    return expected


def _fetch_into(
    url: str,
    out: BinaryIO,
    hashes: dict[str, hashlib._Hash],
    timeout: float,
    progress: Progress | None,
    user_agent: str,
) -> None:
    """Copy ``url`` into the binary file ``out``, updating every hash in ``hashes`` with what is written."""
    request = urllib.request.Request(url, headers={"User-Agent": user_agent})
    done = 0
    total: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress is not None:
                progress(0, total)
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise LookalikeError(f"cannot write the download of {url}: {os_reason(exc)}") from exc
                for digest in hashes.values():
                    digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except urllib.error.HTTPError as exc:
        raise DownloadError(url, f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(url, reason_text(exc.reason, timeout)) from exc
    except http.client.IncompleteRead as exc:
        done += len(exc.partial)
        expected = f"{total:,}" if total is not None else f"{done + (exc.expected or 0):,}"
        raise DownloadError(url, f"the connection closed after {done:,} of {expected} bytes") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DownloadError(url, reason_text(exc, timeout)) from exc
    if total is not None and done != total:
        raise DownloadError(url, f"the connection closed after {done:,} of {total:,} bytes")
