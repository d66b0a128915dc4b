"""Incremental updates of an index folder: find what changed, embed only that, stream it out in shards.

Change detection, per file of the folder (or of the paths given to ``add``):

* same relative path, size and mtime as its catalog row -> unchanged, not read;
* a recorded unreadable file with the same size and mtime -> still skipped, not read again;
* anything else is a candidate. A candidate whose size equals some indexed image's size is hashed
  (sha256) first: the same content as its own old row -> only the metadata is refreshed; the content of
  a row whose file is gone or changed -> that row *moves* to the new path (same id, same vector); the
  content of another indexed image -> its vector is copied. No other file can share content with an
  indexed one, so the rest go straight to the encoder (which hashes them while decoding).
* rows whose file is gone (a full scan) are removed; a changed file keeps its row's id.

Metadata changes (moves, refreshes, removals) are one transaction before any embedding; new vectors are
committed shard by shard with their rows, so a killed run keeps everything committed and the next run
embeds only what is still missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._callbacks import emit
from ._memory import release_free_memory
from .catalog import CatalogEntry, Located, SkippedFile, label_for
from .data import file_problem, is_image_file, scan_images
from .decoding import sha256_file
from .embed import iter_embedded
from .errors import ImageDecodeError, LookalikeError, display_path
from .store import StoreWriter

logger = logging.getLogger(__name__)

FileState = tuple[str, int, int]  # relative POSIX path, size in bytes, mtime in nanoseconds
Refused = tuple[FileState, str]  # a file refused before reading, and why


@dataclass
class UpdateSummary:
    """What an index run did."""

    added: int = 0  # new files indexed (embedded, or sharing the vector of identical indexed content)
    updated: int = 0  # files whose content changed, indexed again under their id
    moved: int = 0  # files found under a new path by content hash: row updated, nothing re-embedded
    removed: int = 0  # rows dropped: file gone, removed explicitly, or changed into an unreadable file
    unchanged: int = 0  # same size and mtime (not read), or same content hash (metadata refreshed)
    skipped: int = 0  # unreadable files (reported, not indexed)
    embedded: int = 0  # images that went through the encoder in this run
    count: int = 0  # images in the index afterwards
    shards_written: int = 0  # shard files committed (compaction included)
    compacted: bool = False  # whether shards were rewritten to drop dead rows
    rebuilt: bool = False  # a new index was written from scratch (new folder, --rebuild, or another folder)
    leftovers_removed: int = 0  # files of an interrupted run cleaned up before starting
    repaired: int = 0  # rows of damaged or missing shard files dropped, their images embedded again
    seconds: float = 0.0  # wall-clock time of the run

    @property
    def changed(self) -> bool:
        """Whether anything in the index changed."""
        return bool(self.added or self.updated or self.moved or self.removed or self.compacted)

    def describe(self) -> str:
        """One line, e.g. ``added 3, updated 1, moved 2, removed 4, unchanged 20, skipped 1``."""
        return (
            f"added {self.added:,}, updated {self.updated:,}, moved {self.moved:,}, removed {self.removed:,}, "
            f"unchanged {self.unchanged:,}, skipped {self.skipped:,}"
        ) + (f", repaired {self.repaired:,} (a damaged vector shard)" if self.repaired else "")


def _state(prefix: int, path: Path | str, stat: Any = os.stat) -> FileState | None:
    """(relative path, size, mtime) of a file whose absolute path has ``prefix`` characters of root and
    separator; None when it vanished."""
    try:
        st = stat(path)
    except OSError:
        return None
    return str(path)[prefix:].replace(os.sep, "/"), st.st_size, st.st_mtime_ns


def _states(root: Path, paths: Sequence[Path]) -> list[FileState]:
    """(relative path, size, mtime) of each file under ``root``; files that vanished are left out."""
    prefix = len(str(root)) + 1
    return [s for p in paths if (s := _state(prefix, p)) is not None]


def _refused_states(root: Path, refused: Sequence[tuple[Path, str]]) -> list[Refused]:
    """What a scan refused (links out, special files), as (relative path, size, mtime) + reason: the
    link's own size and mtime, so a record stays valid until the link changes."""
    prefix = len(str(root)) + 1
    return [(s, why) for p, why in refused if (s := _state(prefix, p, os.lstat)) is not None]


@dataclass
class FolderStates:
    """A scanned folder: the files to index and those refused before reading."""

    files: list[FileState]
    refused: list[Refused]


def scan_folder(root: Path, *, follow_symlinks: bool = False) -> FolderStates:
    """Every image file under ``root`` (resolved), as (relative path, size, mtime), sorted by path, and
    the files refused before reading (see :func:`lookalike.data.scan_images`).

    Raises:
        LookalikeError: the folder is missing, empty or holds no images.
    """
    scan = scan_images(root, follow_symlinks=follow_symlinks)  # fails on a missing or empty folder first
    resolved = Path(root).expanduser().resolve()
    return FolderStates(_states(resolved, scan.files), _refused_states(resolved, scan.skipped))


def candidate_relatives(root: Path, path: str | os.PathLike[str]) -> list[str]:
    """What ``path`` may name in the catalog: absolute, relative to the current folder, or to ``root``.

    Raises:
        LookalikeError: the path is outside the indexed folder however it is read.
    """
    p = Path(path).expanduser()
    tries = [p] if p.is_absolute() else [Path.cwd() / p, root / p]
    out: list[str] = []
    for t in tries:
        for form in (Path(os.path.abspath(t)), t.resolve()):
            try:
                rel = form.relative_to(root).as_posix()
            except ValueError:
                continue
            rel = "" if rel == "." else rel
            if rel not in out:
                out.append(rel)
    if not out:
        raise LookalikeError(f"{display_path(path)}: not inside the indexed folder {display_path(root)}")
    return out


def _place(root: Path, path: str | os.PathLike[str]) -> Path:
    """Where a path given to ``add`` is: absolute, relative to the current folder, or else to ``root``;
    ``..`` taken lexically and links in its folders resolved, but not a link that the path itself is.

    Raises:
        LookalikeError: nothing is there, or it is outside the indexed folder.
    """
    p = Path(path).expanduser()
    if not p.is_absolute():
        here = Path.cwd() / p
        p = here if os.path.lexists(here) or not os.path.lexists(root / p) else root / p
    absolute = Path(os.path.abspath(p))
    if not os.path.lexists(absolute):
        raise LookalikeError(f"{display_path(path)}: no such file or folder")
    placed = absolute if absolute == root else Path(os.path.realpath(absolute.parent)) / absolute.name
    if placed != root and root not in placed.parents:
        raise LookalikeError(f"{display_path(path)}: not inside the indexed folder {display_path(root)}")
    return placed


def states_of_paths(
    root: Path, paths: Sequence[str | os.PathLike[str]], *, follow_symlinks: bool = False
) -> FolderStates:
    """The image files named by ``paths`` (files, or folders searched recursively) under ``root``, and
    those of them refused before reading (links out of the folder, FIFOs, devices), with the reason.

    Raises:
        LookalikeError: a path that does not exist, is outside the indexed folder, or is not an image file.
    """
    found: dict[str, FileState] = {}
    refused: dict[str, Refused] = {}
    for path in paths:
        p = _place(root, path)
        if p.is_dir() and not p.is_symlink():
            scan = scan_images(p, follow_symlinks=follow_symlinks, links_inside=root)
            files, skipped = scan.files, scan.skipped
        elif not is_image_file(p):
            raise LookalikeError(f"{display_path(path)}: not an image file (by its extension)")
        else:
            problem = file_problem(p, root, follow_symlinks=follow_symlinks)
            files, skipped = ([], [(p, problem)]) if problem else ([p], [])
        for state in _states(root, files):
            found[state[0]] = state
        for item in _refused_states(root, skipped):
            refused[item[0][0]] = item
    order = lambda rel: rel.split("/")  # noqa: E731
    return FolderStates(
        sorted(found.values(), key=lambda st: order(st[0])), sorted(refused.values(), key=lambda r: order(r[0][0]))
    )


@dataclass(slots=True)
class _Item:
    """A file to index: its vector comes from the encoder (``source`` None) or from another row."""

    rel: str
    size: int
    mtime_ns: int
    id: int
    updated: bool  # its path had a row before (counted as updated, not added)
    sha256: str | None = None
    source: int | None = None  # id whose stored vector this file shares (identical content)


class _ShardBuffer:
    """Vectors waiting to be committed as one shard, with the catalog changes that go with them."""

    def __init__(self, writer: StoreWriter, shard_size: int, summary: UpdateSummary) -> None:
        self.writer = writer
        self.size = shard_size
        self.summary = summary
        self.vectors = np.empty((shard_size, writer.dim), dtype=np.float32)
        self.entries: list[CatalogEntry] = []
        self.skip: list[SkippedFile] = []
        self.unskip: list[str] = []
        self.delete: list[int] = []

    def push(self, entry: CatalogEntry, vector: np.ndarray, was_skipped: bool) -> None:
        self.vectors[len(self.entries)] = vector
        self.entries.append(entry)
        if was_skipped:
            self.unskip.append(entry.path)
        if len(self.entries) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not (self.entries or self.skip or self.unskip or self.delete):
            return
        n = len(self.entries)
        self.writer.commit(
            vectors=self.vectors[:n] if n else None, entries=self.entries, delete_ids=self.delete,
            skip=self.skip, unskip=self.unskip,
        )  # fmt: skip
        self.summary.shards_written += 1 if n else 0
        self.entries, self.skip, self.unskip, self.delete = [], [], [], []


def synchronize(
    writer: StoreWriter,
    model: Any,
    root: Path,
    states: Sequence[FileState],
    *,
    full: bool,
    refused: Sequence[Refused] = (),
    remove: Sequence[str] = (),
    batch_size: int = 256,
    num_workers: int = 1,
    shard_size: int = 4096,
    callbacks: Sequence[Any] = (),
) -> UpdateSummary:
    """Bring the index in ``writer``'s folder up to date with the files in ``states``.

    Args:
        writer: the open writer of the index folder.
        model: the index's model, at the index's precision.
        root: the indexed folder (resolved).
        states: (relative path, size, mtime) of the files to index.
        full: ``states`` is the whole folder: rows of files not in it are removed (and can be moves).
        refused: files found but refused before reading (a link out of the folder, a FIFO), with the
            reason: recorded as skipped, counted, reported, and a row they had is removed.
        remove: relative paths (files or folders) whose rows to remove (``lookalike remove``).
        batch_size: images per forward pass.
        num_workers: DataLoader processes decoding images.
        shard_size: vectors per shard file (and per commit).
        callbacks: objects with optional ``on_embed(done, total)`` and ``on_skip(path, reason)``.

    Returns:
        What changed (``count`` is filled in by the caller).
    """
    t0 = time.perf_counter()
    summary = UpdateSummary(leftovers_removed=writer.leftovers)
    summary.repaired = writer.drop_damaged_shards()  # their images are candidates again below
    catalog = writer.catalog
    known = catalog.file_states()  # path -> (id, size, mtime)
    skipped_known = {s.path: s for s in catalog.skipped()}
    candidates: list[FileState] = []
    for state in states:
        rel, size, mtime = state
        old = known.get(rel)
        record = skipped_known.get(rel)
        if old is not None and old[1] == size and old[2] == mtime:
            summary.unchanged += 1
        elif old is None and record is not None and (record.size, record.mtime_ns) == (size, mtime):
            summary.skipped += 1  # tried before, unchanged since: not read again, reported again
            emit(callbacks, "on_skip", root / rel, record.reason)
        else:
            candidates.append(state)
    refusals: list[SkippedFile] = []
    for (rel, size, mtime), reason in refused:
        summary.skipped += 1
        emit(callbacks, "on_skip", root / rel, reason)
        record = skipped_known.get(rel)
        if record is None or (record.size, record.mtime_ns, record.reason) != (size, mtime, reason):
            refusals.append(SkippedFile(rel, size, mtime, reason))
    refused_paths = {r[0][0] for r in refused}
    # Rows whose file is gone (their content may turn up elsewhere), changed, or refused now.
    unskip: list[str] = []
    if full:
        present = {s[0] for s in states}
        gone = [v[0] for p, v in known.items() if p not in present]
        unskip += [p for p in skipped_known if p not in present and p not in refused_paths]
        del present
    elif refused_paths:
        gone = [known[p][0] for p in refused_paths if p in known]
    else:
        gone = []
    explicit: set[int] = set()
    for rel in remove:
        explicit.update(catalog.ids_under(rel))
        prefix = rel.rstrip("/") + "/"
        unskip += [p for p in skipped_known if p == rel or not rel or p.startswith(prefix)]
    changed = [known[s[0]][0] for s in candidates if s[0] in known]
    released = catalog.located([*gone, *changed, *explicit])

    # Hash the candidates that may share content with an indexed image: only equal sizes can.
    sizes = {v[1] for v in known.values()}
    digests: dict[str, str] = {}
    for rel, size, _ in candidates:
        if size in sizes:
            with contextlib.suppress(OSError, ImageDecodeError):  # the encoder's loader reports it
                digests[rel] = sha256_file(root / rel)
    released_by_sha: dict[str, list[int]] = defaultdict(list)
    for id_ in sorted(released):
        if id_ not in explicit:
            released_by_sha[released[id_].entry.sha256].append(id_)
    claimed: dict[int, Located] = {}  # released row -> its new place (refreshed or moved)
    placed: set[str] = set()
    for rel, size, mtime in candidates:  # same path, same content: refresh size and mtime
        old = known.get(rel)
        h = digests.get(rel)
        if h is not None and old is not None and old[0] in released and released[old[0]].entry.sha256 == h:
            x = released[old[0]]
            claimed[old[0]] = replace(x, entry=replace(x.entry, size=size, mtime_ns=mtime))
            placed.add(rel)
            summary.unchanged += 1
    for rel, size, mtime in candidates:  # content of a gone or changed row: that row moves here
        h = digests.get(rel)
        if rel in placed or h is None:
            continue
        for id_ in released_by_sha.get(h, ()):
            if id_ not in claimed:
                x = released[id_]
                claimed[id_] = Located(CatalogEntry(id_, rel, size, mtime, h, label_for(rel)), x.shard, x.row)
                placed.add(rel)
                summary.moved += 1
                break
    items: list[_Item] = []
    for rel, size, mtime in candidates:
        if rel in placed:
            continue
        old = known.get(rel)
        reuse = old is not None and old[0] not in claimed and old[0] not in explicit
        item = _Item(rel, size, mtime, old[0] if reuse else writer.new_id(), old is not None)
        h = digests.get(rel)
        if h is not None:
            item.sha256 = h
            item.source = next((i for i in catalog.ids_with_sha256(h) if i in claimed or i not in released), None)
        items.append(item)
    in_place = {it.id for it in items if it.id in released}
    delete = [i for i in released if i not in claimed and i not in in_place]
    summary.removed += len(delete)
    unskip += [x.entry.path for x in claimed.values() if x.entry.path in skipped_known]
    moved_rows = [x for x in claimed.values() if x != released[x.entry.id]]
    if delete or moved_rows or unskip or refusals:
        writer.commit(put=moved_rows, delete_ids=delete, unskip=sorted(set(unskip)), skip=refusals)
    del known, released_by_sha, digests

    # New vectors, shard by shard: copies of stored vectors first, then the encoder's.
    buffer = _ShardBuffer(writer, shard_size, summary)
    copies = [it for it in items if it.source is not None]
    for start in range(0, len(copies), shard_size):
        part = copies[start : start + shard_size]
        sources = catalog.located([it.source for it in part])
        vectors = writer.read([sources[it.source] for it in part])
        for it, vector in zip(part, vectors):
            entry = CatalogEntry(it.id, it.rel, it.size, it.mtime_ns, it.sha256 or "", label_for(it.rel))
            buffer.push(entry, vector, it.rel in skipped_known)
            summary.updated += it.updated
            summary.added += not it.updated
    to_embed = [it for it in items if it.source is None]
    del items, copies
    if to_embed:
        base = str(root) + os.sep
        paths = [base + it.rel for it in to_embed]  # strings: a million Path objects would cost 200 MB
        for batch in iter_embedded(model, paths, batch_size=batch_size, num_workers=num_workers, callbacks=callbacks):
            for pos, vector, digest in zip(batch.positions, batch.vectors, batch.digests):
                it = to_embed[pos]
                entry = CatalogEntry(it.id, it.rel, it.size, it.mtime_ns, digest, label_for(it.rel))
                buffer.push(entry, vector, it.rel in skipped_known)
                summary.embedded += 1
                summary.updated += it.updated
                summary.added += not it.updated
            for pos, reason in batch.failures:
                it = to_embed[pos]
                buffer.skip.append(SkippedFile(it.rel, it.size, it.mtime_ns, reason))
                summary.skipped += 1
                if it.id in in_place:  # it had a row: the file became unreadable, so the row goes
                    buffer.delete.append(it.id)
                    summary.removed += 1
            del batch
            release_free_memory()
    buffer.flush()
    summary.compacted = writer.compact(shard_size)
    summary.seconds = time.perf_counter() - t0
    return summary
