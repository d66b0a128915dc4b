"""The Python API users hold: build, load and query an index of a folder of images.

    >>> import lookalike
    >>> model = lookalike.train("photos/", "model/")          # doctest: +SKIP
    >>> index = lookalike.Index.build("photos/", model, "photos.index")   # doctest: +SKIP
    >>> for hit in index.search("query.jpg", k=5):             # doctest: +SKIP
    ...     print(hit.rank, f"{hit.score:.3f}", hit.path)

An index directory (format 2, see :mod:`lookalike.store`) holds ``manifest.json`` (format, the model's
fingerprint, the root folder), ``catalog.sqlite`` (the source of truth: one row per image with the place of
its vector), append-only ``vectors-NNNNN.npy`` shards and a copy of the model in ``model/`` so it is
self-contained. Building into an existing index of the same folder and model updates it in place
(:mod:`lookalike.updates`): only new or changed files are embedded, moved files are recognised by their
content hash, and every step is committed so that a killed run loses at most one shard of work.
Version-1 indexes (one ``vectors.npy``) still load and are rebuilt by the next ``build``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ._callbacks import emit
from ._fs import make_temp_dir
from ._version import __version__
from .catalog import Catalog, CatalogEntry, Entries, SkippedFile, label_for
from .data import find_images, is_image_file, scan_readable, thumbnail
from .decoding import open_indexed_file
from .embed import embed_files
from .errors import LookalikeError, display_path
from .index import ExactIndex
from .metrics import DEFAULT_KS, EvaluationResult, check_options, evaluate_vectors
from .models import Model, compute_threads
from .models.model import ImageLike
from .models.spec import parse_spec, resolve_model
from .serialization import atomic_write_json, read_json
from .store import (
    CATALOG_NAME,
    DEFAULT_SHARD_SIZE,
    INDEX_FORMAT,
    INDEX_FORMAT_VERSION,
    MANIFEST_NAME,
    MODEL_SUBDIR,
    StoreWriter,
    create_store,
    init_store,
    read_vectors,
    replace_dir,
)
from .updates import FolderStates, UpdateSummary, candidate_relatives, scan_folder, states_of_paths, synchronize

logger = logging.getLogger(__name__)

OLD_FORMAT_VERSIONS = (1,)  # loaded (vectors.npy + catalog) but not updated in place: the next build rebuilds them

Query = ImageLike | int
SMALL_QUERY_BATCH = 8  # up to this many queries count as "a few" for the thread plan in search_batch


class _OtherLoad:
    """How busy the rest of the machine is: CPU time of other processes (Linux ``/proc/stat``'s busy time
    minus this process's own, all its threads) per second, over the last window of at least ``window``
    seconds. Read at most once a window (34 us), so a query pays a clock read; None until two readings
    exist, and always None where ``/proc/stat`` is missing."""

    def __init__(self, window: float = 0.1, idle_below: float = 0.5) -> None:
        self.window = window  # seconds between readings (/proc/stat counts in 10 ms ticks)
        self.idle_below = idle_below  # cores used by others under which the machine counts as idle
        self._last: tuple[float, float, float] | None = None  # (monotonic time, machine busy s, own CPU s)
        self._cores: float | None = None
        self.clock = time.monotonic  # (tests replace these two)
        self.own_cpu_seconds = lambda: sum(os.times()[:2])  # user + system of every thread of this process

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat", "rb") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        if len(fields) < 5:
            return None
        return (sum(fields) - fields[3] - fields[4]) / _CLOCK_TICKS  # all but idle and iowait

    def others(self) -> float | None:
        """Cores other processes kept busy over the last window, or None when unknown."""
        now = self.clock()
        last = self._last
        if last is not None and now - last[0] < self.window:
            return self._cores
        busy = self._busy_seconds()
        if busy is None:
            return None
        own = self.own_cpu_seconds()
        if last is not None:
            self._cores = max(0.0, (busy - last[1] - (own - last[2])) / (now - last[0]))
        self._last = (now, busy, own)
        return self._cores

    def idle(self) -> bool:
        """True when other processes used under ``idle_below`` cores lately (False when unknown)."""
        others = self.others()
        return others is not None and others < self.idle_below


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_OTHER_LOAD = _OtherLoad()  # the machine's load as the thread plan of Index.search_batch sees it


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int  # 1-based position in the ranking
    id: int  # the image's id in the index catalog
    path: Path  # absolute path of the image file
    score: float  # cosine similarity (higher is closer) or euclidean distance (lower is closer)
    label: str | None = None  # the image's parent folder relative to the indexed root, if any

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def is_index_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds an index manifest."""
    return (Path(path) / MANIFEST_NAME).is_file()


_replace_dir = replace_dir  # the old name


def check_index_target(out_dir: Path) -> None:
    """Refuse (before any work) to write an index over a folder that holds something else."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not is_index_dir(out_dir))):
        raise LookalikeError(f"{out_dir}: exists and is not a lookalike index; refusing to replace it")


@dataclass(frozen=True)
class LabelRow:
    """One row of a labels file."""

    path: str  # as written: absolute, or relative to the indexed folder (or to a query folder)
    label: str
    line: int  # 1-based line number in the file


def read_label_file(path: str | os.PathLike[str]) -> list[LabelRow]:
    """Read a ``path,label`` file (CSV, TSV or ``;``-separated; the delimiter is sniffed).

    The first row is a header, and skipped, when its path is not an image file name. Blank lines are
    skipped; a path listed twice must have the same label both times.

    Raises:
        LookalikeError: the file is missing or unreadable, or a row (named by its line) is malformed.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LookalikeError(f"{path}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LookalikeError(f"{path}: unreadable labels file ({exc})") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",\t;").delimiter
    except csv.Error:
        delimiter = "\t" if "\t" in first else ","
    rows: list[LabelRow] = []
    seen: dict[str, LabelRow] = {}
    first_row = True
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for fields in reader:
            line = reader.line_num
            fields = [f.strip() for f in fields]
            while fields and not fields[-1]:
                fields.pop()
            if not fields:
                continue
            if first_row and len(fields) == 2 and not is_image_file(fields[0]):
                first_row = False  # a header
                continue
            first_row = False
            if len(fields) != 2:
                raise LookalikeError(
                    f"{path}: line {line}: expected 2 fields (path{delimiter}label), got {len(fields)}"
                )
            if not fields[0] or not fields[1]:
                raise LookalikeError(f"{path}: line {line}: empty {'path' if not fields[0] else 'label'}")
            row = LabelRow(fields[0], fields[1], line)
            earlier = seen.get(row.path)
            if earlier is not None and earlier.label != row.label:
                raise LookalikeError(
                    f"{path}: line {line}: {row.path} is labelled {earlier.label!r} on line {earlier.line}"
                )
            seen[row.path] = row
            rows.append(row)
    except csv.Error as exc:
        raise LookalikeError(f"{path}: line {reader.line_num}: {exc}") from None
    if not rows:
        raise LookalikeError(f"{path}: no path{delimiter}label rows")
    return rows


def _label_lookup(rows: Iterable[LabelRow], bases: Sequence[Path], source: Path) -> dict[str, str]:
    """Normalised absolute path -> label; a relative path is tried against every base folder."""
    out: dict[str, tuple[str, int]] = {}
    for row in rows:
        p = Path(row.path).expanduser()
        keys = [os.path.realpath(p)] if p.is_absolute() else [os.path.normpath(b / p) for b in bases]
        for key in keys:
            earlier = out.get(key)
            if earlier is not None and earlier[0] != row.label:
                raise LookalikeError(
                    f"{source}: line {row.line}: {row.path} is the image of line {earlier[1]}, labelled {earlier[0]!r}"
                )
            out[key] = (row.label, row.line)
    return {k: v[0] for k, v in out.items()}


def _new_manifest(model: Model, root: Path, follow_symlinks: bool = False) -> dict[str, Any]:
    """The manifest of a new index of ``root`` made with ``model`` (at its current precision)."""
    return {
        "format": INDEX_FORMAT,
        "format_version": INDEX_FORMAT_VERSION,
        "lookalike_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "root": str(root),
        "follow_symlinks": follow_symlinks,  # links to files outside the root are indexed (and served)
        "count": 0,
        "skipped": [],
        "backend": "exact",
        "precision": model.precision,
        "model": {
            "extractor": model.extractor,
            "fingerprint": model.fingerprint,
            "preset": model.preset,
            "architecture": model.architecture,
            "embedding_dim": model.embedding_dim,
            "preprocessing": model.preprocessing.to_dict(),
        },
    }


ANN_SUBDIR = "ann"  # the saved ANN structure of an index whose backend is hnsw or ivfpq
BACKEND_CHOICES = ("auto", "exact", "hnsw", "ivfpq")


def _ids_signature(ids: np.ndarray) -> str:
    """Names the exact set of ids an ANN structure was built from (it is stale when they change)."""
    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()[:32]


def _skipped_row(root: Path, record: dict[str, Any]) -> SkippedFile | None:
    """A manifest's skipped-file record as a catalog row (None when it is outside the root or gone)."""
    try:
        p = Path(record["path"])
        st = p.stat()
        return SkippedFile(p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns, str(record["reason"]))
    except (KeyError, OSError, ValueError):
        return None


def _same_model(directory: Path, manifest: dict[str, Any], model: Model) -> None:
    """Refuse to mix models in one index: same weights, embedding size and preprocessing."""
    built = manifest.get("model", {})
    if (
        built.get("fingerprint") != model.fingerprint
        or built.get("embedding_dim") != model.embedding_dim
        or built.get("preprocessing") != model.preprocessing.to_dict()
    ):
        size = (built.get("preprocessing") or {}).get("image_size", "?")
        raise LookalikeError(
            f"{directory}: index was built with {built.get('extractor', '?')} model "
            f"{str(built.get('fingerprint'))[:12]} ({built.get('embedding_dim')}-d, {size} px), not with "
            f"{model.extractor} model {model.fingerprint[:12]} ({model.embedding_dim}-d, "
            f"{model.preprocessing.image_size} px); write to another index directory (-o) or start over (--rebuild)"
        )


def _update_dir(
    directory: Path,
    model: Model,
    root: Path,
    scan: FolderStates,
    *,
    full: bool,
    remove: Sequence[str] = (),
    follow_symlinks: bool | None = None,
    batch_size: int = 256,
    num_workers: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    callbacks: Sequence[Any] = (),
) -> UpdateSummary:
    """Synchronise the index folder ``directory`` (format 2) and rewrite its manifest."""
    manifest = read_json(directory / MANIFEST_NAME, "index manifest")
    with StoreWriter(directory, model.embedding_dim) as writer:
        if follow_symlinks is None:
            follow_symlinks = bool(manifest.get("follow_symlinks", False))
        if manifest.get("complete", True) or manifest.get("root") != str(root):
            # Mark the run as under way: an interrupted one is reported by Index.load.
            manifest.update(root=str(root), complete=False)
            atomic_write_json(directory / MANIFEST_NAME, manifest)
        summary = synchronize(
            writer, model, root, scan.files, full=full, refused=scan.refused, remove=remove, batch_size=batch_size,
            num_workers=num_workers, shard_size=shard_size, callbacks=callbacks,
        )  # fmt: skip
        summary.count = len(writer.catalog)
        manifest.update(
            lookalike_version=__version__,
            updated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            count=summary.count,
            skipped=[{"path": str(root / s.path), "reason": s.reason} for s in writer.catalog.skipped()],
            embed_seconds=round(summary.seconds, 3),
            follow_symlinks=follow_symlinks,
            complete=True,
        )
        atomic_write_json(directory / MANIFEST_NAME, manifest)
    logger.info("%s: %s", directory, summary.describe())
    return summary


def update_index(
    folder: str | os.PathLike[str],
    model: Model | str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    rebuild: bool = False,
    batch_size: int = 256,
    num_workers: int = 1,
    precision: str = "auto",
    shard_size: int = DEFAULT_SHARD_SIZE,
    follow_symlinks: bool | None = None,
    callbacks: Sequence[Any] = (),
) -> UpdateSummary:
    """Write or update the index of ``folder`` in ``out_dir`` without loading its vectors (what the CLI runs).

    * ``out_dir`` holds an index (format 2) of ``folder`` and ``rebuild`` is false: it is updated in place.
      ``model`` None means the index's own; another model is refused.
    * ``out_dir`` does not exist (or is empty): an empty index is created there (atomically) and filled
      shard by shard, so an interrupted run is resumed by running it again.
    * ``rebuild``, an index of another folder, or of format 1: a new index is written beside it and
      renamed into place when complete; a failure leaves the old one untouched.

    Args and errors as :meth:`Index.build`.
    """
    out = Path(out_dir).expanduser()
    check_index_target(out)
    manifest = read_json(out / MANIFEST_NAME, "index manifest") if is_index_dir(out) else None
    if follow_symlinks is None:  # the index's own choice, or not following for a new one
        follow_symlinks = bool((manifest or {}).get("follow_symlinks", False))
    # a missing or empty folder fails before any work
    states = scan_folder(Path(folder).expanduser(), follow_symlinks=follow_symlinks)
    root = Path(folder).expanduser().resolve()
    version = manifest.get("format_version") if manifest is not None else None
    if manifest is not None and version not in (INDEX_FORMAT_VERSION, *OLD_FORMAT_VERSIONS):
        raise LookalikeError(
            f"{out / MANIFEST_NAME}: index format {version!r} written by lookalike "
            f"{manifest.get('lookalike_version', '?')}; use another -o, or --rebuild to replace it"
        )
    update = manifest is not None and not rebuild and version == INDEX_FORMAT_VERSION and manifest["root"] == str(root)
    if not isinstance(model, Model):
        spec = None if model is None else parse_spec(model)
        if manifest is not None and (spec is None or (update and spec.names(manifest.get("model", {})))):
            model = Model.load(out / MODEL_SUBDIR)  # the index's own (also to rebuild it): nothing is learned again
        else:
            model = resolve_model(spec, folder, num_workers=num_workers, callbacks=callbacks)
    if update:
        assert manifest is not None
        _same_model(out, manifest, model)
        if precision == "auto":
            model.set_precision(manifest.get("precision", "fp32"))
        elif model.set_precision(precision).precision != manifest.get("precision", "fp32"):
            raise LookalikeError(
                f"{out}: index was built with {manifest.get('precision')} embeddings, not {model.precision}; "
                "write to another index directory (-o) or start over (--rebuild)"
            )
        return _update_dir(out, model, root, states, full=True, follow_symlinks=follow_symlinks,
                           batch_size=batch_size, num_workers=num_workers, shard_size=shard_size,
                           callbacks=callbacks)  # fmt: skip
    model.set_precision(precision)
    fresh = manifest is None
    if manifest is not None:
        why = "--rebuild" if rebuild else ("format 1" if version != INDEX_FORMAT_VERSION else "another folder")
        logger.info("%s: writing a new index (%s); the old one stays until it is complete", out, why)
    target = out if fresh else make_temp_dir(out)
    try:
        new_manifest = _new_manifest(model, root, follow_symlinks)
        if fresh:
            create_store(out, model, new_manifest)
        else:
            init_store(target, model, new_manifest)
        summary = _update_dir(target, model, root, states, full=True, follow_symlinks=follow_symlinks,
                              batch_size=batch_size, num_workers=num_workers, shard_size=shard_size,
                              callbacks=callbacks)  # fmt: skip
        if summary.count == 0:
            n = len(states.files) + len(states.refused)
            raise LookalikeError(f"{display_path(root)}: none of the {n} image files could be read")
        if not fresh:
            replace_dir(target, out)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        if not fresh or (not interrupted and _is_empty_index(out)):
            shutil.rmtree(target, ignore_errors=True)  # keeps a partial fresh index: a re-run resumes it
        raise
    summary.rebuilt = True
    return summary


def _is_empty_index(directory: Path) -> bool:
    try:
        catalog = Catalog.open(directory / CATALOG_NAME)
    except LookalikeError:
        return False
    try:
        return len(catalog) == 0
    finally:
        catalog.close()


class Index:
    """A searchable index of a folder of images.

    Use :meth:`build` to create one from a folder and :meth:`load` to open a saved one.
    """

    def __init__(
        self,
        model: Model,
        vectors: ExactIndex,
        entries: Entries | Sequence[CatalogEntry],
        root: Path,
        manifest: dict[str, Any],
        directory: Path | None = None,
    ) -> None:
        self.model = model
        self.vectors = vectors
        self.entries = entries if isinstance(entries, Entries) else Entries.of(entries)  # id -> CatalogEntry
        self.root = root
        self.manifest = manifest
        self.directory = directory
        self.last_update: UpdateSummary | None = None  # what the build/update/add/remove that made it did
        self.searcher: Any = vectors  # what answers searches: the exact vectors, or an ANN backend over them
        self.backend = "exact"

    # ------------------------------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        folder: str | os.PathLike[str],
        model: Model | str | os.PathLike[str] | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        *,
        rebuild: bool = False,
        batch_size: int = 256,
        num_workers: int = 1,
        precision: str = "auto",
        shard_size: int = DEFAULT_SHARD_SIZE,
        follow_symlinks: bool | None = None,
        callbacks: Sequence[Any] = (),
    ) -> Index:
        """Index every image under ``folder``; with ``out_dir``, write the index there or bring it up to date.

        When ``out_dir`` already holds an index of ``folder`` made with the same model, only what changed
        is done (see :func:`update_index`): new and changed files are embedded, deleted ones removed,
        moved ones recognised by content hash. Otherwise the index is written from scratch, shard by shard
        as images are embedded, so an interrupted build resumes where it stopped when run again.

        Args:
            folder: the images, found recursively.
            model: a :class:`Model`, or an extractor spec (:mod:`lookalike.models.spec`): a model
                directory, ``"autoencoder"`` (trained on ``folder`` first), or a pretrained extractor such as
                ``"efficientnet-lite0@128"`` or ``"efficientnet-lite0+adapted"`` (a head fitted on
                ``folder``); an index of ``folder`` already in ``out_dir`` that one made keeps its own model,
                nothing is trained again. None: that index's own model, or the default
                (:data:`lookalike.models.spec.DEFAULT`: a head on ImageNet features) learned on ``folder`` first.
            out_dir: where the index lives; None keeps it in memory.
            rebuild: start over even when ``out_dir`` holds an index of this folder (the old one is
                replaced only once the new one is complete).
            batch_size: images per forward pass.
            num_workers: DataLoader processes decoding images.
            precision: encoder precision, ``fp32``, ``bf16`` or ``auto`` (bf16 on CPUs that compute it
                natively; for an existing index, the precision it was built with); recorded in the
                manifest so queries are encoded the same way.
            shard_size: vectors per shard file (and per commit).
            follow_symlinks: index links to files outside ``folder`` too (by default they are skipped and
                reported; a link inside the folder is always followed); None keeps an existing index's
                choice. Recorded in the manifest: the server then serves those files too.
            callbacks: objects with optional ``on_embed(done, total)`` and ``on_skip(path, reason)``
                (and the training callbacks when a model is trained first).

        Returns:
            The index, loaded; ``last_update`` says what was done.

        Raises:
            LookalikeError: no images, none readable, ``out_dir`` exists and is not an index, or it is an
                index of this folder made with another model (use another ``out_dir`` or ``rebuild``).
        """
        if out_dir is not None:
            summary = update_index(
                folder, model, out_dir, rebuild=rebuild, batch_size=batch_size, num_workers=num_workers,
                precision=precision, shard_size=shard_size, follow_symlinks=follow_symlinks, callbacks=callbacks,
            )  # fmt: skip
            index = cls.load(out_dir, model=model if isinstance(model, Model) else None)
            index.last_update = summary
            return index
        scan = scan_readable(folder, follow_symlinks=bool(follow_symlinks), callbacks=callbacks)
        paths = scan.files
        root = Path(folder).expanduser().resolve()
        if not isinstance(model, Model):
            model = resolve_model(model, folder, num_workers=num_workers, callbacks=callbacks)
        model.set_precision(precision)
        result = embed_files(model, paths, batch_size=batch_size, num_workers=num_workers, callbacks=callbacks)
        if len(result.positions) == 0:
            raise LookalikeError(f"{root}: none of the {len(paths)} image files could be read")
        entries = []
        for new_id, (pos, digest) in enumerate(zip(result.positions.tolist(), result.digests)):
            p = paths[pos]
            st = p.stat()
            rel = p.relative_to(root).as_posix()
            entries.append(CatalogEntry(new_id, rel, st.st_size, st.st_mtime_ns, digest, label_for(rel)))
        vectors = ExactIndex(model.embedding_dim)
        vectors.add(result.vectors, np.arange(len(entries)))
        manifest = _new_manifest(model, root, bool(follow_symlinks))
        manifest.update(
            count=len(entries),
            skipped=[{"path": str(p), "reason": r} for p, r in [*scan.skipped, *result.failures]],
            embed_seconds=round(result.seconds, 3),
        )
        index = cls(model, vectors, entries, root, manifest)
        index.last_update = UpdateSummary(
            added=len(entries), skipped=len(scan.skipped) + len(result.failures), embedded=len(entries),
            count=len(entries),
            rebuilt=True, seconds=result.seconds,
        )  # fmt: skip
        return index

    def save(self, out_dir: str | os.PathLike[str], *, shard_size: int = DEFAULT_SHARD_SIZE) -> Path:
        """Write the index as a new folder (format 2), atomically: assembled beside ``out_dir``, renamed in."""
        out = Path(out_dir).expanduser()
        check_index_target(out)
        tmp = make_temp_dir(out)
        try:
            manifest = {**self.manifest, "format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION}
            init_store(tmp, self.model, manifest)
            ids = np.sort(self.vectors.ids)
            with StoreWriter(tmp, self.vectors.dim) as writer:
                for start in range(0, len(ids), shard_size):
                    part = ids[start : start + shard_size]
                    writer.commit(vectors=self.vectors.reconstruct(part), entries=[self.entries[int(i)] for i in part])
                writer.next_id = int(ids[-1]) + 1 if len(ids) else 0
                skipped = [_skipped_row(self.root, s) for s in self.manifest.get("skipped", [])]
                writer.commit(skip=[s for s in skipped if s is not None])
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.directory = out
        return out

    # ------------------------------------------------------------------------------------------- load
    @classmethod
    def load(cls, directory: str | os.PathLike[str], model: Model | str | os.PathLike[str] | None = None) -> Index:
        """Open a saved index (format 2, or an older version-1 folder).

        Args:
            directory: the index folder.
            model: use this model (or model directory) for queries instead of the index's own copy; it
                must be the model the index was built with.

        Raises:
            LookalikeError: not an index, another format version, a different model, or a catalog and
                vectors that disagree.
        """
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            raise LookalikeError(f"{directory}: index directory does not exist")
        if not is_index_dir(directory):
            raise LookalikeError(f"{directory}: not a lookalike index (no {MANIFEST_NAME})")
        manifest = read_json(directory / MANIFEST_NAME, "index manifest")
        version = manifest.get("format_version")
        if manifest.get("format") != INDEX_FORMAT or (
            version != INDEX_FORMAT_VERSION and version not in OLD_FORMAT_VERSIONS
        ):
            raise LookalikeError(
                f"{directory / MANIFEST_NAME}: index format {version!r} written by "
                f"lookalike {manifest.get('lookalike_version', '?')}; lookalike {__version__} reads format "
                f"{INDEX_FORMAT_VERSION} (rebuild the index)"
            )
        expected = manifest.get("model", {}).get("fingerprint")
        if model is None:
            model = Model.load(directory / MODEL_SUBDIR)
        elif not isinstance(model, Model):
            model = Model.load(model)
        if model.fingerprint != expected:
            raise LookalikeError(
                f"{directory}: index was built with model {str(expected)[:12]} "
                f"({manifest.get('model', {}).get('preset', '?')}), not with the given model "
                f"{model.fingerprint[:12]} ({model.preset}); rebuild the index with that model"
            )
        model.set_precision(manifest.get("precision", "fp32"))
        if version == INDEX_FORMAT_VERSION:
            entries, vectors, skipped = read_vectors(directory, model.embedding_dim)
            root = Path(manifest["root"])
            manifest["count"] = len(entries)  # the catalog's truth, also after an interrupted run
            manifest["skipped"] = [{"path": str(root / s.path), "reason": s.reason} for s in skipped]
            if manifest.get("complete") is False:
                logger.warning("%s: an indexing run was interrupted; run lookalike index again to finish", directory)
        else:
            vectors = ExactIndex.load(directory)
            catalog = Catalog.open(directory / CATALOG_NAME)
            entries = catalog.entries()
            catalog.close()
        if vectors.dim != model.embedding_dim:
            raise LookalikeError(
                f"{directory}: vectors are {vectors.dim}-d but the model gives {model.embedding_dim}-d"
            )
        if len(entries) != len(vectors):
            raise LookalikeError(f"{directory}: catalog has {len(entries)} images but there are {len(vectors)} vectors")
        index = cls(model, vectors, entries, Path(manifest["root"]), manifest, directory)
        index._load_backend(manifest.get("backend", "exact"))
        return index

    # -------------------------------------------------------------------------------------- backends
    def use_backend(self, backend: str = "auto", **params: Any) -> str:
        """Answer searches with ``backend`` (``auto``: by size, see :func:`lookalike.index.choose_backend`).

        ``hnsw`` and ``ivfpq`` are built here from the stored vectors (``params`` go to their constructors);
        ``exact`` searches the vectors themselves. Returns the backend chosen. The exact vectors stay loaded
        (id queries, evaluation and updates read them).
        """
        from .index import choose_backend, make_index

        chosen = choose_backend(len(self.vectors), self.vectors.dim, backend)
        if chosen == "exact":
            self.searcher, self.backend = self.vectors, "exact"
            return chosen
        ann = make_index(chosen, self.vectors.dim, **params)
        ids = np.sort(self.vectors.ids)
        for start in range(0, len(ids), 65536):  # bounded temporary copies of the raw vectors
            part = ids[start : start + 65536]
            ann.add(self.vectors.reconstruct(part), part)
        self.searcher, self.backend = ann, chosen
        return chosen

    def save_backend(self) -> Path | None:
        """Write the ANN structure into the index folder (``ann/``, replaced atomically) and record the backend.

        With the ``exact`` backend any old ``ann/`` is removed. Returns the folder written, if any.
        """
        if self.directory is None:
            raise LookalikeError("this index has no folder yet: save it first")
        final = self.directory / ANN_SUBDIR
        written = None
        if self.backend != "exact":
            tmp = make_temp_dir(final)
            try:
                self.searcher.save(tmp)
                atomic_write_json(tmp / "signature.json", {"backend": self.backend,
                                                          "ids": _ids_signature(self.vectors.ids)})  # fmt: skip
                old = final.with_name(f".{ANN_SUBDIR}.old-{os.getpid()}")
                if final.exists():
                    os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            written = final
        elif final.exists():
            shutil.rmtree(final, ignore_errors=True)
        manifest = read_json(self.directory / MANIFEST_NAME, "index manifest")
        manifest["backend"] = self.backend
        atomic_write_json(self.directory / MANIFEST_NAME, manifest)
        self.manifest["backend"] = self.backend
        return written

    def _load_backend(self, backend: str) -> None:
        """At load: the saved ANN structure when it matches the catalog, else one built now (with a warning)."""
        if backend not in ("hnsw", "ivfpq"):
            return
        from .index import HNSWIndex, IVFPQIndex

        folder = self.directory / ANN_SUBDIR if self.directory is not None else None
        try:
            signature = read_json(folder / "signature.json", "ANN signature") if folder is not None else {}
        except LookalikeError:
            signature = {}
        if signature.get("backend") == backend and signature.get("ids") == _ids_signature(self.vectors.ids):
            cls = HNSWIndex if backend == "hnsw" else IVFPQIndex
            self.searcher, self.backend = cls.load(folder), backend
            return
        logger.warning("%s: the saved %s structure is missing or stale (the index changed); rebuilding it in "
                       "memory (run lookalike index again to save it)", self.directory, backend)  # fmt: skip
        self.use_backend(backend)

    # ---------------------------------------------------------------------------------------- update
    def _writable_dir(self) -> Path:
        if self.directory is None:
            raise LookalikeError("this index lives in memory only; save() it to a folder before updating it")
        if self.manifest.get("format_version") != INDEX_FORMAT_VERSION:
            raise LookalikeError(
                f"{self.directory}: index format {self.manifest.get('format_version')!r} cannot be updated in "
                f"place; rebuild it (lookalike index FOLDER -o {self.directory} --rebuild)"
            )
        return self.directory

    def _refresh(self, summary: UpdateSummary) -> UpdateSummary:
        fresh = Index.load(self.directory, model=self.model)
        self.vectors, self.entries = fresh.vectors, fresh.entries
        self.searcher, self.backend = fresh.searcher, fresh.backend
        self.root, self.manifest, self.last_update = fresh.root, fresh.manifest, summary
        return summary

    def update(
        self,
        folder: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 256,
        num_workers: int = 1,
        shard_size: int = DEFAULT_SHARD_SIZE,
        callbacks: Sequence[Any] = (),
    ) -> UpdateSummary:
        """Bring the index up to date with its folder (or with ``folder``, when the images moved there).

        New and changed files are embedded, rows of deleted files removed, moved or renamed files found
        by content hash (no re-embedding); see :mod:`lookalike.updates`.

        Returns:
            What changed; the index in memory is reloaded.

        Raises:
            LookalikeError: the index is not a folder of the current format, or the folder is unusable.
        """
        directory = self._writable_dir()
        root = Path(folder).expanduser() if folder is not None else self.root
        states = scan_folder(root, follow_symlinks=self.follow_symlinks)
        root = root.resolve()
        summary = _update_dir(directory, self.model, root, states, full=True, batch_size=batch_size,
                              num_workers=num_workers, shard_size=shard_size, callbacks=callbacks)  # fmt: skip
        return self._refresh(summary)

    def add(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        batch_size: int = 256,
        num_workers: int = 1,
        shard_size: int = DEFAULT_SHARD_SIZE,
        callbacks: Sequence[Any] = (),
    ) -> UpdateSummary:
        """Index (or re-index, when changed) the given image files or folders, which must be inside the root.

        Raises:
            LookalikeError: a path that does not exist, is outside the indexed folder or is not an image.
        """
        directory = self._writable_dir()
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        states = states_of_paths(self.root, paths, follow_symlinks=self.follow_symlinks)
        summary = _update_dir(directory, self.model, self.root, states, full=False, batch_size=batch_size,
                              num_workers=num_workers, shard_size=shard_size, callbacks=callbacks)  # fmt: skip
        return self._refresh(summary)

    def remove(self, paths: Sequence[str | os.PathLike[str]]) -> UpdateSummary:
        """Remove the rows of the given files (or of every image under the given folders).

        The files themselves are not touched; paths may be absolute, relative to the current folder or
        relative to the indexed root, and need not exist any more.

        Raises:
            LookalikeError: a path names no indexed image (nothing is removed then).
        """
        directory = self._writable_dir()
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        relatives = []
        for path in paths:
            options = candidate_relatives(self.root, path)
            rel = next((r for r in options if self._names_rows(r)), None)
            if rel is None:
                raise LookalikeError(f"{path}: no indexed image there")
            relatives.append(rel)
        summary = _update_dir(directory, self.model, self.root, FolderStates([], []), full=False, remove=relatives)
        return self._refresh(summary)

    def _names_rows(self, rel: str) -> bool:
        if self.entries.id_of(rel) is not None or self.entries.has_under(rel):
            return True
        skipped = {Path(s["path"]).relative_to(self.root).as_posix() for s in self.manifest.get("skipped", [])}
        return rel in skipped

    # ------------------------------------------------------------------------------------------ query
    def __len__(self) -> int:
        return len(self.vectors)

    def path_of(self, id_: int) -> Path:
        """Absolute path of an indexed image."""
        return self.root / self.entries[int(id_)].path

    def open_file(self, id_: int) -> BinaryIO | None:
        """The indexed file of an id, opened, only while it is still the file that was indexed; else None.

        Its catalog path must stay inside the indexed folder, resolve inside it (unless the index was
        built with ``follow_symlinks``), be a regular file and keep the row's size and mtime: a file
        swapped for a link to ``/etc/passwd``, a FIFO, or other content is refused (see
        :func:`lookalike.decoding.open_indexed_file`). The caller closes the file.
        """
        e = self.entries.get(int(id_))
        if e is None:
            return None
        return open_indexed_file(
            self.root, e.path, size=e.size, mtime_ns=e.mtime_ns, follow_outside=self.follow_symlinks
        )

    @property
    def follow_symlinks(self) -> bool:
        """Whether the folder was indexed following symbolic links that leave it."""
        return bool(self.manifest.get("follow_symlinks", False))

    def id_of(self, path: str | os.PathLike[str]) -> int | None:
        """The id of an indexed file given its path (absolute, or relative to the root), or None."""
        p = Path(path).expanduser()
        if not p.is_absolute() and not p.exists():
            p = self.root / p
        for form in (Path(os.path.abspath(p)), p.resolve()):  # the link's own path first, then its target
            try:
                rel = form.relative_to(self.root).as_posix()
            except ValueError:
                continue
            found = self.entries.id_of(rel)
            if found is not None:
                return found
        return None

    def _embed_queries(self, queries: Sequence[Query], threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw query vectors and, per query, its own id in the index (or -1)."""
        own = np.full(len(queries), -1, dtype=np.int64)
        vecs = np.empty((len(queries), self.vectors.dim), dtype=np.float32)
        to_embed: list[tuple[int, ImageLike]] = []
        for i, q in enumerate(queries):
            if isinstance(q, int | np.integer) and not isinstance(q, bool):
                if int(q) not in self.entries:
                    raise LookalikeError(f"no image with id {int(q)} in this index ({len(self)} images)")
                own[i] = int(q)
                vecs[i] = self.vectors.reconstruct(np.array([int(q)]))[0]
            else:
                if isinstance(q, str | os.PathLike):
                    found = self.id_of(q) if Path(q).exists() else None
                    own[i] = -1 if found is None else found
                to_embed.append((i, q))
        if to_embed:
            vecs[[i for i, _ in to_embed]] = self.model.embed([q for _, q in to_embed], threads=threads)
        return vecs, own

    @staticmethod
    def query_threads(n_queries: int) -> int | None:
        """The thread plan of :meth:`search_batch`: how many threads (torch's and BLAS's alike) a search of
        ``n_queries`` computes with from end to end, or None for the process's own settings.

        A few queries (up to :data:`SMALL_QUERY_BATCH`) run on one thread unless the machine is idle
        (other processes used under half a core over the last tenth of a second, see
        :class:`_OtherLoad`). A 32-64 px image through the encoder, the float16 shortlist or a float32
        product over 10,000-50,000 vectors are small: split between cores, every parallel region ends at
        a barrier where torch's OpenMP workers (GNU libgomp, which spins before it sleeps) and OpenBLAS's
        wait for each other, and when another process keeps a core busy they wait for its time slice.
        ``benchmarks/speed.py --background-load 1`` measured the single query at 15-220 ms (median) on
        two threads against 3-9 ms on one on this shared 2-core machine; when it is idle, the second
        thread saves 0.7 ms of 2.4 (OMP_WAIT_POLICY=PASSIVE set before torch loads also cures libgomp's
        part, but that is the application's to set). Larger batches (indexing, evaluation, a server's
        queue of uploads) keep every thread.
        """
        if n_queries > SMALL_QUERY_BATCH:
            return None
        return None if _OTHER_LOAD.idle() else 1

    def search_batch(
        self, queries: Sequence[Query], k: int = 10, *, metric: str = "cosine", exclude_self: bool = False
    ) -> list[list[Hit]]:
        """Search several queries at once; see :meth:`search`."""
        queries = list(queries)
        threads = self.query_threads(len(queries))
        with compute_threads(threads) if threads is not None else contextlib.nullcontext():
            vecs, own = self._embed_queries(queries, threads=threads)
            scores, ids = self.searcher.search(vecs, k, metric=metric, exclude=own if exclude_self else None)
        out = []
        for srow, irow in zip(scores, ids):
            hits = []
            for rank, (s, i) in enumerate(zip(srow.tolist(), irow.tolist()), start=1):
                if i < 0:
                    break
                e = self.entries[i]
                hits.append(Hit(rank, i, self.root / e.path, float(s), e.label))
            out.append(hits)
        return out

    def search(self, query: Query, k: int = 10, *, metric: str = "cosine", exclude_self: bool = False) -> list[Hit]:
        """The ``k`` indexed images most like ``query``.

        Args:
            query: an image file path, a Pillow image, an ``(H, W[, C])`` uint8 array, or an indexed id.
                Images are prepared exactly as the model's training images were.
            k: how many results.
            metric: ``cosine`` (similarity of L2-normalised embeddings, higher is closer) or
                ``euclidean`` (distance between raw embeddings, lower is closer; seeds 002 and 004).
            exclude_self: leave out the query's own entry when it is an indexed image (by id or path).

        Returns:
            Hits, best first.

        Raises:
            LookalikeError: the query is not an image (the message names it) or an unknown id.
        """
        return self.search_batch([query], k, metric=metric, exclude_self=exclude_self)[0]

    # ------------------------------------------------------------------------------------- evaluate
    def labels(self, labels: str | os.PathLike[str] | None = None) -> dict[int, str]:
        """The label of every labelled indexed image, by id.

        Args:
            labels: a ``path,label`` file (see :func:`read_label_file`; paths absolute or relative to the
                indexed folder); None takes the catalog's labels, each image's sub-folder.
        """
        if labels is None:
            return self.entries.labels()
        lookup = _label_lookup(read_label_file(labels), [self.root], Path(labels))
        out = {}
        for e in self.entries.rows():
            label = lookup.get(os.path.normpath(self.root / e.path))
            if label is not None:
                out[e.id] = label
        return out

    def evaluate(
        self,
        queries: str | os.PathLike[str] | None = None,
        *,
        labels: str | os.PathLike[str] | None = None,
        label_depth: int | None = None,
        ks: Sequence[int] = DEFAULT_KS,
        map_at: int = 1000,
        knn_k: int = 20,
        metric: str = "cosine",
        batch_size: int = 256,
        num_workers: int = 1,
        chunk_size: int | None = None,
        callbacks: Sequence[Any] = (),
    ) -> EvaluationResult:
        """Measure how well the index finds images of the same label (see :mod:`lookalike.metrics`).

        Only labelled images take part: the database is every labelled indexed image.

        Args:
            queries: None for leave-one-out over the index itself (every labelled indexed image is a
                query, its own entry left out of its ranking; the stored vectors are used, nothing is
                re-embedded), or a folder of query images (a second split), embedded with the index's
                model and ranked against the whole index.
            labels: a ``path,label`` file (CSV or TSV, header optional; paths absolute, or relative to
                the indexed folder or to ``queries``); None labels each image by its sub-folder.
            label_depth: which part of a nested sub-folder is the label (``domain/class``: 1 gives
                ``domain``, -1 ``class``; None, the default, all of it); see :func:`lookalike.catalog.label_for`.
            ks: the k of precision@k and recall@k.
            map_at: the k of mAP@k.
            knn_k: neighbours in the k-NN majority vote.
            metric: ``cosine`` or ``euclidean``, as in :meth:`search`.
            batch_size: query images per forward pass.
            num_workers: DataLoader processes decoding query images.
            chunk_size: queries ranked at a time (see :func:`lookalike.metrics.evaluate_vectors`).
            callbacks: objects with optional ``on_embed(done, total)``, ``on_skip(path, reason)`` (query
                images) and ``on_evaluate(done, total)`` (queries ranked).

        Returns:
            An :class:`~lookalike.metrics.EvaluationResult`; ``info`` says what was evaluated and how many
            images were left out, ``query_keys`` gives each query's id (leave-one-out) or path.

        Raises:
            LookalikeError: no labelled image, no labelled or readable query, no query with another image
                of its label in the index, a malformed labels file (naming the line), a bad option.
        """
        ks, map_at, knn_k = check_options(ks, map_at, knn_k, metric)
        where = self.directory or self.root
        label_rows = read_label_file(labels) if labels is not None else None
        query_dir = None
        if queries is not None:
            query_dir = Path(queries).expanduser()
            query_paths = find_images(query_dir)  # fails on a missing or empty folder before any work
            query_dir = query_dir.resolve()
        lookup = None
        if label_rows is not None:
            bases = [self.root] if query_dir is None else [self.root, query_dir]
            lookup = _label_lookup(label_rows, bases, Path(labels))
        db_ids = self.vectors.ids
        db_labels = []
        for id_ in db_ids.tolist():
            e = self.entries[id_]
            if lookup is not None:
                db_labels.append(lookup.get(os.path.normpath(self.root / e.path)))
            else:
                db_labels.append(e.label if label_depth is None else label_for(e.path, label_depth))
        rows = np.array([i for i, lab in enumerate(db_labels) if lab is not None], dtype=np.int64)
        if len(rows) == 0 and labels is None:
            raise LookalikeError(
                f"{where}: none of the {len(db_ids)} indexed images has a label (an image's label is its "
                f"sub-folder; images directly in {self.root} have none); give a path,label file (--labels)"
            )
        if len(rows) == 0:
            raise LookalikeError(
                f"{labels}: none of its {len(label_rows)} rows names one of the {len(db_ids)} indexed images "
                f"(paths must be absolute or relative to {self.root})"
            )
        db_labels = [db_labels[r] for r in rows]
        db_vectors = self.vectors.vectors[rows] * self.vectors.norms[rows, None]
        info: dict[str, Any] = {
            "index": str(self.directory) if self.directory is not None else None,
            "root": str(self.root),
            "model": {"preset": self.model.preset, "fingerprint": self.model.fingerprint},
            "queries": "leave-one-out" if query_dir is None else str(query_dir),
            "labels": ("folders" + (f" (depth {label_depth})" if label_depth else ""))
            if labels is None
            else str(Path(labels).expanduser()),
            "n_database_unlabelled": len(db_ids) - len(rows),
        }

        def progress(done: int, total: int) -> None:
            emit(callbacks, "on_evaluate", done, total)

        options = dict(ks=ks, map_at=map_at, knn_k=knn_k, metric=metric, chunk_size=chunk_size, progress=progress)
        if query_dir is None:
            result = evaluate_vectors(db_vectors, db_labels, **options)
            keys: list[Any] = db_ids[rows].tolist()
        else:
            q_labels = []
            for p in query_paths:
                rel = p.relative_to(query_dir).as_posix()
                q_labels.append(label_for(rel, label_depth) if lookup is None else lookup.get(os.path.normpath(p)))
            labelled = [i for i, lab in enumerate(q_labels) if lab is not None]
            if not labelled and labels is None:
                raise LookalikeError(
                    f"{query_dir}: none of the {len(query_paths)} query images has a label (put them in class "
                    "sub-folders, or give a path,label file (--labels))"
                )
            if not labelled:
                raise LookalikeError(
                    f"{labels}: none of its {len(label_rows)} rows names one of the {len(query_paths)} query "
                    f"images (paths must be absolute or relative to {query_dir} or {self.root})"
                )
            paths = [query_paths[i] for i in labelled]
            embedded = embed_files(
                self.model, paths, batch_size=batch_size, num_workers=num_workers, callbacks=callbacks
            )
            if len(embedded.positions) == 0:
                raise LookalikeError(f"{query_dir}: none of the {len(paths)} query images could be read")
            read = embedded.positions.tolist()
            q_vectors = embedded.vectors
            result = evaluate_vectors(
                db_vectors, db_labels, q_vectors, [q_labels[labelled[i]] for i in read], **options
            )
            keys = [paths[i] for i in read]
            info["n_queries_unlabelled"] = len(query_paths) - len(labelled)
            info["n_queries_unreadable"] = len(embedded.failures)
        if result.n_evaluated == 0:
            raise LookalikeError(
                f"{where}: no query has another image with its label in the index ({result.n_queries} queries, "
                f"{len(set(db_labels))} labels); nothing to evaluate"
            )
        result.info = info
        result.query_keys = keys
        return result

    def thumbnail(self, id_: int, size: int = 96) -> np.ndarray:
        """A small RGB/L uint8 array of an indexed image, for result grids."""
        return thumbnail(self.path_of(id_), self.model.preprocessing.channels, size)

    def __repr__(self) -> str:
        return f"Index({len(self)} images of {self.root}, model {self.model.preset} {self.model.fingerprint[:12]})"

    # --- used by the server's reload (issue 13)
    @staticmethod
    def folder_state(directory: str | os.PathLike[str]) -> tuple[int, ...] | None:
        """A cheap token of an index folder's committed state: (inode, size, mtime_ns) of its catalog and
        manifest. It changes whenever a writer commits or the folder is replaced (``--rebuild``); equal
        tokens mean nothing was committed in between. None when either file is missing."""
        out: list[int] = []
        for name in (CATALOG_NAME, MANIFEST_NAME):
            try:
                st = os.stat(Path(directory) / name)
            except OSError:
                return None
            out += [st.st_ino, st.st_size, st.st_mtime_ns]
        return tuple(out)

    @staticmethod
    def run_finished(directory: str | os.PathLike[str]) -> bool:
        """Whether the index folder's last indexing run is complete (its manifest says so); an unreadable
        manifest counts as complete, so loading the folder reports the problem."""
        try:
            return bool(read_json(Path(directory) / MANIFEST_NAME, "index manifest").get("complete", True))
        except LookalikeError:
            return True


def evaluate(
    index_dir: str | os.PathLike[str],
    queries: str | os.PathLike[str] | None = None,
    *,
    model: Model | str | os.PathLike[str] | None = None,
    **options: Any,
) -> EvaluationResult:
    """Load the index in ``index_dir`` and evaluate it: :meth:`Index.evaluate` in one call.

    >>> result = lookalike.evaluate("photos.index")          # doctest: +SKIP
    >>> result.map_at_k, result.knn_accuracy                 # doctest: +SKIP
    """
    return Index.load(index_dir, model=model).evaluate(queries, **options)
