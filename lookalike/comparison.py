"""Which extractor retrieves best on the user's own labelled images (``lookalike compare``).

Every extractor embeds the same images; a seeded, stratified share of the labelled images are the
queries and the rest the database; each extractor's ranking is scored with
:func:`lookalike.metrics.evaluate_vectors`. The two best are compared query by query with a paired
bootstrap of the difference in AP@k, which says whether the winner's margin is more than the luck of
which queries were drawn. Labels are used only for scoring: the autoencoder is trained and the
adapted heads are fitted without them (on the database images only, so the queries stay unseen).

The result is remembered per folder in the lookalike cache, so ``lookalike index --extractor auto``
can use the winner later (:func:`recommended_extractor`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import hashlib
import html
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._callbacks import emit
from .catalog import label_for
from .errors import LookalikeError
from .metrics import EvaluationResult, evaluate_vectors

logger = logging.getLogger(__name__)

AUTOENCODER = "autoencoder"
PIXELS = "pixels"
COMPARE_FORMAT = "lookalike-compare"
DEFAULT_KS = (1, 10, 100)


@dataclass
class Candidate:
    """One extractor's row of the comparison."""

    name: str  # what the row is called: "autoencoder", "pixels", "efficientnet-lite0@128", "...+adapted"
    extractor: str  # the extractor behind it (the Model's ``extractor``)
    image_size: int  # input side in pixels
    dims: int  # vector length
    result: EvaluationResult  # the metrics on the held-out queries
    embed_seconds: float  # wall time embedding every image (decoding included)
    images_per_s: float  # images embedded per second (decoding included: one run, as noisy as the machine)
    encode_ms: float = 0.0  # the encoder's ms per image, best of TIMING_REPEATS on the same images (see _time_encoder)
    train_seconds: float = 0.0  # training / fitting time (autoencoder, adapted head)
    model: Any = None  # the Model (not saved in JSON)
    model_dir: str | None = None  # where the model was saved, when it was trained or adapted here
    vectors: np.ndarray | None = None  # (images, dims) embeddings in ``Comparison.paths`` order; NaN rows unreadable

    @property
    def query_scores(self) -> np.ndarray:
        """Per query: what the pick is judged on, ``(AP@k + precision@10) / 2`` (NaN for a query left out)."""
        return judged_scores(self.result)

    @property
    def score(self) -> float:
        """The mean of :attr:`query_scores`: the row's score, :data:`SCORE` (the pick maximises it)."""
        return float(np.nanmean(self.query_scores)) if np.isfinite(self.query_scores).any() else float("nan")

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "name": self.name,
            "extractor": self.extractor,
            "image_size": self.image_size,
            "dims": self.dims,
            "map_at_k": r.map_at_k,
            "map_k": r.map_k,
            "precision_at_k": {str(k): v for k, v in r.precision_at_k.items()},
            "knn_accuracy": r.knn_accuracy,
            "knn_k": r.knn_k,
            "embed_seconds": round(self.embed_seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
            "ms_per_image": round(1000.0 / self.images_per_s, 3) if self.images_per_s else None,
            "encode_ms": round(self.encode_ms, 3),
            "score": self.score,
            "train_seconds": round(self.train_seconds, 2),
            "model_dir": self.model_dir,
        }


@dataclass
class Comparison:
    """The outcome of :func:`compare`."""

    folder: Path
    n_images: int  # images embedded (labelled and readable)
    n_database: int
    n_queries: int
    rows: list[Candidate]
    winner: str  # name of the row with the highest score (SCORE: half mAP@k, half precision@10)
    runner_up: str | None
    margin: float  # winner's score minus the runner-up's
    ci: tuple[float, float]  # 95 % paired-bootstrap interval of that difference
    p_value: float  # two-sided bootstrap p-value of "no difference"
    recommended: str  # the row to use: the winner, or a faster row it does not beat significantly
    recommendation: str  # one sentence saying so, with the numbers
    info: dict[str, Any] = field(default_factory=dict)
    query_rows: np.ndarray | None = None  # indices (into ``paths``) of the queries
    database_rows: np.ndarray | None = None
    paths: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    @property
    def significant(self) -> bool:
        """True when the 95 % interval of the winner's margin excludes 0."""
        return self.runner_up is not None and self.ci[0] > 0

    def row(self, name: str) -> Candidate:
        return next(r for r in self.rows if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": COMPARE_FORMAT,
            "folder": str(self.folder),
            "n_images": self.n_images,
            "n_database": self.n_database,
            "n_queries": self.n_queries,
            "rows": [r.to_dict() for r in self.rows],
            "winner": self.winner,
            "runner_up": self.runner_up,
            "margin": self.margin,
            "ci95": list(self.ci),
            "p_value": self.p_value,
            "significant": self.significant,
            "recommended": self.recommended,
            "recommendation": self.recommendation,
            "info": self.info,
        }


# ---------------------------------------------------------------------------------------- inputs
def labelled_images(
    folder: str | os.PathLike[str], labels: str | os.PathLike[str] | None, label_depth: int | None = None
) -> tuple[list[Path], list[str]]:
    """The images under ``folder`` with a label (from ``labels``, a path,label file, or their sub-folder,
    cut to ``label_depth`` as :func:`lookalike.catalog.label_for` does)."""
    from .data import find_images
    from .search import _label_lookup, read_label_file

    root = Path(folder).expanduser().resolve()
    paths = find_images(root)
    if labels is not None:
        lookup = _label_lookup(read_label_file(labels), [root], Path(labels))
        found = [(p, lookup.get(os.path.normpath(p))) for p in paths]
    else:
        found = [(p, label_for(p.relative_to(root).as_posix(), label_depth)) for p in paths]
    kept = [(p, lab) for p, lab in found if lab is not None]
    if not kept:
        how = f"{labels} labels none of them" if labels else "put them in one sub-folder per class, or pass --labels"
        raise LookalikeError(f"{root}: none of the {len(paths)} images has a label ({how})")
    return [p for p, _ in kept], [lab for _, lab in kept]


def split_queries(labels: Sequence[str], fraction: float, max_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split: (query rows, database rows). Every class keeps at least one database image.

    Raises:
        LookalikeError: fewer than two classes with two images each.
    """
    if not 0 < fraction < 1:
        raise LookalikeError(f"the query fraction must be between 0 and 1, got {fraction}")
    labels_arr = np.asarray(labels)
    classes, counts = np.unique(labels_arr, return_counts=True)
    usable = classes[counts >= 2]
    if len(usable) < 2:
        raise LookalikeError(
            f"comparing needs at least 2 labels with 2 images each; found {len(classes)} label(s) with counts "
            f"{sorted(counts.tolist(), reverse=True)[:5]}"
        )
    n_usable = int(counts[counts >= 2].sum())
    share = min(fraction, max_queries / n_usable)
    rng = np.random.default_rng(seed)
    queries = []
    for c in usable:
        rows = np.flatnonzero(labels_arr == c)
        n_q = min(len(rows) - 1, max(1, int(round(share * len(rows)))))
        queries.append(rng.choice(rows, size=n_q, replace=False))
    q = np.sort(np.concatenate(queries))
    db = np.setdiff1d(np.arange(len(labels_arr)), q)
    return q, db


SCORE = "score = (mAP@{k} + P@10) / 2"
SCORE_WHY = (
    "the first screen of results (precision@10) and the order of the deeper list (mAP@{k}) count alike: "
    "a head can win the deep list while losing the top ranks a person looks at first"
)
TOP_K = 10  # the "first screen" of the score
FEW_QUERIES = 100  # below this many queries a recommendation says that it rests on few
TIMING_IMAGES = 64  # images the encoders are timed on (the same ones for every row)
TIMING_REPEATS = 3  # timed passes over them, after a warm-up; the fastest counts


def judged_scores(result: EvaluationResult) -> np.ndarray:
    """Per query ``(AP@k + precision@10) / 2``: what :func:`compare` ranks extractors by (:data:`SCORE_WHY`)."""
    ap = np.asarray(result.query_ap_at_k, dtype=np.float64)
    top = result.query_precision_at_k
    if top is None or TOP_K not in result.ks:
        return ap
    return (ap + np.asarray(top, dtype=np.float64)[:, list(result.ks).index(TOP_K)]) / 2


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float], float]:
    """Mean of ``a - b`` over queries, its 95 % percentile interval and a two-sided p-value (resampling queries).

    Queries where either value is NaN (left out by the evaluation) are dropped.
    """
    ok = np.isfinite(a) & np.isfinite(b)
    d = np.asarray(a, dtype=np.float64)[ok] - np.asarray(b, dtype=np.float64)[ok]
    if len(d) == 0:
        return float("nan"), (float("nan"), float("nan")), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for start in range(0, n, 256):  # (256, len(d)) indices at a time: bounded memory for many queries
        stop = min(n, start + 256)
        means[start:stop] = d[rng.integers(0, len(d), size=(stop - start, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    p = 2 * min(float((means <= 0).mean()), float((means >= 0).mean()))
    return float(d.mean()), (float(low), float(high)), min(1.0, max(p, 1.0 / n))


# -------------------------------------------------------------------------------------- compare
def default_extractors() -> list[str]:
    """The autoencoder, raw pixels (the floor), every installed pretrained extractor, and its adapted variant."""
    from .models.pretrained import installed_extractors

    names = [AUTOENCODER, PIXELS]
    for name in installed_extractors():
        names += [name, f"{name}+adapted"]
    return names


def compare(
    folder: str | os.PathLike[str],
    *,
    labels: str | os.PathLike[str] | None = None,
    label_depth: int | None = None,
    extractors: Sequence[str] | None = None,
    model: Any = None,
    epochs: int | None = None,
    image_size: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    query_fraction: float = 0.2,
    max_queries: int = 1000,
    map_at: int = 100,
    knn_k: int = 20,
    seed: int = 0,
    bootstrap: int = 2000,
    batch_size: int = 128,
    num_workers: int = 1,
    adapt_epochs: int | None = None,
    callbacks: Sequence[Any] = (),
) -> Comparison:
    """Embed a labelled folder with each extractor and score them on the same held-out queries.

    Args:
        folder: the images; labels from their sub-folders or from ``labels``.
        labels: a ``path,label`` file (see :func:`lookalike.search.read_label_file`).
        label_depth: which part of a nested sub-folder is the label (``domain/class``: 1 gives ``domain``,
            -1 ``class``; None: all of it).
        extractors: rows to compare, e.g. ``["autoencoder", "pixels", "efficientnet-lite0@128",
            "efficientnet-lite0+adapted"]`` (``@N``: input size; ``+adapted``: a head fitted on the
            database images, see :mod:`lookalike.adaptation`). Default: :func:`default_extractors`.
        model: the autoencoder to use (a :class:`~lookalike.models.Model` or a model directory); without
            it the default model is trained on the folder (without labels) for ``epochs``.
        epochs: epochs of that training (default: the preset's).
        image_size: input size of pretrained extractors given without ``@N``.
        out_dir: where trained / adapted models are saved (``models/<row>``), so the winner can be reused.
        query_fraction: share of each label's images used as queries (at most ``max_queries`` in all).
        max_queries: cap on the number of queries.
        map_at: the k of mAP@k, the headline metric.
        knn_k: neighbours in the k-NN vote.
        seed: seeds the split, the training and the bootstrap.
        bootstrap: resamples of the paired bootstrap.
        batch_size: images per forward pass.
        num_workers: processes decoding images.
        adapt_epochs: epochs of the adapted heads (default: :data:`lookalike.adaptation.DEFAULT_EPOCHS`).
            A ``+adapted`` row without ``@SIZE`` (and no ``image_size``) runs at the size ``lookalike index``
            would choose for the folder (:func:`lookalike.models.spec.input_size_for`); a row that cannot
            run on so few images is skipped with an ``on_note`` line.
        callbacks: progress objects (``on_compare_row(name, i, n)``, the embedding and training callbacks).

    Raises:
        LookalikeError: no labels, fewer than two labels with two images, an unknown extractor.
    """
    from .embed import embed_files
    from .models import Model
    from .models.spec import parse_spec, resolve_model

    t_start = time.perf_counter()
    root = Path(folder).expanduser().resolve()
    paths, labs = labelled_images(root, labels, label_depth)
    q_rows, db_rows = split_queries(labs, query_fraction, max_queries, seed)
    names = list(extractors) if extractors else default_extractors()
    specs = [parse_spec(n) for n in names]  # unknown names fail before any work
    out = Path(out_dir).expanduser() if out_dir is not None else None
    labels_arr = np.asarray(labs)
    rows: list[Candidate] = []
    frozen: dict[tuple[str, int], tuple[Any, Any, float]] = {}  # (name, size) -> model, EmbedResult, encoder ms

    @functools.cache
    def folder_size() -> int:  # read from the images' headers once, whatever the number of adapted rows
        from .models.spec import input_size_for

        return input_size_for(paths)

    for i, (spec, text) in enumerate(zip(specs, names)):
        emit(callbacks, "on_compare_row", text, i, len(names))
        train_s, base_ms, head_ms = 0.0, 0.0, 0.0
        model_dir = None
        if spec.directory is not None:
            the_model, model_dir = Model.load(spec.directory), str(spec.directory)
        elif spec.is_autoencoder:
            if model is None:
                t0 = time.perf_counter()
                the_model = resolve_model(spec, root, epochs=epochs, seed=seed, num_workers=num_workers,
                                          callbacks=callbacks)  # fmt: skip
                train_s = time.perf_counter() - t0
                if out is not None:
                    model_dir = str(the_model.save(out / "models" / AUTOENCODER))
            else:
                the_model = model if isinstance(model, Model) else Model.load(model)
                model_dir = None if isinstance(model, Model) else str(model)
        else:
            assert spec.name is not None
            size = spec.image_size or image_size
            if size is None and spec.adapted:  # as `lookalike index -e NAME+adapted` would choose
                size = folder_size()
            key = (spec.name, size or 0)
            if key not in frozen:
                base = resolve_model(spec.name, image_size=size)
                base.set_precision("auto")
                _warm_up(base)
                res = embed_files(base, paths, batch_size=batch_size, num_workers=num_workers, callbacks=callbacks)
                frozen[key] = (base, res, _time_encoder(base, [paths[j] for j in res.positions[:TIMING_IMAGES]]))
            base, res, base_ms = frozen[key]
            if spec.adapted:  # fitted on the database images only: the queries stay unseen
                from .adaptation import MIN_IMAGES, adapt

                t0 = time.perf_counter()
                ok_db = np.isin(res.positions, db_rows)
                if ok_db.sum() < MIN_IMAGES:
                    emit(callbacks, "on_note", f"{text}: skipped: {int(ok_db.sum())} database images, too few to "
                                               f"learn a head from (it needs {MIN_IMAGES})")  # fmt: skip
                    continue
                the_model = adapt(base, res.vectors[ok_db], paths=[paths[j] for j in res.positions[ok_db]],
                                  epochs=adapt_epochs, seed=seed, num_workers=num_workers,
                                  callbacks=callbacks)  # fmt: skip
                train_s = time.perf_counter() - t0
                head_ms = _time_head(the_model, res.vectors[:TIMING_IMAGES])  # on the timed images' features
                if out is not None:
                    model_dir = str(the_model.save(out / "models" / text.replace("/", "_")))
            else:
                the_model = base
        the_model.set_precision("auto")
        if not spec.is_pretrained or spec.adapted:  # a frozen row reuses the embedding made above
            _warm_up(the_model)
            res = embed_files(the_model, paths, batch_size=batch_size, num_workers=num_workers, callbacks=callbacks)
        for path, reason in res.failures:
            logger.info("skipped %s: %s", path, reason)
        full = np.full((len(paths), res.vectors.shape[1]), np.nan, dtype=np.float32)
        full[res.positions] = res.vectors
        readable = np.zeros(len(paths), dtype=bool)
        readable[res.positions] = True
        q_ok, db_ok = q_rows[readable[q_rows]], db_rows[readable[db_rows]]
        result = evaluate_vectors(
            full[db_ok], labels_arr[db_ok], full[q_ok], labels_arr[q_ok], ks=DEFAULT_KS, map_at=map_at, knn_k=knn_k
        )
        # per-query arrays aligned with q_rows (NaN for an unreadable query), so rows pair up exactly
        aligned = np.full(len(q_rows), np.nan)
        aligned[readable[q_rows]] = result.query_ap_at_k
        result.query_ap_at_k = aligned
        if result.query_precision_at_k is not None:
            top = np.full((len(q_rows), len(result.ks)), np.nan)
            top[readable[q_rows]] = result.query_precision_at_k
            result.query_precision_at_k = top
        result.query_keys = [int(j) for j in q_rows]
        n_embedded = len(res.positions)
        if spec.is_pretrained:  # a frozen row's time was taken once; a head adds its own: never below the backbone
            encode_ms = base_ms + head_ms
        else:
            encode_ms = _time_encoder(the_model, [paths[j] for j in res.positions[:TIMING_IMAGES]])
        rows.append(Candidate(
            name=text, extractor=the_model.extractor, image_size=the_model.preprocessing.image_size,
            dims=the_model.embedding_dim, result=result, embed_seconds=res.seconds,
            images_per_s=n_embedded / res.seconds if res.seconds > 0 else 0.0, encode_ms=encode_ms,
            train_seconds=train_s, model=the_model, model_dir=model_dir, vectors=full,
        ))  # fmt: skip
    comparison = _judge(root, rows, q_rows, db_rows, paths, labs, bootstrap, seed)
    comparison.info.update({
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": str(labels) if labels else "sub-folders" + (f" (depth {label_depth})" if label_depth else ""),
        "query_fraction": query_fraction, "max_queries": max_queries, "seed": seed, "bootstrap": bootstrap,
        "map_at": map_at, "knn_k": knn_k, "seconds": round(time.perf_counter() - t_start, 1),
    })  # fmt: skip
    return comparison


def _warm_up(model: Any) -> None:
    """One tiny batch first, so tracing and allocation are not counted in the embedding time."""
    model.embed_pixels(np.zeros((2, *model.input_shape), dtype=np.uint8))


def _best_of(run: Any) -> float:
    """Seconds of the fastest of :data:`TIMING_REPEATS` calls of ``run``, after one untimed call."""
    run()
    best = math.inf
    for _ in range(TIMING_REPEATS):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def _time_encoder(model: Any, paths: list[Path]) -> float:
    """The encoder's milliseconds per image on ``paths`` (decoded beforehand, the same images for every row):
    the fastest of :data:`TIMING_REPEATS` warm passes, so one busy moment of a shared machine does not
    decide which of two extractors is called the faster."""
    if not paths:
        return 0.0
    pixels = np.stack([model.prepare(p) for p in paths])
    return 1000 * _best_of(lambda: model.embed_pixels(pixels)) / len(paths)


def _time_head(adapted: Any, features: np.ndarray) -> float:
    """Milliseconds per image of an adapted head alone, on its backbone's ``features`` of the timed images."""
    import torch

    if not len(features):
        return 0.0
    features = torch.from_numpy(np.ascontiguousarray(features))
    head = adapted.network.head

    def run() -> None:
        with torch.inference_mode():
            head(features)

    return 1000 * _best_of(run) / len(features)


def _judge(
    root: Path,
    rows: list[Candidate],
    q_rows: np.ndarray,
    db_rows: np.ndarray,
    paths: list[Path],
    labs: list[str],
    bootstrap: int,
    seed: int,
) -> Comparison:
    if not rows:
        raise LookalikeError(f"{root}: no extractor could be compared here (every row was skipped)")
    ranked = sorted(rows, key=lambda r: -r.score)
    best = ranked[0]
    k = best.result.map_k
    what = SCORE.format(k=k)
    common = dict(folder=root, n_images=len(paths), n_database=len(db_rows), n_queries=len(q_rows), rows=rows,
                  query_rows=q_rows, database_rows=db_rows, paths=paths, labels=labs)  # fmt: skip
    few = (f"; only {len(q_rows)} queries: a small difference here may not hold on other images of this kind"
           if len(q_rows) < FEW_QUERIES else "")  # fmt: skip
    if len(ranked) == 1:
        text = f"only {best.name} was measured: {what} {best.score:.3f}{few}"
        return Comparison(**common, winner=best.name, runner_up=None, margin=0.0, ci=(0.0, 0.0), p_value=1.0,
                          recommended=best.name, recommendation=text)  # fmt: skip
    second = ranked[1]
    margin, ci, p = paired_bootstrap(best.query_scores, second.query_scores, bootstrap, seed)
    recommended = best.name
    interval = f"95% CI {ci[0]:+.3f} to {ci[1]:+.3f}, p = {p:.3g}, {len(q_rows)} queries"
    if ci[0] > 0:
        text = (f"use {best.name}: {what} {best.score:.3f} vs {second.score:.3f} for {second.name} "
                f"(+{margin:.3f}, {interval}: significant)")  # fmt: skip
    else:
        faster = min((best, second), key=lambda r: r.encode_ms)
        recommended = faster.name
        text = (f"{best.name} and {second.name} are not distinguishable here ({what} {best.score:.3f} vs "
                f"{second.score:.3f}, {interval}); use {faster.name}, the faster "
                f"({faster.encode_ms:.2f} vs {max(best, second, key=lambda r: r.encode_ms).encode_ms:.2f} ms "
                "per image)")  # fmt: skip
    return Comparison(**common, winner=best.name, runner_up=second.name, margin=margin, ci=ci, p_value=p,
                      recommended=recommended, recommendation=text + few)  # fmt: skip


# ------------------------------------------------------------------------------------ remembering
def _record_path(folder: Path) -> Path:
    from .datasets import default_cache_dir

    key = hashlib.sha256(str(Path(folder).expanduser().resolve()).encode()).hexdigest()[:20]
    return default_cache_dir() / "compare" / f"{key}.json"


def remember(comparison: Comparison) -> Path:
    """Record the comparison for its folder in the lookalike cache (``--extractor auto`` reads it)."""
    from .serialization import atomic_write_json

    path = _record_path(comparison.folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, comparison.to_dict())
    return path


def recommended_extractor(folder: str | os.PathLike[str]) -> tuple[str, str]:
    """``(extractor spec, why)`` for ``--extractor auto``: the last comparison's pick for this folder.

    Without one, a quick comparison is run (at most 2,000 images, 200 queries: raw pixels, the installed
    pretrained extractors and the default, :data:`lookalike.models.spec.DEFAULT`) when the folder is
    labelled; an unlabelled folder gets the default (it learns without labels).
    Returns specs like ``"efficientnet-lite0@160+adapted"``, ``"pixels@32"`` or a saved model directory.
    """
    from .models.pretrained import installed_extractors

    path = _record_path(Path(folder))
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            pick = record["recommended"]
            row = next(r for r in record["rows"] if r["name"] == pick)
        except (OSError, ValueError, KeyError, StopIteration):
            logger.warning("ignoring unreadable comparison record %s", path)
        else:
            spec = row.get("model_dir") or _spec_of(row)
            return (
                spec,
                f"recommended by the comparison of {record['info'].get('created', '?')}: {record['recommendation']}",
            )
    from .models.spec import DEFAULT

    installed = installed_extractors()
    try:
        paths, labs = labelled_images(folder, None)
        split_queries(labs, 0.2, 200, 0)
    except LookalikeError:
        return DEFAULT, "no labels to compare extractors on: the default, which learns without them"
    extractors = [PIXELS, *installed, *([DEFAULT] if DEFAULT.split("+")[0] in installed else [])]
    quick = compare(folder, extractors=extractors, max_queries=200, **_quick_subset(paths))
    remember(quick)
    row = quick.row(quick.recommended)
    return _spec_of(row.to_dict()), f"quick comparison: {quick.recommendation}"


def _quick_subset(paths: list[Path]) -> dict[str, Any]:
    return {"query_fraction": min(0.5, 200 / max(1, len(paths)))} if len(paths) > 400 else {}


def _spec_of(row: dict[str, Any]) -> str:
    """The spec that makes a row's extractor again: ``autoencoder``, ``NAME@SIZE`` or ``NAME@SIZE+adapted``."""
    name = row["extractor"]
    if name == AUTOENCODER:
        return name
    base, plus, head = name.partition("+")
    return f"{base}@{row['image_size']}{plus}{head}"


# ----------------------------------------------------------------------------------------- report
def write_report(comparison: Comparison, out_dir: str | os.PathLike[str], examples: int = 4, k: int = 8) -> Path:
    """Write ``report.html`` (self-contained: pictures inlined, no CDN), ``compare.json`` and ``precision_at_k.png``.

    The examples are the queries on which the extractors disagree most (largest spread of AP@k), each
    with every row's top ``k`` results side by side, wrong labels framed red.
    """
    from .plots import precision_at_k_curve
    from .serialization import atomic_write_json

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    curve = precision_at_k_curve({r.name: r.result for r in comparison.rows}, out / "precision_at_k.png",
                                 title=f"{comparison.folder.name}: {comparison.n_queries} queries")  # fmt: skip
    atomic_write_json(out / "compare.json", comparison.to_dict())
    body = [
        _report_head(comparison),
        _report_table(comparison),
        f'<h2>Precision at k</h2><img src="{_data_uri(curve.read_bytes(), "image/png")}" alt="precision at k">',
    ]
    body.append(_report_examples(comparison, examples, k))
    page = _PAGE.format(title=html.escape(f"lookalike compare: {comparison.folder.name}"), body="\n".join(body))
    from ._fs import atomic_write_bytes

    target = out / "report.html"
    atomic_write_bytes(target, page.encode("utf-8", "backslashreplace"))  # names that are not UTF-8 stay readable
    return target


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _report_head(c: Comparison) -> str:
    verdict = "significant" if c.significant else "not significant"
    return (
        f"<h1>Which extractor finds lookalikes best in <code>{html.escape(str(c.folder))}</code></h1>"
        f'<p class="rec"><b>Recommendation:</b> {html.escape(c.recommendation)}</p>'
        f"<p>{c.n_images:,} labelled images: {c.n_queries:,} queries (stratified by label, seed "
        f"{c.info.get('seed', 0)}) searched against the other {c.n_database:,}. Relevant = same label. Extractors "
        f"are ranked by {html.escape(SCORE.format(k=c.rows[0].result.map_k))}: "
        f"{html.escape(SCORE_WHY.format(k=c.rows[0].result.map_k))}. The margin between the two best is "
        f"{verdict} by a paired bootstrap over queries ({c.info.get('bootstrap', '?')} resamples); between two "
        "that are not distinguishable the faster encoder is recommended (the fastest of "
        f"{TIMING_REPEATS} warm passes over the same {TIMING_IMAGES} images; an adapted head's time is its "
        "backbone's plus its own).</p>"
    )


def _report_table(c: Comparison) -> str:
    k = c.rows[0].result.map_k
    knn = c.rows[0].result.knn_k
    head = "".join(f"<th>{h}</th>" for h in ("extractor", "input px", "score", f"mAP@{k}", "P@1", "P@10",
                                              f"{knn}-NN acc.", "encoder ms / image", "embedding img/s", "dims",
                                              "training s"))  # fmt: skip
    body = []
    for r in sorted(c.rows, key=lambda r: -r.score):
        p = r.result.precision_at_k
        cls = ' class="best"' if r.name == c.recommended else ""
        cells = [html.escape(r.name), str(r.image_size), f"{r.score:.3f}", f"{r.result.map_at_k:.3f}",
                 f"{p.get(1, float('nan')):.3f}", f"{p.get(10, float('nan')):.3f}", f"{r.result.knn_accuracy:.3f}",
                 f"{r.encode_ms:.2f}", f"{r.images_per_s:,.0f}" if r.images_per_s else "-", f"{r.dims:,}",
                 f"{r.train_seconds:.0f}" if r.train_seconds else "-"]  # fmt: skip
        body.append(f"<tr{cls}>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    return f"<h2>Results</h2><table><tr>{head}</tr>{''.join(body)}</table>"


def _thumb_uri(path: Path, size: int = 72) -> str:
    from PIL import Image

    from .data import decode_image

    try:
        im = decode_image(path, 3, draft_size=size)
        im.thumbnail((size, size), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    except Exception:  # a picture that cannot be shown does not stop the report
        return ""
    return _data_uri(buf.getvalue(), "image/jpeg")


def _report_examples(c: Comparison, examples: int, k: int) -> str:
    if c.query_rows is None or c.database_rows is None or not examples:
        return ""
    aps = np.stack([r.result.query_ap_at_k for r in c.rows])  # (rows, queries)
    spread = np.nanmax(aps, axis=0) - np.nanmin(aps, axis=0)
    spread[~np.isfinite(spread)] = -1
    picks = np.argsort(-spread, kind="stable")[:examples]
    db = c.database_rows
    labels = np.asarray(c.labels)
    cache: dict[int, str] = {}

    def thumb(j: int) -> str:
        if j not in cache:
            cache[j] = _thumb_uri(c.paths[j])
        return cache[j]

    parts = ["<h2>Examples: the queries the extractors disagree on most</h2>"]
    for qi in picks.tolist():
        qrow = int(c.query_rows[qi])
        qlab = labels[qrow]
        parts.append(f'<div class="example"><div class="query"><img src="{thumb(qrow)}" alt=""><br>query<br>'
                     f"<small>{html.escape(str(qlab))}</small></div><table>")  # fmt: skip
        for r in c.rows:
            top = _top_k(r, qrow, db, k)
            cells = "".join(
                f'<td class="{"ok" if labels[j] == qlab else "bad"}"><img src="{thumb(j)}" alt="" '
                f'title="{html.escape(c.paths[j].name)}: {html.escape(str(labels[j]))}"></td>'
                for j in top
            )
            ap = r.result.query_ap_at_k[qi]
            parts.append(f"<tr><th>{html.escape(r.name)}<br><small>AP {ap:.2f}</small></th>{cells}</tr>")
        parts.append("</table></div>")
    return "\n".join(parts)


def _top_k(row: Candidate, qrow: int, db: np.ndarray, k: int) -> list[int]:
    vecs = row.vectors
    if vecs is None:
        return []
    q = vecs[qrow]
    d = vecs[db]
    ok = np.isfinite(d).all(axis=1)
    unit = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    s = unit @ (q / max(float(np.linalg.norm(q)), 1e-12))
    s[~ok] = -np.inf
    order = np.argsort(-s, kind="stable")[:k]
    return [int(db[j]) for j in order]


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: .5rem 0 1.5rem; }}
th, td {{ padding: .25rem .6rem; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.best td {{ background: #eef7ee; font-weight: 600; }}
.rec {{ background: #f4f6fb; padding: .7rem 1rem; border-left: 4px solid #4a6fd1; }}
.example {{ display: flex; gap: 1rem; align-items: flex-start; margin-bottom: 1.2rem; flex-wrap: wrap; }}
.example table td {{ padding: 2px; border: none; }}
.example img {{ width: 72px; height: 72px; object-fit: cover; display: block; }}
td.ok img {{ outline: 3px solid #3a3; outline-offset: -3px; }}
td.bad img {{ outline: 3px solid #d33; outline-offset: -3px; }}
.query {{ text-align: center; }}
img {{ max-width: 100%; }}
</style></head><body>
{body}
<p><small>Written by lookalike compare. Every picture is inlined: nothing is loaded from the network.</small></p>
</body></html>
"""
