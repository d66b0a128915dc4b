"""The catalog: which file each vector id stands for, in SQLite.

One row per indexed image: id, path relative to the indexed root (POSIX separators), size in bytes,
modification time in nanoseconds, sha256 of the content, and an optional label (the parent folder's
name relative to the root). These are what make incremental updates and copy detection safe.

In an index folder of format 2 the catalog is also the source of truth for the vectors: each image row
says where its vector is (``shard``, ``row``: a row of ``vectors-<shard>.npy``), the ``shards`` table lists
the shard files that were completely written, ``skipped`` remembers unreadable files (with the size and
mtime they had, so an unchanged one is not read again) and ``meta`` holds counters (``next_id``,
``next_shard``). A shard file is renamed into place before the transaction that adds its rows commits, so
every committed row points at a complete file; :meth:`Catalog.apply` makes each change one transaction.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LookalikeError, display_path

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

# Format 2 of the index folder: where each vector lives, the committed shard files, unreadable files, counters.
STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id       INTEGER PRIMARY KEY,
    path     TEXT    NOT NULL UNIQUE,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256   TEXT    NOT NULL,
    label    TEXT,
    shard    INTEGER,
    row      INTEGER
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images (sha256);
CREATE INDEX IF NOT EXISTS images_shard ON images (shard);
CREATE TABLE IF NOT EXISTS shards (
    shard INTEGER PRIMARY KEY,
    rows  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (
    path     TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason   TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_CHUNK = 500  # parameters per IN (...) query, well under SQLite's limit

# File names are bytes to the system; Python hands the bytes that are not UTF-8 around as lone surrogates
# (os.fsdecode), which SQLite's UTF-8 text cannot take. Such a name is bound as its raw bytes and stored
# as TEXT (CAST(? AS TEXT) keeps the bytes), and every TEXT read back is decoded with surrogateescape, so
# the name comes back exactly as the file system gave it. Valid UTF-8 names are stored as they are.
_TEXT = functools.partial(str, encoding="utf-8", errors="surrogateescape")


def _raw(text: str) -> bytes:
    """A name's bytes as the file system has them (the inverse of :data:`_TEXT`)."""
    return text.encode("utf-8", "surrogateescape")


def _name(text: str | None) -> str | bytes | None:
    """A path or label as an SQL parameter: itself, or its raw bytes when it is not valid UTF-8."""
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _raw(text)
    return text


def _connect(*args: object, **kwargs: object) -> sqlite3.Connection:
    db = sqlite3.connect(*args, **kwargs)  # type: ignore[arg-type]
    db.text_factory = _TEXT
    return db


@dataclass(frozen=True)
class Located:
    """An image row with the place of its vector: ``vectors-<shard>.npy``, row ``row``."""

    entry: CatalogEntry
    shard: int
    row: int


@dataclass(frozen=True)
class Snapshot:
    """The store's state as of one read transaction (see :meth:`Catalog.snapshot`)."""

    entries: Entries
    shard: np.ndarray  # per entry (by position), the shard holding its vector; -1 for none
    row: np.ndarray  # per entry, its row in that shard; -1 for none
    shards: dict[int, int]  # committed shard -> rows in its file
    skipped: list[SkippedFile]
    meta: dict[str, int]


@dataclass(frozen=True)
class SkippedFile:
    """An unreadable file, as it was when it was tried."""

    path: str  # relative to the index root
    size: int
    mtime_ns: int
    reason: str


@dataclass(frozen=True)
class CatalogEntry:
    """One indexed image."""

    id: int
    path: str  # relative to the index root, POSIX separators
    size: int  # bytes
    mtime_ns: int  # modification time, nanoseconds since the epoch
    sha256: str  # hex digest of the file's bytes
    label: str | None = None  # parent folder relative to the root, None for files at the root


_ROW_COLUMNS = "id, CAST(path AS BLOB), size, mtime_ns, sha256, CAST(label AS BLOB)"  # what Entries reads


class Entries(Mapping[int, CatalogEntry]):
    """The catalog's image rows in memory, as columns: id -> :class:`CatalogEntry`, built on access.

    What an :class:`~lookalike.search.Index` holds for its images. A dict of entries and one of paths cost
    about 300 bytes of small Python objects per image, more while they are read from SQLite, and a
    server that reloads its index when the folder changes holds the old and the new one for a moment:
    the allocator kept that high-water mark for good (+90 MiB, then +31 MiB, over the first two reloads
    of 50,000 images). These columns (ids, sizes, mtimes, digests, the paths in one NUL-separated byte
    string, label codes and a hash table of the paths) cost about 150 bytes per image in a dozen buffers
    that are given back whole, and reloads stay flat (``benchmarks/reload_memory.py``). Paths are the
    file system's bytes (names that are not UTF-8 come back as the same surrogate-escaped strings).
    """

    __slots__ = ("_ids", "_sizes", "_mtimes", "_digests", "_blob", "_starts", "_codes", "_labels",
                 "_hash_order", "_hashes")  # fmt: skip

    def __init__(self, rows: Iterable[tuple[int, bytes, int, int, str, bytes | None]] = ()) -> None:
        """``rows``: ``(id, path bytes, size, mtime_ns, sha256 hex, label bytes or None)``, ids ascending."""
        ids, sizes, mtimes, starts, codes, hashes = (array("q") for _ in range(6))
        digests, blob = bytearray(), bytearray(b"\0")
        label_codes: dict[bytes, int] = {}
        for id_, path, size, mtime_ns, sha256, label in rows:
            if ids and id_ <= ids[-1]:
                raise ValueError(f"catalog rows out of order: id {id_} after {ids[-1]}")
            ids.append(id_)
            sizes.append(size)
            mtimes.append(mtime_ns)
            digest = sha256.encode("ascii")
            if len(digest) > 64:
                raise ValueError(f"image {id_}: sha256 {sha256!r} is not a hex digest")
            digests += digest.ljust(64, b"\0")
            starts.append(len(blob))
            blob += path
            blob += b"\0"
            codes.append(-1 if label is None else label_codes.setdefault(label, len(label_codes)))
            hashes.append(hash(path))
        self._ids = np.frombuffer(ids, dtype=np.int64) if ids else np.empty(0, np.int64)
        self._sizes, self._mtimes, self._starts, self._codes = (
            np.frombuffer(a, dtype=np.int64) if a else np.empty(0, np.int64) for a in (sizes, mtimes, starts, codes)
        )
        self._digests = np.frombuffer(bytes(digests), dtype="S64")
        self._blob = bytes(blob)
        self._labels = [_TEXT(label) for label in label_codes]
        all_hashes = np.frombuffer(hashes, dtype=np.int64) if hashes else np.empty(0, np.int64)
        self._hash_order = np.argsort(all_hashes, kind="stable")
        self._hashes = all_hashes[self._hash_order]

    @classmethod
    def of(cls, entries: Iterable[CatalogEntry]) -> Entries:
        """Columns of these entries (any order; ids must be unique)."""
        rows = sorted(entries, key=lambda e: e.id)
        return cls((e.id, _raw(e.path), e.size, e.mtime_ns, e.sha256, None if e.label is None else _raw(e.label))
                   for e in rows)  # fmt: skip

    # ----------------------------------------------------------------------------- the mapping
    def _position(self, id_: object) -> int:
        if isinstance(id_, bool) or not isinstance(id_, int | np.integer):
            raise KeyError(id_)
        pos = int(self._ids.searchsorted(int(id_)))
        if pos == len(self._ids) or self._ids[pos] != id_:
            raise KeyError(id_)
        return pos

    def _entry(self, pos: int) -> CatalogEntry:
        code = int(self._codes[pos])
        return CatalogEntry(int(self._ids[pos]), self._path(pos), int(self._sizes[pos]), int(self._mtimes[pos]),
                            self._digests[pos].decode("ascii"), None if code < 0 else self._labels[code])  # fmt: skip

    def _path(self, pos: int) -> str:
        start = int(self._starts[pos])
        return _TEXT(self._blob[start : self._blob.index(b"\0", start)])

    def __getitem__(self, id_: object) -> CatalogEntry:
        return self._entry(self._position(id_))

    def __contains__(self, id_: object) -> bool:
        try:
            self._position(id_)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids.tolist())

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"<Entries: {len(self):,} images>"

    def rows(self) -> Iterator[CatalogEntry]:
        """Every entry, by id (faster than ``values()``, which looks each id up)."""
        return (self._entry(pos) for pos in range(len(self._ids)))

    # ------------------------------------------------------------------------------- columns
    @property
    def ids(self) -> np.ndarray:
        """Every id, ascending (read-only)."""
        return self._ids

    def labels(self) -> dict[int, str]:
        """id -> label of every labelled image."""
        return {i: self._labels[c] for i, c in zip(self._ids.tolist(), self._codes.tolist()) if c >= 0}

    def label_names(self) -> list[str]:
        """The distinct labels, in the order they first appear."""
        used = set(self._codes.tolist())
        return [label for code, label in enumerate(self._labels) if code in used]

    def id_of(self, relative: str) -> int | None:
        """The id of the image at this relative POSIX path, or None."""
        raw = _raw(relative)
        h = hash(raw)
        pos = int(self._hashes.searchsorted(h))
        while pos < len(self._hashes) and self._hashes[pos] == h:
            row = int(self._hash_order[pos])
            start = int(self._starts[row])
            if self._blob[start : start + len(raw) + 1] == raw + b"\0":
                return int(self._ids[row])
            pos += 1
        return None

    def has_under(self, folder: str) -> bool:
        """Whether an image lies under this relative folder (``""``: whether there is any image)."""
        if not folder:
            return len(self) > 0
        return b"\0" + _raw(folder.rstrip("/")) + b"/" in self._blob


def label_for(relative: str, depth: int | None = None) -> str | None:
    """The label of a relative POSIX path: its parent folder (all of it: ``domain/class``), or None at the root.

    ``depth`` keeps part of a nested parent: ``N > 0`` its first N folders (``1``: ``domain``), ``N < 0`` its
    last -N folders (``-1``: ``class``); a path with fewer folders keeps what it has."""
    parent = relative.rsplit("/", 1)[0] if "/" in relative else ""
    if not parent:
        return None
    if depth:
        parts = parent.split("/")
        parent = "/".join(parts[:depth] if depth > 0 else parts[depth:])
    return parent


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
            db = _connect(path)
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
        # A read-only connection cannot roll back the journal a killed writer left behind ("hot journal"):
        # when one is there and the folder is writable, read through a read-write connection.
        journal = path.with_name(path.name + "-journal")
        if readonly and journal.exists() and os.access(path.parent, os.W_OK) and os.access(path, os.W_OK):
            readonly = False
        uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rw'}"
        try:
            db = _connect(uri, uri=True, check_same_thread=False, timeout=30.0)
            db.execute("SELECT id, path, size, mtime_ns, sha256, label FROM images LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise LookalikeError(
                f"{path}: unreadable catalog ({exc}); rebuild the index with `lookalike index FOLDER -o "
                f"{display_path(path.parent)} --rebuild`"
            ) from None
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
                    "INSERT INTO images (id, path, size, mtime_ns, sha256, label) "
                    "VALUES (?, CAST(? AS TEXT), ?, ?, ?, CAST(? AS TEXT))",
                    [(e.id, _name(e.path), e.size, e.mtime_ns, e.sha256, _name(e.label)) for e in entries],
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
        row = self._db.execute("SELECT id FROM images WHERE path = CAST(? AS TEXT)", (_name(relative_path),)).fetchone()
        return int(row[0]) if row else None

    # ----------------------------------------------------------------- the index folder's store (format 2)
    @classmethod
    def create_store(cls, path: str | os.PathLike[str]) -> Catalog:
        """Create an empty catalog with the tables of an index folder of format 2."""
        path = Path(path)
        if path.exists():
            raise LookalikeError(f"{path}: catalog already exists")
        try:
            db = _connect(path, timeout=30.0)
            db.executescript(STORE_SCHEMA)
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [("next_id", 0), ("next_shard", 0)])
            db.commit()
        except sqlite3.Error as exc:
            raise LookalikeError(f"{path}: cannot create the catalog ({exc})") from None
        return cls(db, path)

    def _fail(self, what: str, exc: sqlite3.Error) -> LookalikeError:
        return LookalikeError(f"{self.path}: cannot {what} ({exc})")

    def snapshot(self) -> Snapshot:
        """Every image row (as :class:`Entries`, with where its vector is), the committed shards, skipped
        files and counters, read in one transaction, so they agree even while a writer commits. The rows
        stream into columns: no object per row is kept."""
        places = array("q")

        def rows(cursor: sqlite3.Cursor) -> Iterator[tuple[int, bytes, int, int, str, bytes | None]]:
            for r in cursor:
                places.append(-1 if r[6] is None else r[6])
                places.append(-1 if r[7] is None else r[7])
                yield r[:6]

        try:
            self._db.execute("BEGIN")
            try:
                entries = Entries(rows(self._db.execute(f"SELECT {_ROW_COLUMNS}, shard, row FROM images ORDER BY id")))
                shards = dict(self._db.execute("SELECT shard, rows FROM shards").fetchall())
                skipped = self.skipped()
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            finally:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail("read the catalog", exc) from None
        where = np.frombuffer(places, dtype=np.int64).reshape(-1, 2) if places else np.empty((0, 2), np.int64)
        return Snapshot(entries, where[:, 0], where[:, 1], shards, skipped, meta)

    def file_states(self) -> dict[str, tuple[int, int, int]]:
        """Relative path -> (id, size, mtime_ns) of every image: what change detection compares."""
        rows = self._db.execute("SELECT path, id, size, mtime_ns FROM images")
        return {path: (id_, size, mtime) for path, id_, size, mtime in rows}

    def skipped(self) -> list[SkippedFile]:
        """The files recorded as unreadable, by path."""
        return [
            SkippedFile(*r) for r in self._db.execute("SELECT path, size, mtime_ns, reason FROM skipped ORDER BY path")
        ]

    def skipped_states(self) -> dict[str, tuple[int, int]]:
        """Relative path -> (size, mtime_ns) of every file recorded as unreadable."""
        return {p: (size, mtime) for p, size, mtime in self._db.execute("SELECT path, size, mtime_ns FROM skipped")}

    def located(self, ids: Sequence[int]) -> dict[int, Located]:
        """The rows of the given ids (missing ids are left out)."""
        out: dict[int, Located] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), _CHUNK):
            part = ids[start : start + _CHUNK]
            rows = self._db.execute(
                "SELECT id, path, size, mtime_ns, sha256, label, shard, row FROM images "
                f"WHERE id IN ({','.join('?' * len(part))})",
                part,
            )
            for r in rows:
                out[r[0]] = Located(CatalogEntry(*r[:6]), r[6], r[7])
        return out

    def ids_with_sha256(self, sha256: str) -> list[int]:
        """Ids of the images with this content hash."""
        return [r[0] for r in self._db.execute("SELECT id FROM images WHERE sha256 = ? ORDER BY id", (sha256,))]

    def ids_under(self, relative: str) -> list[int]:
        """Ids of the image at ``relative`` and of every image below it (``relative`` as a folder; "" is all)."""
        if not relative:
            return [r[0] for r in self._db.execute("SELECT id FROM images")]
        prefix = _raw(relative.rstrip("/")) + b"/"
        rows = self._db.execute(  # compared as bytes: a name that is not UTF-8 has no characters to count
            "SELECT id FROM images WHERE path = CAST(? AS TEXT) OR substr(CAST(path AS BLOB), 1, ?) = ?",
            (_name(relative), len(prefix), prefix),
        )
        return [r[0] for r in rows]

    def shard_rows(self) -> dict[int, int]:
        """Committed shards: number -> rows stored in the file."""
        return dict(self._db.execute("SELECT shard, rows FROM shards").fetchall())

    def live_rows(self) -> dict[int, int]:
        """Shard number -> how many of its rows the catalog still uses."""
        return dict(self._db.execute("SELECT shard, COUNT(*) FROM images WHERE shard IS NOT NULL GROUP BY shard"))

    def rows_in_shards(self, shards: Sequence[int]) -> list[tuple[int, int, int]]:
        """(id, shard, row) of the images whose vectors are in these shards, by shard then row."""
        out: list[tuple[int, int, int]] = []
        shards = [int(s) for s in shards]
        for start in range(0, len(shards), _CHUNK):
            part = shards[start : start + _CHUNK]
            out.extend(
                self._db.execute(
                    f"SELECT id, shard, row FROM images WHERE shard IN ({','.join('?' * len(part))})", part
                ).fetchall()
            )
        out.sort(key=lambda r: (r[1], r[2]))
        return out

    def meta(self) -> dict[str, int]:
        """The counters (``next_id``, ``next_shard``)."""
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def apply(
        self,
        *,
        delete_ids: Iterable[int] = (),
        put: Iterable[Located] = (),
        relocate: Iterable[tuple[int, int, int]] = (),
        add_shard: tuple[int, int] | None = None,
        drop_shards: Iterable[int] = (),
        skip: Iterable[SkippedFile] = (),
        unskip: Iterable[str] = (),
        meta: dict[str, int] | None = None,
    ) -> None:
        """Apply one change to the store in one transaction (all of it, or nothing).

        Args:
            delete_ids: images to remove.
            put: rows to write in full (an existing id is replaced: its path, metadata or vector moved).
                Their old rows are deleted first, so paths may swap between rows within one change.
            relocate: ``(id, shard, row)``: a vector copied to another place (compaction).
            add_shard: ``(shard, rows)`` of a shard file just renamed into place.
            drop_shards: shards no row uses any more (their files are deleted after the commit).
            skip: unreadable files to record (replacing an earlier record of the same path).
            unskip: paths no longer unreadable (indexed now, or gone).
            meta: counters to set.

        Raises:
            LookalikeError: the change breaks a constraint (two rows with one path) or cannot be written.
        """
        put = list(put)
        try:
            with self._db:
                if add_shard is not None:
                    self._db.execute("INSERT INTO shards (shard, rows) VALUES (?, ?)", add_shard)
                self._db.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in delete_ids])
                self._db.executemany("DELETE FROM images WHERE id = ?", [(p.entry.id,) for p in put])
                self._db.executemany(
                    "INSERT INTO images (id, path, size, mtime_ns, sha256, label, shard, row) "
                    "VALUES (?, CAST(? AS TEXT), ?, ?, ?, CAST(? AS TEXT), ?, ?)",
                    [(p.entry.id, _name(p.entry.path), p.entry.size, p.entry.mtime_ns, p.entry.sha256,
                      _name(p.entry.label), p.shard, p.row) for p in put],
                )  # fmt: skip
                self._db.executemany("UPDATE images SET shard = ?, row = ? WHERE id = ?",
                                     [(s, r, i) for i, s, r in relocate])  # fmt: skip
                self._db.executemany("DELETE FROM shards WHERE shard = ?", [(int(s),) for s in drop_shards])
                self._db.executemany("DELETE FROM skipped WHERE path = CAST(? AS TEXT)", [(_name(p),) for p in unskip])
                self._db.executemany(
                    "INSERT OR REPLACE INTO skipped (path, size, mtime_ns, reason) VALUES (CAST(? AS TEXT), ?, ?, ?)",
                    [(_name(s.path), s.size, s.mtime_ns, display_path(s.reason)) for s in skip],
                )
                if meta:
                    self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
        except sqlite3.Error as exc:
            raise self._fail("update the catalog", exc) from None
