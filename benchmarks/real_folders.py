#!/usr/bin/env python
"""``lookalike compare`` on real labelled folders: how each extractor retrieves, and whether the pick holds up.

    python benchmarks/real_folders.py                                  # every prepared development set
    python benchmarks/real_folders.py --sets dtd10,clothing --max-images 400 --json /tmp/real_quick.json
    python benchmarks/real_folders.py --extractors pixels,efficientnet-lite0@128 --halves A
    python benchmarks/real_folders.py --held-out                         # the held-out sets (final check only)
    python benchmarks/real_folders.py --sets none --cifar --extractors pixels,efficientnet-lite0@128
    nohup python benchmarks/real_folders.py --json benchmarks/results/real_folders_baseline.json > run.log 2>&1 &

**Sets**: the labelled sets of ``benchmarks/real_sets.py`` (prepared there: ``ROOT/<set>/<class>/<file>``,
``ROOT`` = ``--root``, else ``$LOOKALIKE_REAL_SETS``, else ``/work/data/real``). ``--sets`` names them
(default: every prepared development set); the held-out sets (pacs-sketch, gtsrb, flowers5) are only used
with ``--held-out`` (alone: all of them; with ``--sets``: allowed in the list). A set that is not prepared is
skipped with one line saying how to prepare it.

**Halves**: each set is split into two disjoint halves A and B, stratified by class and seeded
(``--split-seed``, default 0; each set draws from its own stream, seeded by the seed and the set's name):
the files of a class are shuffled, half go to A and half to B, and the odd one of a class with an odd count
goes to whichever half is smaller so far (A on a tie). ``--max-images N`` first keeps at most N images of the
set (both halves together), stratified: every class keeps the same share of its images, at least 4 (so each
half has a query and a database image of it); when even that is more than N (many small classes: gtsrb),
a seeded subset of whole classes is kept instead. The halves are folders of hard links (a copy where a hard
link cannot be made) under ``--cache-dir`` (default ``$TMPDIR/lookalike-bench/real``)
``/<set>/split<seed>[-max<N>]/{A,B}/<class>/<file>``, with ``halves.json`` beside them; a later run reuses
them when ``halves.json`` lists the same files and every link is still there.

**Protocol** (each half on its own): ``lookalike.comparison.compare(half, extractors=[...])`` with the
library's defaults, which are the CLI's: query fraction 0.2, at most 1,000 queries, mAP@100, 20-NN, seed 0,
2,000 bootstrap resamples, batch 128, 1 decoding worker; the autoencoder is trained on the half
(``--epochs``, default the preset's) and the ``+adapted`` heads are fitted on the half's database images,
neither with labels. Recorded per extractor and half: mAP@100, P@1, P@10, P@100, 20-NN accuracy, training /
fitting seconds, embedding images/s (decoding included), wall seconds of the row (from compare's
``on_compare_row`` callback to the next one), the number of queries, and every query's AP@100. Should the one
``compare`` call of a half fail, each extractor (a frozen extractor with its ``+adapted`` row) is re-run in a
``compare`` of its own on the same split (deterministic: same files, labels and seed); a failing one becomes
a row holding its error, and the recommendation is then made here with compare's rule (the best score,
``(AP@100 + P@10) / 2`` per query; if its margin over the second is not significant by the paired bootstrap,
the faster encoder of the two, by compare's repeated timing).

**Right pick**: compare's recommendation on half A is judged on half B and the other way round. It is right
when it has the best score (compare's criterion: per query ``(AP@100 + P@10) / 2``) on the other half, or
when it is not significantly worse than the best there: ``lookalike.comparison.paired_bootstrap(best, pick)``
over the other half's queries (the same queries for every row of a half) gives the mean difference, its
95 % interval and p; worse means the interval lies above 0 (compare's own rule for a significant margin).
The same verdict by mAP@100 alone is printed beside it. Printed: "pick right on X of Y halves".

**Tables**: per set, rows = extractors: mAP@100 on A and on B, then P@1, P@10 and 20-NN (mean of the halves),
training seconds and img/s (mean of the halves) and wall seconds (both halves); then each half's pick and its
verdict. The summary: per extractor the mean over the sets (each set: the mean of its halves) of mAP@100 and
P@10, and the worst difference, over every set and half, to ``--reference`` (frozen efficientnet-lite0@128) on
mAP@100, P@1 and P@10, with where it happened.

**--cifar**: the CIFAR-10 row of the project's protocol for the chosen extractors (database: the 50,000
train images, queries: the 10,000 test images, mAP@1000, cosine), run by ``benchmarks/compare_cifar10.py``'s
own child jobs (imported, not copied: pixels at 32 px, the default autoencoder trained 30 epochs or
``--epochs``, each ``NAME@SIZE`` frozen row and its ``+adapted`` row fitted on the database features);
``--cifar-per-class TRAIN,TEST`` takes the first TRAIN / TEST images of each class, for smoke runs.
``--sets none`` runs only CIFAR-10.

``--json PATH`` writes the arguments, the machine, the halves, every row (per-query AP included), the picks
and the summary; it is rewritten after every half, so a running benchmark can be read. Progress goes to
stderr; every number printed is measured by this run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FORMAT = "lookalike-real-folders"
HALVES = ("A", "B")
LITE0, LITE2 = "efficientnet-lite0", "efficientnet-lite2"
DEFAULT_EXTRACTORS = (
    "pixels",
    f"{LITE0}@128",
    f"{LITE0}@160",
    f"{LITE0}@128+adapted",
    f"{LITE0}+adapted",  # lookalike's default, at the size it chooses for the folder (160 px for these photos)
    f"{LITE2}@128",
)  # the from-scratch autoencoder (-e ...,autoencoder) took 95 % of a run's time and lost to pixels (BENCHMARKS.md)
REFERENCE = f"{LITE0}@128"
MIN_PER_CLASS = 4  # --max-images keeps at least this many images of a kept class (2 per half)
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lookalike-bench" / "real"
MANIFEST = "halves.json"


def _load_module(name: str, path: Path) -> Any:
    """A script of benchmarks/ as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


real_sets = _load_module("lookalike_bench_real_sets", BENCH / "real_sets.py")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _protocol() -> dict[str, Any]:
    """compare's defaults (the CLI passes the same values): the protocol every half is scored with."""
    from lookalike.comparison import compare

    params = inspect.signature(compare).parameters
    keys = ("query_fraction", "max_queries", "map_at", "knn_k", "seed", "bootstrap", "batch_size", "num_workers")
    return {k: params[k].default for k in keys}


# ============================================================================================ halves
def list_set(folder: Path) -> list[tuple[str, str]]:
    """``(relative path, class)`` of every file of a prepared set, in path order (hidden entries left out)."""
    items = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                items.append((f"{class_dir.name}/{f.name}", class_dir.name))
    return items


def _by_class(items: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for rel, label in items:
        out.setdefault(label, []).append(rel)
    return {c: sorted(v) for c, v in sorted(out.items())}


def subsample(items: Sequence[tuple[str, str]], max_images: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """At most ``max_images`` of ``items``, stratified (see the module docstring)."""
    if len(items) <= max_images:
        return list(items)
    by_class = _by_class(items)
    share = max_images / len(items)
    keep = {c: min(len(v), max(MIN_PER_CLASS, round(share * len(v)))) for c, v in by_class.items()}
    classes = list(by_class)
    if sum(keep.values()) > max_images:  # too many classes for every one to keep MIN_PER_CLASS images
        chosen, total = [], 0
        for i in rng.permutation(len(classes)).tolist():
            c = classes[i]
            if total + keep[c] <= max_images or len(chosen) < 2:
                chosen.append(c)
                total += keep[c]
        classes = sorted(chosen)
    out = []
    for c in classes:
        files = by_class[c]
        picked = rng.choice(len(files), size=keep[c], replace=False)
        out += [(files[j], c) for j in sorted(picked.tolist())]
    return out


def split_halves(items: Sequence[tuple[str, str]], rng: np.random.Generator) -> dict[str, list[str]]:
    """Two disjoint halves, stratified by class: ``{"A": [relative paths], "B": [...]}`` (path order)."""
    halves: dict[str, list[str]] = {"A": [], "B": []}
    for files in _by_class(items).values():
        order = [files[j] for j in rng.permutation(len(files)).tolist()]
        n = len(order) // 2
        halves["A"] += order[:n]
        halves["B"] += order[n : 2 * n]
        if len(order) % 2:
            halves["A" if len(halves["A"]) <= len(halves["B"]) else "B"].append(order[-1])
    return {h: sorted(v) for h, v in halves.items()}


def _set_seed(split_seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([split_seed, zlib.crc32(name.encode())])


def materialise(source: Path, dest: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """The halves of ``plan`` as folders of hard links under ``dest`` (reused when ``halves.json`` matches)."""
    manifest = dest / MANIFEST
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        old = None
    same = old is not None and old.get("halves") == plan["halves"] and old.get("source") == plan["source"]
    if same and all((dest / h / rel).is_file() for h, files in plan["halves"].items() for rel in files):
        return {**old, "reused": True}
    for h in HALVES:  # only the folders this function writes
        if (dest / h).exists():
            shutil.rmtree(dest / h)
    manifest.unlink(missing_ok=True)
    links = copies = 0
    for h, files in plan["halves"].items():
        for rel in files:
            target = dest / h / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source / rel, target)
                links += 1
            except OSError:  # another file system, or links not allowed: a copy is as good for reading
                shutil.copy2(source / rel, target)
                copies += 1
    record = {**plan, "hard_links": links, "copies": copies}
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, manifest)
    return {**record, "reused": False}


def prepare_halves(name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Split set ``name`` (prepared at ``folder``) and write its halves; what was written, where."""
    rng = _set_seed(args.split_seed, name)
    items = list_set(folder)
    if args.max_images:
        items = subsample(items, args.max_images, rng)
    halves = split_halves(items, rng)
    marker = json.loads((folder / real_sets.MARKER).read_text())
    tag = f"split{args.split_seed}" + (f"-max{args.max_images}" if args.max_images else "")
    dest = args.cache_dir / name / tag
    plan = {"set": name, "source": str(folder), "commit": marker.get("commit"), "split_seed": args.split_seed,
            "max_images": args.max_images, "halves": halves}  # fmt: skip
    record = materialise(folder, dest, plan)
    labels = {h: [rel.split("/", 1)[0] for rel in files] for h, files in halves.items()}
    return {
        "folder": str(dest),
        "reused": record["reused"],
        "hard_links": record.get("hard_links"),
        "copies": record.get("copies"),
        "images": {h: len(v) for h, v in halves.items()},
        "classes": {h: len(set(v)) for h, v in labels.items()},
        "set_images": len(items),
        "disjoint": not (set(halves["A"]) & set(halves["B"])),
    }


# =========================================================================================== compare
class _RowTimer:
    """compare's ``on_compare_row`` callback: when each row starts (its wall time runs to the next start)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.starts: list[tuple[str, float]] = []

    def on_compare_row(self, name: str, i: int, n: int) -> None:
        self.starts.append((name, time.perf_counter()))
        _log(f"{self.prefix}: row {i + 1}/{n} {name}")

    def on_epoch_end(self, stats: Any) -> None:
        epoch, loss = getattr(stats, "epoch", None), getattr(stats, "train_loss", None)  # epoch: 1-based
        if isinstance(epoch, int) and (epoch == 1 or epoch % 10 == 0):
            ips = getattr(stats, "images_per_s", None)
            _log(f"{self.prefix}: autoencoder epoch {epoch}" + (f", loss {loss:.4f}" if loss is not None else "")
                 + (f", {ips:,.0f} img/s" if ips else ""))  # fmt: skip

    def walls(self, end: float) -> dict[str, float]:
        out = {}
        for j, (name, t) in enumerate(self.starts):
            out[name] = (self.starts[j + 1][1] if j + 1 < len(self.starts) else end) - t
        return out


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _query_ap(comp: Any, row: Any, map_at: int, knn_k: int) -> np.ndarray:
    """Per-query AP@map_at of a compare row, aligned with ``comp.query_rows``.

    compare leaves them on ``row.result.query_ap_at_k``; were they missing, they are recomputed here from the
    row's vectors with :func:`lookalike.metrics.evaluate_vectors` (NaN for an unreadable query).
    """
    ap = getattr(row.result, "query_ap_at_k", None)
    if ap is not None and len(ap) == len(comp.query_rows):
        return np.asarray(ap, dtype=np.float64)
    from lookalike.metrics import evaluate_vectors

    vecs, labels = row.vectors, np.asarray(comp.labels)
    ok = np.isfinite(vecs).all(axis=1)
    q, db = comp.query_rows, comp.database_rows
    q_ok, db_ok = q[ok[q]], db[ok[db]]
    r = evaluate_vectors(vecs[db_ok], labels[db_ok], vecs[q_ok], labels[q_ok], ks=(1,), map_at=map_at, knn_k=knn_k)
    out = np.full(len(q), np.nan)
    out[ok[q]] = r.query_ap_at_k
    return out


def _row_record(comp: Any, row: Any, wall: float | None, protocol: dict[str, Any]) -> dict[str, Any]:
    r = row.result
    p = r.precision_at_k
    history = list(getattr(row.model, "info", {}).get("history", []) or []) if row.train_seconds else []
    rates = [h["images_per_s"] for h in history if isinstance(h, dict) and h.get("images_per_s")]
    return {
        "name": row.name,
        "extractor": row.extractor,
        "image_size": row.image_size,
        "dims": row.dims,
        "map_at_100": _num(r.map_at_k),
        "map_k": r.map_k,
        "p_at_1": _num(p.get(1)),
        "p_at_10": _num(p.get(10)),
        "p_at_100": _num(p.get(100)),
        "knn": _num(r.knn_accuracy),
        "knn_k": r.knn_k,
        "mean_average_precision": _num(r.mean_average_precision),
        "chance": _num(r.chance_precision),
        "train_seconds": row.train_seconds,
        "train_epochs": len(history) or None,  # the autoencoder's (an adapted head keeps no history here)
        "train_images_per_s": sum(rates) / len(rates) if rates else None,
        "embed_seconds": row.embed_seconds,
        "images_per_s": row.images_per_s,
        "wall_seconds": wall,
        "n_images": comp.n_images,
        "n_database": comp.n_database,
        "n_queries": comp.n_queries,
        "n_evaluated": r.n_evaluated,
        "score": _num(row.score),
        "encode_ms": row.encode_ms,
        "_ap": _query_ap(comp, row, protocol["map_at"], protocol["knn_k"]),
        "_score": np.asarray(row.query_scores, dtype=np.float64),
    }


def _groups(specs: Sequence[str]) -> list[list[str]]:
    """Specs that share work in compare (a frozen extractor and its ``+adapted`` row), in the given order."""
    from lookalike.errors import LookalikeError
    from lookalike.models.spec import parse_spec

    groups: dict[Any, list[str]] = {}
    for s in specs:
        try:
            parsed = parse_spec(s)
            key: Any = (parsed.name, parsed.image_size)
        except LookalikeError:  # a bad spec fails in its own compare call, as a row
            key = s
        groups.setdefault(key, []).append(s)
    return list(groups.values())


def _recommend(rows: list[dict[str, Any]], bootstrap: int, seed: int) -> dict[str, Any]:
    """compare's rule, for rows gathered from several compare calls (the fallback)."""
    from lookalike.comparison import paired_bootstrap

    ok = sorted((r for r in rows if "error" not in r), key=lambda r: -(r["score"] or -1.0))
    if not ok:
        return {"recommended": None, "winner": None, "runner_up": None, "recommendation": "every row failed"}
    best = ok[0]
    if len(ok) == 1:
        return {"recommended": best["name"], "winner": best["name"], "runner_up": None, "margin": 0.0,
                "ci95": [0.0, 0.0], "p_value": 1.0, "recommendation": f"only {best['name']} was measured"}  # fmt: skip
    second = ok[1]
    margin, ci, p = paired_bootstrap(best["_score"], second["_score"], bootstrap, seed)
    pick = best if ci[0] > 0 else min((best, second), key=lambda r: r["encode_ms"])
    text = (f"{best['name']} vs {second['name']}: {margin:+.3f} (95% CI {ci[0]:+.3f} to {ci[1]:+.3f}, p = {p:.3g})"
            f"; use {pick['name']} (rule of compare, applied by real_folders.py)")  # fmt: skip
    return {"recommended": pick["name"], "winner": best["name"], "runner_up": second["name"], "margin": margin,
            "ci95": list(ci), "p_value": p, "recommendation": text}  # fmt: skip


def run_half(folder: Path, specs: list[str], args: argparse.Namespace, protocol: dict[str, Any],
             prefix: str) -> dict[str, Any]:  # fmt: skip
    """compare on one half: its rows (or their errors), its recommendation and the query list."""
    from lookalike.comparison import compare, labelled_images, split_queries

    out: dict[str, Any] = {"folder": str(folder)}
    t0, cpu0, busy0 = time.perf_counter(), _own_cpu(), _busy_cpu()
    try:  # a half compare cannot split fails every row the same way: say so once, without any work
        paths, labs = labelled_images(folder, None)
        split_queries(labs, protocol["query_fraction"], protocol["max_queries"], protocol["seed"])
    except Exception as exc:  # noqa: BLE001 - LookalikeError mostly (too few images); never a crash
        out.update(error=str(exc), rows=[{"name": s, "error": str(exc)} for s in specs], recommended=None)
        return out
    kwargs = dict(epochs=args.epochs, query_fraction=protocol["query_fraction"], max_queries=protocol["max_queries"],
                  map_at=protocol["map_at"], knn_k=protocol["knn_k"], seed=protocol["seed"],
                  bootstrap=protocol["bootstrap"], num_workers=args.workers)  # fmt: skip
    rows: list[dict[str, Any]] = []
    query_rows = None
    try:
        timer = _RowTimer(prefix)
        comp = compare(folder, extractors=specs, callbacks=[timer], **kwargs)
        walls = timer.walls(time.perf_counter())
        rows = [_row_record(comp, row, walls.get(row.name), protocol) for row in comp.rows]
        query_rows = comp.query_rows
        paths = comp.paths
        out.update(
            recommended=comp.recommended, winner=comp.winner, runner_up=comp.runner_up, margin=comp.margin,
            ci95=list(comp.ci), p_value=comp.p_value, recommendation=comp.recommendation, recommended_by="compare",
            compare_seconds=comp.info.get("seconds"),
        )  # fmt: skip
        del comp
    except Exception as exc:  # noqa: BLE001 - one extractor's failure must not lose the others
        _log(f"{prefix}: compare with every extractor failed ({type(exc).__name__}: {exc}); one group at a time")
        out["compare_error"] = f"{type(exc).__name__}: {exc}"
        rows = []
        for group in _groups(specs):
            timer = _RowTimer(f"{prefix} [{'+'.join(group)}]")
            try:
                comp = compare(folder, extractors=group, callbacks=[timer], **kwargs)
            except Exception as exc2:  # noqa: BLE001
                _log(f"{prefix}: {', '.join(group)} FAILED: {type(exc2).__name__}: {exc2}")
                rows += [{"name": s, "error": f"{type(exc2).__name__}: {exc2}"} for s in group]
                continue
            walls = timer.walls(time.perf_counter())
            if query_rows is not None and not np.array_equal(query_rows, comp.query_rows):  # cannot be paired
                rows += [{"name": s, "error": "compare drew other queries for this half"} for s in group]
                continue
            query_rows, paths = comp.query_rows, comp.paths
            rows += [_row_record(comp, row, walls.get(row.name), protocol) for row in comp.rows]
            del comp
        out.update(_recommend(rows, protocol["bootstrap"], protocol["seed"]), recommended_by="real_folders.py")
    out["rows"] = rows
    if query_rows is not None:
        out["query_files"] = [paths[j].relative_to(folder.resolve()).as_posix() for j in query_rows.tolist()]
    wall = time.perf_counter() - t0
    out["seconds"] = wall
    busy = _busy_cpu()
    if busy is not None and busy0 is not None:
        out["other_load_cores"] = round(max(0.0, (busy - busy0 - (_own_cpu() - cpu0)) / wall), 2)
    return out


def _own_cpu() -> float:
    """CPU seconds of this process and its finished children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _busy_cpu() -> float | None:
    """Non-idle CPU seconds of the whole machine (``/proc/stat``), or None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ============================================================================================ judging
JUDGED_ON = {"score": ("score", "_score"), "mAP@100": ("map_at_100", "_ap")}  # what a pick is judged on


def judge(pick: str | None, other: dict[str, Any], bootstrap: int, seed: int, on: str = "score") -> dict[str, Any]:
    """Is ``pick`` (recommended on one half) the best on ``other``, or not significantly worse than it, by
    ``on``: compare's own score (``score``: per query (AP@100 + P@10) / 2) or ``mAP@100``?"""
    from lookalike.comparison import paired_bootstrap

    key, per_query = JUDGED_ON[on]
    ok = [r for r in other.get("rows", []) if "error" not in r and r.get(key) is not None]
    if pick is None or not ok:
        return {"pick": pick, "verdict": "not judged", "why": "no pick" if pick is None else "no rows there"}
    best = max(ok, key=lambda r: r[key])
    mine = next((r for r in ok if r["name"] == pick), None)
    out: dict[str, Any] = {"pick": pick, "on": on, "best_there": best["name"], "best_value": best[key]}
    if mine is None:
        return {**out, "verdict": "not judged", "why": f"{pick} has no result on the other half"}
    out["pick_value"] = mine[key]
    if mine is best:
        return {**out, "verdict": "right", "diff": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0, "why": "best there"}
    d, ci, p = paired_bootstrap(best[per_query], mine[per_query], bootstrap, seed)
    right = not ci[0] > 0
    why = (f"{best['name']} - {pick} = {d:+.3f} {on} (95% CI {ci[0]:+.3f} to {ci[1]:+.3f}, p = {p:.3g}): "
           + ("not significantly worse" if right else "significantly worse"))  # fmt: skip
    return {**out, "verdict": "right" if right else "wrong", "diff": d, "ci95": list(ci), "p_value": p, "why": why}


# =========================================================================================== printing
def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _print_table(title: str, head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print(f"\n{title}")
    for j, r in enumerate([head, *rows]):
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        print("  ".join(cells).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _rows_by_name(result: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """half -> the row called ``name`` in that half (errors included)."""
    out = {}
    for h, half in result.get("halves", {}).items():
        row = next((r for r in half.get("rows", []) if r["name"] == name), None)
        if row is not None:
            out[h] = row
    return out


SET_HEAD = ["extractor", "mAP@100 A", "mAP@100 B", "P@1", "P@10", "20-NN", "train s", "img/s", "enc ms", "wall s"]


def print_set(name: str, result: dict[str, Any], specs: list[str]) -> None:
    halves = result.get("halves", {})
    rows, failures = [], []
    for spec in specs:
        by_half = _rows_by_name(result, spec)
        errors = [f"{h}: {r['error']}" for h, r in by_half.items() if "error" in r]
        ok = {h: r for h, r in by_half.items() if "error" not in r}
        cells = [spec, _fmt(ok.get("A", {}).get("map_at_100")), _fmt(ok.get("B", {}).get("map_at_100"))]
        for key, spec_fmt in (("p_at_1", ".3f"), ("p_at_10", ".3f"), ("knn", ".3f"), ("train_seconds", ".1f"),
                              ("images_per_s", ",.0f"), ("encode_ms", ".2f")):  # fmt: skip
            cells.append(_fmt(_mean([r.get(key) for r in ok.values()]), spec_fmt))
        walls = [r.get("wall_seconds") for r in ok.values()]
        cells.append(_fmt(sum(w for w in walls if w is not None) if ok else None, ",.0f"))
        if errors:
            cells[-1] += "  FAILED (below)"
            failures += [f"{spec} on {e}" for e in errors]
        rows.append(cells)
    info = result.get("split", {})
    parts = []
    for h, half in halves.items():
        queries = next((r["n_queries"] for r in half.get("rows", []) if "n_queries" in r), "?")
        parts.append(f"{h} {info.get('images', {}).get(h, '?')} images / {queries} queries")
    n = ", ".join(parts)
    _print_table(f"{name} ({n}; P@1 .. img/s: mean of the halves, wall s: both halves)", SET_HEAD, rows)
    for text in failures:
        print(f"FAILED: {text}")
    for h, verdict in result.get("picks", {}).items():
        rec = halves.get(h, {}).get("recommendation", "")
        print(f"pick on {h}: {verdict.get('pick')} ({rec})")
        print(f"  judged on {verdict.get('judged_on')}: {verdict['verdict'].upper()}: {verdict.get('why', '')}")
        by_map = verdict.get("by_map", {})
        print(f"  by mAP@100 alone: {by_map.get('verdict', '?').upper()}: {by_map.get('why', '')}")


def summarise(results: dict[str, Any], specs: list[str], reference: str) -> dict[str, Any]:
    """Mean mAP@100 / P@10 over the sets, the worst differences to ``reference``, and the picks."""
    per: dict[str, Any] = {}
    for spec in specs:
        maps, p10s, sets_done = [], [], []
        worst: dict[str, Any] = {}
        for set_name, res in results["sets"].items():
            by_half = {h: r for h, r in _rows_by_name(res, spec).items() if "error" not in r}
            if not by_half:
                continue
            sets_done.append(set_name)
            maps.append(_mean([r["map_at_100"] for r in by_half.values()]))
            p10s.append(_mean([r["p_at_10"] for r in by_half.values()]))
            refs = {h: r for h, r in _rows_by_name(res, reference).items() if "error" not in r}
            for h, r in by_half.items():
                if h not in refs:
                    continue
                for key in ("map_at_100", "p_at_1", "p_at_10"):
                    if r.get(key) is None or refs[h].get(key) is None:
                        continue
                    d = r[key] - refs[h][key]
                    if key not in worst or d < worst[key]["diff"]:
                        worst[key] = {"diff": d, "where": f"{set_name}/{h}"}
        per[spec] = {"sets": sets_done, "mean_map_at_100": _mean(maps), "mean_p_at_10": _mean(p10s),
                     "worst_vs_reference": worst}  # fmt: skip
    verdicts = [v for res in results["sets"].values() for v in res.get("picks", {}).values()]
    judged = [v for v in verdicts if v["verdict"] in ("right", "wrong")]
    by_map = [v["by_map"] for v in verdicts if v.get("by_map", {}).get("verdict") in ("right", "wrong")]
    return {"reference": reference, "extractors": per, "picks_right": sum(v["verdict"] == "right" for v in judged),
            "picks_judged": len(judged), "picks_not_judged": len(verdicts) - len(judged),
            "picks_right_by_map": sum(v["verdict"] == "right" for v in by_map),
            "picks_judged_by_map": len(by_map)}  # fmt: skip


def print_summary(summary: dict[str, Any], n_sets: int) -> None:
    ref = summary["reference"]
    head = ["extractor", "sets", "mean mAP@100", "mean P@10", f"worst dmAP@100 vs {ref}", "worst dP@1", "worst dP@10"]
    rows = []
    for spec, s in summary["extractors"].items():
        cells = [spec, str(len(s["sets"])), _fmt(s["mean_map_at_100"]), _fmt(s["mean_p_at_10"])]
        for key in ("map_at_100", "p_at_1", "p_at_10"):
            w = s["worst_vs_reference"].get(key)
            cells.append("-" if w is None else f"{w['diff']:+.3f} ({w['where']})")
        rows.append(cells)
    _print_table(f"summary over {n_sets} set(s) (each set: mean of its halves; worst: over every set and half)",
                 head, rows)  # fmt: skip
    extra = f" ({summary['picks_not_judged']} not judged)" if summary["picks_not_judged"] else ""
    right_map, judged_map = summary.get("picks_right_by_map", "?"), summary.get("picks_judged_by_map", "?")
    print(f"pick right on {summary['picks_right']} of {summary['picks_judged']} halves{extra} (judged on compare's "
          f"score); by mAP@100 alone: {right_map} of {judged_map}")  # fmt: skip


# ============================================================================================ results
def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if k == "_ap":
                out["query_ap_at_100"] = [None if not np.isfinite(a) else round(float(a), 4) for a in v]
            elif k == "_score":
                out["query_score"] = [None if not np.isfinite(a) else round(float(a), 4) for a in v]
            else:
                out[k] = _jsonable(v)
        return out
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return None if not math.isfinite(x) else x
    return x


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    os.replace(tmp, path)


def machine_info() -> dict[str, Any]:
    import torch

    import lookalike

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))  # fmt: skip
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_model": cpu, "cpu_count": os.cpu_count(),
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
            "lookalike_version": getattr(lookalike, "__version__", None), "python": platform.python_version(),
            "loadavg_at_start": list(os.getloadavg())}  # fmt: skip


# ============================================================================================== cifar
def run_cifar(specs: list[str], args: argparse.Namespace, results: dict[str, Any]) -> int:
    """The CIFAR-10 rows of ``specs`` through benchmarks/compare_cifar10.py's child jobs; failures counted."""
    from lookalike.models.pretrained import get_backbone
    from lookalike.models.spec import parse_spec

    cc = _load_module("lookalike_bench_compare_cifar10", BENCH / "compare_cifar10.py")
    quality = cc.quality
    sec: dict[str, Any] = {"protocol": {"database": "50,000 train", "queries": "10,000 test", "ks": list(cc.KS),
                                        "map_at": cc.MAP_AT, "knn_k": cc.KNN_K, "metric": "cosine"},
                           "rows": []}  # fmt: skip
    results["cifar"] = sec
    data = args.cifar_data if args.cifar_data.is_absolute() else REPO / args.cifar_data
    npz = quality.decoded_npz(data, args.cifar_cache)
    if npz is None:
        sec["skipped"] = f"neither {data} nor {args.cifar_cache / quality.NPZ_NAME} exists"
        print(f"CIFAR-10 skipped: {sec['skipped']}")
        return 0
    train_pc, test_pc = args.cifar_per_class or (None, None)
    sec.update(npz=str(npz), train_per_class=train_pc, test_per_class=test_pc)
    groups: dict[Any, dict[str, Any]] = {}  # job key -> job and the rows wanted from it
    bad: list[dict[str, Any]] = []
    for spec in specs:
        try:
            parsed = parse_spec(spec)
            name, size, adapted = parsed.name, parsed.image_size, parsed.adapted
            if name in ("pixels", "autoencoder"):
                if adapted or (size not in (None, 32)):
                    raise ValueError(f"{spec}: the CIFAR-10 protocol has {name} at 32 px only, not adapted")
                key, row = name, name
                job = {"kind": name, "autoencoder_dir": None, "ae_epochs": args.epochs or cc.AE_EPOCHS}
            else:
                size = size or get_backbone(name).default_size
                key, row = (name, size), f"{name}@{size}" + ("+adapted" if adapted else "")
                job = {"kind": "extractor", "name": name, "size": size, "adapt": [], "adapt_epochs": None}
        except Exception as exc:  # noqa: BLE001 - reported as the row's error
            bad.append({"name": spec, "error": str(exc)})
            continue
        g = groups.setdefault(key, {"job": job, "rows": {}})
        g["rows"][row] = spec
        if row.endswith("+adapted") and "adapted" not in g["job"]["adapt"]:
            g["job"]["adapt"].append("adapted")
    sec["rows"] += bad
    names = sorted({g["job"]["name"] for g in groups.values() if g["job"]["kind"] == "extractor"})
    weights, no_weights = cc._weights(names, args.cifar_weights_dir) if names else ({}, {})
    base = {"npz": str(npz), "seed": args.seed, "weights": weights, "train_pc": train_pc, "test_pc": test_pc}
    failed = 0
    for key, g in groups.items():
        job = {**base, **g["job"]}
        if job["kind"] == "extractor" and job["name"] in no_weights:
            sec["rows"] += [{"name": s, "error": no_weights[job["name"]]} for s in g["rows"].values()]
            continue
        _log(f"CIFAR-10 {key} started")
        try:
            res = cc.spawn(job)
        except (RuntimeError, OSError, ValueError) as exc:
            failed += 1
            _log(f"CIFAR-10 {key} FAILED: {exc}")
            sec["rows"] += [{"name": s, "error": str(exc)} for s in g["rows"].values()]
            continue
        for r in res["result"]:
            if r["name"] in g["rows"]:
                r.update(spec=g["rows"][r["name"]], other_load_cores=res.get("other_load_cores"),
                         child_wall_seconds=res["wall_seconds"], rss_mib=res["rss_mib"])  # fmt: skip
                sec["rows"].append(r)
                _log(f"CIFAR-10 {r['name']}: mAP@1000 {r['map_at_1000']:.3f}, P@10 {r['p_at_10']:.3f}")
        write_json(args.json, results)
    cc.print_quality(sec)
    return failed


# =============================================================================================== main
def _choose_sets(args: argparse.Namespace, ap: argparse.ArgumentParser) -> list[str]:
    if args.sets is not None and args.sets.strip().lower() == "none":
        return []
    if args.sets:
        names = [s.strip() for s in args.sets.split(",") if s.strip()]
        unknown = [n for n in names if n not in real_sets.BY_NAME]
        if unknown:
            ap.error(f"unknown set(s) {', '.join(unknown)}; known: {', '.join(real_sets.BY_NAME)}")
        held = [n for n in names if real_sets.get(n).held_out]
        if held and not args.held_out:
            ap.error(f"{', '.join(held)} held out: add --held-out to use them (only for the final check)")
        return names
    return [s.name for s in real_sets.SETS if s.held_out == args.held_out]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip().splitlines()[0],
        epilog="The halves, the protocol and how a pick is judged are described in this script's docstring.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--sets", help="comma-separated set names, or none (default: every prepared development set)")
    ap.add_argument("--held-out", action="store_true",
                    help="use the held-out sets (alone: all of them; with --sets: allows naming them)")  # fmt: skip
    ap.add_argument("--extractors", default=",".join(DEFAULT_EXTRACTORS),
                    help=f"comma-separated compare specs (default: {','.join(DEFAULT_EXTRACTORS)})")  # fmt: skip
    ap.add_argument("--halves", default="A,B", help="which halves to run: A, B or A,B (default A,B)")
    ap.add_argument("--max-images", type=int, help="keep at most this many images of each set (both halves)")
    ap.add_argument("--epochs", type=int, help="epochs of the autoencoder (default: the preset's)")
    ap.add_argument("--workers", type=int, default=None, help="processes decoding images (default: compare's)")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the halves (default 0)")
    ap.add_argument("--reference", default=REFERENCE, help=f"row the summary compares to (default {REFERENCE})")
    ap.add_argument("--root", type=Path, default=real_sets.default_root(),
                    help=f"prepared sets (default ${real_sets.ROOT_ENV} or {real_sets.DEFAULT_ROOT})")  # fmt: skip
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"halves go here (default {DEFAULT_CACHE})")
    ap.add_argument("--json", type=Path, help="write every number here (rewritten after every half)")
    ap.add_argument("--cifar", action="store_true", help="also run the CIFAR-10 protocol (mAP@1000) for the extractors")
    ap.add_argument("--cifar-per-class", help="TRAIN,TEST: the first images of each class only (smoke runs)")
    ap.add_argument(
        "--cifar-data",
        type=Path,
        default=Path("..") / "shared" / "data" / "cifar10-jpg.tar.gz",
        help="CIFAR-10 JPEG tarball (default ../shared/data/cifar10-jpg.tar.gz from the repo root)",
    )
    ap.add_argument("--cifar-cache", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-bench",
                    help="where the tarball is decoded once (compare_cifar10.py's default)")  # fmt: skip
    ap.add_argument("--cifar-weights-dir", type=Path, default=REPO.parent / "shared" / "data" / "weights",
                    help="safetensors used when the weight packages are not installed")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="seed of the CIFAR-10 training and fitting (default 0)")
    args = ap.parse_args(argv)

    specs = [s.strip() for s in args.extractors.split(",") if s.strip()]
    if not specs:
        ap.error("--extractors is empty")
    halves = [h.strip().upper() for h in args.halves.split(",") if h.strip()]
    if not halves or not set(halves) <= set(HALVES):
        ap.error(f"--halves takes A, B or A,B, not {args.halves!r}")
    if args.max_images is not None and args.max_images < 8:
        ap.error("--max-images must be at least 8 (2 classes x 4 images)")
    if args.cifar_per_class:
        try:
            args.cifar_per_class = tuple(int(v) for v in args.cifar_per_class.split(","))
            assert len(args.cifar_per_class) == 2 and min(args.cifar_per_class) > 0
        except (ValueError, AssertionError):
            ap.error("--cifar-per-class takes TRAIN,TEST (two positive numbers)")
    set_names = _choose_sets(args, ap)
    args.cache_dir = args.cache_dir.expanduser().resolve()
    args.cifar_cache = args.cifar_cache.expanduser()
    protocol = _protocol()
    if args.workers is None:
        args.workers = protocol["num_workers"]
    protocol["num_workers"] = args.workers

    results: dict[str, Any] = {
        "format": FORMAT,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "extractors": specs,
        "protocol": {**protocol, "autoencoder_epochs": args.epochs or "preset default"},
        "machine": machine_info(),
        "sets": {},
        "skipped_sets": {},
    }
    m = results["machine"]
    print(
        f"{m['cpu_model']}, {m['cpu_count']} CPUs, torch {m['torch_version']} ({m['torch_threads']} threads), "
        f"load average {m['loadavg_at_start'][0]:.2f}; sets: {', '.join(set_names) or 'none'}",
        flush=True,
    )
    started = time.perf_counter()
    for name in set_names:
        folder = real_sets.set_root(name, args.root)
        if folder is None:
            spec = real_sets.get(name)
            why = (f"not prepared under {args.root}: python benchmarks/real_sets.py prepare {name} --root {args.root}"
                   f" (needs the snapshot of {spec.repo}: {spec.fetch_hint})")  # fmt: skip
            print(f"{name}: skipped, {why}", flush=True)
            results["skipped_sets"][name] = why
            continue
        res: dict[str, Any] = {"kind": real_sets.get(name).kind, "held_out": real_sets.get(name).held_out,
                               "halves": {}, "picks": {}}  # fmt: skip
        results["sets"][name] = res
        t_set = time.perf_counter()
        res["split"] = split = prepare_halves(name, folder, args)
        _log(f"{name}: halves {split['images']} images, {split['classes']} classes "
             f"({'reused' if split['reused'] else 'written'} under {split['folder']})")  # fmt: skip
        for h in halves:
            _log(f"{name}/{h}: compare {', '.join(specs)}")
            half = run_half(Path(split["folder"]) / h, specs, args, protocol, f"{name}/{h}")
            res["halves"][h] = half
            for r in half["rows"]:
                if "error" in r:
                    _log(f"{name}/{h} {r['name']}: FAILED {r['error']}")
                else:
                    _log(f"{name}/{h} {r['name']}: mAP@100 {r['map_at_100']:.3f}, P@10 {r['p_at_10']:.3f}, "
                         f"train {r['train_seconds']:.1f} s, {r['images_per_s']:.0f} img/s, wall "
                         f"{_fmt(r['wall_seconds'], '.1f')} s")  # fmt: skip
            _log(f"{name}/{h}: recommended {half.get('recommended')} ({half.get('seconds', 0):.0f} s)")
            write_json(args.json, results)
        for h in halves:
            other = "B" if h == "A" else "A"
            if other in res["halves"]:
                pick = res["halves"][h].get("recommended")
                verdict = judge(pick, res["halves"][other], protocol["bootstrap"], protocol["seed"])
                by_map = judge(pick, res["halves"][other], protocol["bootstrap"], protocol["seed"], on="mAP@100")
                res["picks"][h] = {**verdict, "picked_on": h, "judged_on": other, "by_map": by_map}
        res["seconds"] = time.perf_counter() - t_set
        print_set(name, res, specs)
        write_json(args.json, results)

    failed = 0
    if results["sets"]:
        results["summary"] = summarise(results, specs, args.reference)
        print_summary(results["summary"], len(results["sets"]))
    if args.cifar:
        failed = run_cifar(specs, args, results)
    results["total_seconds"] = time.perf_counter() - started
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    write_json(args.json, results)
    print(f"total {results['total_seconds'] / 60:.1f} min" + (f"; wrote {args.json}" if args.json else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
