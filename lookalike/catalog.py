"""The catalog: which file each vector id stands for, in SQLite.

One row per indexed image: id, path relative to the indexed root (POSIX separators), size in bytes,
modification time in nanoseconds, sha256 of the content, and an optional label (the parent folder's
name relative to the root). These are what make incremental updates and copy detection safe later on.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import LookalikeError

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id       INTEGER PRIMARY KEY,
    path     TEXT    NOT NULL UNIQUE,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256   TEXT    NOT NULL,
    label    TEXT
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images (sha256);
"""


@dataclass(frozen=True)
class CatalogEntry:
    """One indexed image."""

    id: int
    path: str  # relative to the index root, POSIX separators
    size: int  # bytes
    mtime_ns: int  # modification time, nanoseconds since the epoch
    sha256: str  # hex digest of the file's bytes
    label: str | None = None  # parent folder relative to the root, None for files at the root


def label_for(relative: str) -> str | None:
    """The label of a relative POSIX path: its parent folder, or None at the root."""
    parent = relative.rsplit("/", 1)[0] if "/" in relative else ""
    return parent or None


class Catalog:
    """A SQLite catalog file. Use :meth:`create` for a new one and :meth:`open` for an existing one."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Catalog:
        """Create an empty catalog at ``path`` (which must not exist)."""
        path = Path(path)
        if path.exists():
            raise LookalikeError(f"{path}: catalog already exists")
        try:
            db = sqlite3.connect(path)
            db.executescript(SCHEMA)
            db.commit()
        except sqlite3.Error as exc:
            raise LookalikeError(f"{path}: cannot create the catalog ({exc})") from None
        return cls(db, path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], readonly: bool = True) -> Catalog:
        """Open an existing catalog (read-only by default)."""
        path = Path(path)
        if not path.is_file():
            raise LookalikeError(f"{path}: catalog not found")
        uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rw'}"
        try:
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            db.execute("SELECT id, path, size, mtime_ns, sha256, label FROM images LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise LookalikeError(f"{path}: unreadable catalog ({exc})") from None
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def add(self, entries: Iterable[CatalogEntry]) -> None:
        """Insert entries in one transaction (all or nothing).

        Raises:
            LookalikeError: a duplicate id or path, or a catalog that cannot be written.
        """
        try:
            with self._db:
                self._db.executemany(
                    "INSERT INTO images (id, path, size, mtime_ns, sha256, label) VALUES (?, ?, ?, ?, ?, ?)",
                    [(e.id, e.path, e.size, e.mtime_ns, e.sha256, e.label) for e in entries],
                )
        except sqlite3.Error as exc:
            raise LookalikeError(f"{self.path}: cannot add to the catalog ({exc})") from None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def entries(self) -> list[CatalogEntry]:
        """Every entry, by id."""
        rows = self._db.execute("SELECT id, path, size, mtime_ns, sha256, label FROM images ORDER BY id")
        return [CatalogEntry(*row) for row in rows]

    def get(self, id_: int) -> CatalogEntry | None:
        """The entry with this id, or None."""
        row = self._db.execute(
            "SELECT id, path, size, mtime_ns, sha256, label FROM images WHERE id = ?", (int(id_),)
        ).fetchone()
        return CatalogEntry(*row) if row else None

    def id_of(self, relative_path: str) -> int | None:
        """The id of a relative path, or None."""
        row = self._db.execute("SELECT id FROM images WHERE path = ?", (relative_path,)).fetchone()
        return int(row[0]) if row else None
