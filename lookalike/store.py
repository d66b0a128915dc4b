"""The index folder on disk (format 2): a SQLite catalog that is the source of truth, append-only vector shards.

    INDEX_DIR/
      manifest.json       format, version, root folder, model (extractor, fingerprint, preprocessing), precision;
                          count and unreadable files as of the last completed run (informational)
      catalog.sqlite      images (id, path, size, mtime_ns, sha256, label, shard, row), shards, skipped, meta
      vectors-00000.npy   raw float32 embeddings (rows, d), written once, never modified
      vectors-00001.npy   ...
      model/              the model directory the vectors were made with
      .lock               flock()ed by the one process writing the folder

Why a kill at any moment leaves a loadable, consistent index:

* A shard file is written under a temporary name, fsynced, renamed into place and the folder fsynced
  *before* the catalog transaction that adds its ``shards`` row and the image rows pointing into it.
  SQLite commits that transaction atomically (rollback journal), so a committed row always points at a
  complete file; a kill before the commit leaves an unreferenced file, which the next writer deletes.
* Deletions, moves and metadata refreshes are catalog transactions only; the rows they orphan in shard
  files are dead space that compaction reclaims: live rows are copied into new shards, and one transaction
  repoints them and drops the old shards' rows; the old files are deleted after it commits (or, after a
  kill, by the next writer).
* Readers (:func:`read_vectors`) take one read transaction's snapshot of the catalog and load exactly the
  rows it names, so they never see a half-applied change; a file deleted by a concurrent compaction makes
  them read the catalog again.
* The manifest and the model are written when the folder is created (a temporary sibling renamed into
  place), and the manifest is replaced atomically after each run; nothing that loading relies on is in it
  except what never changes (format, model, root, precision).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._fs import atomic_write_with, current_umask, fsync_dir, hold_lock_fd, make_temp_dir, release_lock_fd
from .catalog import Catalog, CatalogEntry, Entries, Located, SkippedFile, Snapshot
from .errors import LookalikeError
from .index import ExactIndex
from .index.exact import l2_normalize

try:  # POSIX; elsewhere a second writer is not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

INDEX_FORMAT = "lookalike-index"
INDEX_FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
CATALOG_NAME = "catalog.sqlite"
MODEL_SUBDIR = "model"
LOCK_NAME = ".lock"
DEFAULT_SHARD_SIZE = 4096  # vectors per shard file: what a killed run can lose, and what indexing holds in memory
_SHARD_RE = re.compile(r"vectors-(\d+)\.npy")
_COMPACT_DEAD_FRACTION = 0.25  # rewrite shards when more than this share of stored rows is dead
_COMPACT_SMALL_SHARDS = 16  # ... or when this many shards are less than half full (many small `add`s)


def shard_path(directory: Path, shard: int) -> Path:
    """The file of shard number ``shard``."""
    return directory / f"vectors-{shard:05d}.npy"


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder into place, replacing an old one only after success."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def init_store(directory: Path, model: Any, manifest: dict[str, Any]) -> None:
    """Write an empty index (model, catalog, manifest) into ``directory``, a new empty folder."""
    from .serialization import atomic_write_json

    model.save(directory / MODEL_SUBDIR)
    Catalog.create_store(directory / CATALOG_NAME).close()
    atomic_write_json(directory / MANIFEST_NAME, manifest)


def create_store(directory: Path, model: Any, manifest: dict[str, Any]) -> None:
    """Create an empty index folder at ``directory`` atomically (assembled beside it, renamed into place)."""
    tmp = make_temp_dir(directory)
    try:
        init_store(tmp, model, manifest)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_shard(path: Path, rows: int, dim: int) -> np.ndarray:
    """A shard file, memory-mapped, checked against what the catalog says it holds."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise LookalikeError(
            f"{path}: unreadable vector shard ({exc}); running `lookalike index` on the folder again "
            "re-embeds its images"
        ) from None
    if array.dtype != np.float32 or array.shape != (rows, dim):
        raise LookalikeError(
            f"{path}: vector shard is {array.dtype} {array.shape}, the catalog says float32 ({rows}, {dim})"
        )
    return array


def read_vectors(directory: Path, dim: int) -> tuple[Entries, ExactIndex, list[SkippedFile]]:
    """Load an index folder's entries and their vectors, as of one committed catalog state.

    Raises:
        LookalikeError: an unreadable catalog or shard, or a catalog row without its vector.
    """
    for attempt in range(5):
        catalog = Catalog.open(directory / CATALOG_NAME)
        try:
            state = catalog.snapshot()
        finally:
            catalog.close()
        try:
            return state.entries, _gather(directory, state, dim), state.skipped
        except FileNotFoundError as exc:  # a writer compacted the shards after our snapshot: read it again
            logger.debug("%s: %s vanished while loading (attempt %d)", directory, exc.filename, attempt + 1)
    raise LookalikeError(f"{directory}: shard files keep changing while loading; is a writer compacting it?")


def _gather(directory: Path, state: Snapshot, dim: int) -> ExactIndex:
    n = len(state.entries)
    vectors = np.empty((n, dim), dtype=np.float32)
    norms = np.empty(n, dtype=np.float32)
    shard_of, row_of = state.shard, state.row
    numbers, which = np.unique(shard_of, return_inverse=True)  # the shards used; per entry, which of them
    rows_in = np.array([state.shards.get(int(s), -1) for s in numbers], dtype=np.int64)[which] if n else shard_of
    bad = np.flatnonzero((shard_of < 0) | (rows_in < 0) | (row_of < 0) | (row_of >= rows_in))
    if len(bad):
        pos = int(bad[0])
        e = state.entries[int(state.entries.ids[pos])]
        shard, row = (None if v < 0 else int(v) for v in (shard_of[pos], row_of[pos]))
        raise LookalikeError(
            f"{directory / CATALOG_NAME}: image {e.id} ({e.path}) has no stored vector "
            f"(shard {shard}, row {row}); rebuild the index"
        )
    by_shard = np.argsort(which, kind="stable")  # positions grouped by shard
    bounds = np.searchsorted(which[by_shard], np.arange(len(numbers) + 1))
    for k, shard in enumerate(numbers.tolist()):
        where = by_shard[bounds[k] : bounds[k + 1]]
        array = _load_shard(shard_path(directory, shard), state.shards[shard], dim)
        unit, raw_norms = l2_normalize(array[row_of[where]])  # the same arithmetic as ExactIndex.add
        vectors[where] = unit
        norms[where] = raw_norms
    index = ExactIndex(dim)
    index.vectors, index.norms, index.ids = vectors, norms, state.entries.ids.copy()
    return index


class StoreWriter:
    """The one process writing an index folder: holds its lock, removes what killed runs left, commits.

    Use as a context manager. Every change goes through :meth:`commit`: an optional new shard file, then
    one catalog transaction.
    """

    def __init__(self, directory: Path, dim: int) -> None:
        self.directory = directory
        self.dim = int(dim)
        self._lock_fd: int | None = os.open(
            directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~current_umask()
        )
        hold_lock_fd(self._lock_fd)  # forked decoding workers close their copy: the lock dies with this process
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._unlock()
                raise LookalikeError(
                    f"{directory}: another lookalike process is writing this index; wait for it to finish"
                ) from None
        try:
            self.catalog = Catalog.open(directory / CATALOG_NAME, readonly=False)
            self.leftovers = self._clean()
            meta = self.catalog.meta()
        except BaseException:
            self._unlock()
            raise
        self.next_id = int(meta.get("next_id", 0))
        self.next_shard = int(meta.get("next_shard", 0))

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the catalog and release the lock."""
        if getattr(self, "catalog", None) is not None:
            self.catalog.close()
            self.catalog = None  # type: ignore[assignment]
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            release_lock_fd(self._lock_fd)
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _clean(self) -> int:
        """Delete shard files no committed row refers to and temporary files of killed writes."""
        committed = set(self.catalog.shard_rows())
        removed = 0
        for p in self.directory.iterdir():
            m = _SHARD_RE.fullmatch(p.name)
            if (m and int(m.group(1)) not in committed) or (p.name.startswith(".") and p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("%s: removed %d file(s) an interrupted run left behind", self.directory, removed)
            fsync_dir(self.directory)
        return removed

    def drop_damaged_shards(self) -> int:
        """Forget the rows of committed shard files that are missing or damaged (truncated, another shape,
        not an array), so the run embeds their images again; returns how many rows were dropped.

        Only what the file's header and size show is checked (a flipped bit inside the vectors is not).
        """
        stored = self.catalog.shard_rows()
        damaged = []
        for shard, rows in stored.items():
            try:
                _load_shard(shard_path(self.directory, shard), rows, self.dim)
            except (LookalikeError, FileNotFoundError) as exc:
                logger.warning("%s: %s; its images are embedded again", self.directory, exc)
                damaged.append(shard)
        if not damaged:
            return 0
        ids = [i for i, _, _ in self.catalog.rows_in_shards(damaged)]
        self.commit(delete_ids=ids, drop_shards=damaged)
        return len(ids)

    def new_id(self) -> int:
        """An id no image of this index has had (ids are never reused)."""
        self.next_id += 1
        return self.next_id - 1

    def commit(
        self,
        *,
        vectors: np.ndarray | None = None,
        entries: Sequence[CatalogEntry] = (),
        put: Sequence[Located] = (),
        delete_ids: Sequence[int] = (),
        skip: Sequence[SkippedFile] = (),
        unskip: Sequence[str] = (),
        relocate: Sequence[tuple[int, int, int]] = (),
        drop_shards: Sequence[int] = (),
    ) -> None:
        """Write ``vectors`` as a new shard (row ``i`` is ``entries[i]``'s) and commit it with the rest.

        The shard file is in place (and fsynced) before the transaction commits; the files of
        ``drop_shards`` are deleted after it.
        """
        put = list(put)
        add_shard = None
        if vectors is not None and len(entries):
            if len(vectors) != len(entries):
                raise LookalikeError(f"{len(vectors)} vectors for {len(entries)} catalog rows")
            shard = self.next_shard
            array = np.ascontiguousarray(vectors, dtype=np.float32)
            atomic_write_with(shard_path(self.directory, shard), lambda fh: np.save(fh, array, allow_pickle=False))
            self.next_shard += 1
            add_shard = (shard, len(entries))
            put += [Located(e, shard, i) for i, e in enumerate(entries)]
        self.catalog.apply(
            delete_ids=delete_ids, put=put, relocate=relocate, add_shard=add_shard, drop_shards=drop_shards,
            skip=skip, unskip=unskip, meta={"next_id": self.next_id, "next_shard": self.next_shard},
        )  # fmt: skip
        for shard in drop_shards:
            shard_path(self.directory, shard).unlink(missing_ok=True)

    def read(self, located: Sequence[Located]) -> np.ndarray:
        """The stored raw vectors of these rows, in order."""
        out = np.empty((len(located), self.dim), dtype=np.float32)
        shards = self.catalog.shard_rows()
        by_shard: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for pos, x in enumerate(located):
            by_shard[x.shard].append((pos, x.row))
        for shard, pairs in by_shard.items():
            where = np.array(pairs, dtype=np.int64)
            out[where[:, 0]] = _load_shard(shard_path(self.directory, shard), shards[shard], self.dim)[where[:, 1]]
        return out

    def compact(self, shard_size: int, *, force: bool = False) -> bool:
        """Rewrite shards full of dead rows (or many small ones) into full shards; True when it did.

        Each new shard is committed together with the move of its rows, and an old shard is dropped in
        the same transaction as the move of its last live row, so a kill at any point loses nothing.
        """
        stored = self.catalog.shard_rows()
        live = self.catalog.live_rows()
        total, used = sum(stored.values()), sum(live.values())
        dirty = [s for s in stored if live.get(s, 0) < stored[s]]
        small = [s for s in stored if live.get(s, 0) < shard_size // 2]
        if force:
            victims = sorted(stored)
        elif total and (total - used) > _COMPACT_DEAD_FRACTION * total:
            victims = sorted(set(dirty) | (set(small) if len(small) > 1 else set()))
        elif len(small) >= _COMPACT_SMALL_SHARDS:
            victims = sorted(set(small) | set(dirty))
        else:
            return False
        if not victims:
            return False
        logger.info("%s: compacting %d shard(s): %d of %d stored vectors are live", self.directory, len(victims),
                    used, total)  # fmt: skip
        rows = self.catalog.rows_in_shards(victims)
        rows_of: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for id_, shard, row in rows:
            rows_of[shard].append((id_, row))
        buf = np.empty((0, self.dim), dtype=np.float32)
        buf_ids: list[int] = []
        finished: list[int] = []  # victims whose live rows are all in the buffer or written
        last_row_of: dict[int, int] = {}  # victim -> index in the stream of its last live row

        written = 0  # rows of the stream already in new shards

        def flush(n: int) -> None:
            nonlocal buf, buf_ids, written
            ids, vecs = buf_ids[:n], buf[:n]
            shard = self.next_shard
            relocate = [(i, shard, r) for r, i in enumerate(ids)]
            written += n
            done = [s for s in finished if last_row_of[s] < written]
            atomic_write_with(shard_path(self.directory, shard), lambda fh: np.save(fh, np.ascontiguousarray(vecs)))
            self.next_shard += 1
            self.catalog.apply(relocate=relocate, add_shard=(shard, n), drop_shards=done,
                               meta={"next_id": self.next_id, "next_shard": self.next_shard})  # fmt: skip
            for s in done:
                shard_path(self.directory, s).unlink(missing_ok=True)
                finished.remove(s)
            buf, buf_ids = buf[n:], buf_ids[n:]

        streamed = 0
        for shard in victims:
            pairs = rows_of.get(shard, [])
            if pairs:
                array = _load_shard(shard_path(self.directory, shard), stored[shard], self.dim)
                picked = np.asarray(array[np.array([r for _, r in pairs], dtype=np.int64)])
                buf = np.concatenate([buf, picked])
                buf_ids.extend(i for i, _ in pairs)
                streamed += len(pairs)
            last_row_of[shard] = streamed - 1
            finished.append(shard)
            while len(buf_ids) >= shard_size:
                flush(shard_size)
        if buf_ids:
            flush(len(buf_ids))
        if finished:  # victims without live rows (or all flushed already)
            self.catalog.apply(drop_shards=finished, meta={"next_id": self.next_id, "next_shard": self.next_shard})
            for s in finished:
                shard_path(self.directory, s).unlink(missing_ok=True)
        fsync_dir(self.directory)
        return True
