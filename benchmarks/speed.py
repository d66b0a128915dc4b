#!/usr/bin/env python
"""Search and indexing speed of lookalike against "the seed's way" (seed 001), in one run.

    python benchmarks/speed.py --json benchmarks/results/speed.json
    python benchmarks/speed.py --quick            # smaller: 10,000 images, fewer query repeats
    python benchmarks/speed.py --skip-index --background-load 1   # + the single query under one busy core

What is measured (each measurement runs in a fresh child process of this script, so that memory and
warm caches of one measurement never leak into another):

1. **One query over a 10,000 x 1,000 database, from an already decoded 32x32 Pillow image.**
   *seed way* (seed 001's ``visual_similarity``): ToTensor + Normalize(0.5, 0.5) of the one image, the
   cifar-seed encoder under ``torch.no_grad``, a Python list of 10,000 ``F.cosine_similarity`` calls
   against ``(1, 1000)`` torch vectors, ``.item()`` and ``round(x, 3)`` on each, then a full sort
   (``sorted()``; the seed used ``pandas.Series.sort_values``).
   *lookalike way*: ``Index.search(image, k=10)`` on an in-memory :class:`lookalike.search.Index` built
   directly from an :class:`~lookalike.index.ExactIndex` holding the same 10,000 vectors and dummy
   catalog rows (so the timed call is the public API: ``model.embed`` + ``ExactIndex.search`` + hits).
   The database is 10,000 seeded random non-negative 1000-d vectors (the bottleneck is a ReLU);
   the query image is seeded random pixels. No data files are needed.
2. **Indexing the CIFAR-10 train JPEGs** (50,000; 10,000 with ``--quick``).
   *lookalike way*: ``Index.build(folder, Model.from_preset("cifar-seed"), out_dir)`` end to end: listing,
   decode, sha256, encode, writing vectors + SQLite catalog + model copy, atomic rename; for each
   ``num_workers`` x ``batch_size`` asked for.
   *seed way*: per file, decode with Pillow (for cv2.imread + cvtColor), ToTensor, Normalize, encode one
   image per forward pass, append the feature to a list, then ``np.save`` of the stacked features.
   The model is created before the clock starts in both ways.
3. **Peak RSS** of every measurement (see ``_rss`` below for how it is counted).
4. With ``--background-load N``: **the single query of 1. quiet and with N other busy processes**, in one
   child: N processes (started before the first loaded block, stopped after the last, and bounded in time)
   spin a pure-Python loop, each keeping one core busy, during alternate blocks of queries; the other
   blocks run with them asleep. Quiet and loaded medians and p95s come from the same run, the blocks
   interleaved, so the machine's own drift falls on both. Goal: loaded median <= 2x and p95 <= 5x the
   quiet ones.

The tarball is extracted once into ``--cache-dir`` and reused. If it is absent, the indexing part is
skipped with a message and the script still exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("..") / "shared" / "data" / "cifar10-jpg.tar.gz"  # relative to the repository root
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lookalike-bench"

QUERY_DB_SIZE = 10_000
QUERY_DIM = 1000
QUERY_K = 10
GOAL_QUERY_SPEEDUP = 50.0
GOAL_INDEX_RATE = 3000.0
GOAL_INDEX_SPEEDUP = 2.5
GOAL_LOAD_MEDIAN_RATIO = 2.0  # single query with background load: loaded median <= 2x the quiet median
GOAL_LOAD_P95_RATIO = 5.0  # ... and loaded p95 <= 5x the quiet p95
LOAD_BLOCK = 25  # queries per block of the quiet/loaded interleaving
LOAD_SETTLE_S = 0.2  # after waking (or stopping) the busy processes, before the next block is timed
LOAD_MAX_SECONDS = 600.0  # a busy process exits after this long whatever happens (or when its parent dies)


# ================================================================================ child measurements
def _rss() -> dict[str, float]:
    """Peak resident set sizes of this child, in MiB.

    ``main``: this process (``RUSAGE_SELF``). ``workers``: the largest single descendant that has been
    waited for (``RUSAGE_CHILDREN``): the DataLoader worker processes, which PyTorch joins when the loader
    is exhausted. Linux reports the largest child, not a sum; the workers are forked from the main process
    and share its pages copy-on-write (torch, the model), so adding ``main + n x workers`` would overstate
    the total. ``ru_maxrss`` is in KiB on Linux.
    """
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"main": round(self_kib / 1024, 1), "workers": round(kids_kib / 1024, 1)}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000.0 for s in seconds)
    p95 = ms[min(len(ms) - 1, max(0, int(round(0.95 * len(ms))) - 1))]
    return {
        "median_ms": statistics.median(ms),
        "p95_ms": p95,
        "mean_ms": statistics.fmean(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "runs": len(ms),
    }


def _query_inputs() -> tuple[Any, Any]:
    """The seeded query image (decoded 32x32 RGB Pillow image) and database (10,000 x 1,000 float32)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1234)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mode="RGB")
    database = rng.random((QUERY_DB_SIZE, QUERY_DIM), dtype=np.float32)
    return image, database


def _seed_model() -> Any:
    from lookalike.models import Model

    model = Model.from_preset("cifar-seed")
    model.network.eval()
    return model


def _seed_preprocess(image: Any) -> Any:
    """Seed 001: cv2.imread -> RGB -> cv2.resize(32, 32) -> ToTensor -> Normalize((0.5,)*3, (0.5,)*3)."""
    import numpy as np
    import torch

    if image.size != (32, 32):
        image = image.resize((32, 32))
    arr = np.asarray(image)  # HWC uint8 RGB, what cv2 gives after cvtColor
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0)  # transforms.ToTensor
    mean = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
    std = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
    return (x - mean) / std  # transforms.Normalize


def one_query_seed(repeats: int, warmup: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    image, database = _query_inputs()
    model = _seed_model()
    encoder = model.network
    features = [torch.from_numpy(database[i : i + 1]) for i in range(len(database))]  # (1, 1000) each

    def visual_similarity(img: Any) -> list[int]:
        x = _seed_preprocess(img)
        with torch.no_grad():
            encoding = encoder.encode(x.view(-1, 3, 32, 32))
        scores = [F.cosine_similarity(encoding, f) for f in features]
        scores = [s.cpu().detach().item() for s in scores]
        scores = [round(s, 3) for s in scores]
        order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)  # pandas sort_values
        return order[:QUERY_K]

    for _ in range(warmup):
        top = visual_similarity(image)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        top = visual_similarity(image)
        times.append(time.perf_counter() - t0)
    return {"latency": _percentiles(times), "top_ids": top}


def _query_index() -> tuple[Any, Any, Any, Any]:
    """``(image, model, vectors, index)``: the query image and the in-memory Index of measurement 1."""
    import numpy as np

    from lookalike.catalog import CatalogEntry
    from lookalike.index import ExactIndex
    from lookalike.search import Index

    image, database = _query_inputs()
    model = _seed_model()
    # As an index built with the defaults records it: bf16 on CPUs with native bfloat16, else fp32.
    model.set_precision("auto")
    vectors = ExactIndex(QUERY_DIM)
    vectors.add(database, np.arange(len(database)))
    root = Path("/nonexistent-bench-root")
    entries = [CatalogEntry(i, f"c{i % 10}/{i:05d}.jpg", 0, 0, "", f"c{i % 10}") for i in range(len(database))]
    return image, model, vectors, Index(model, vectors, entries, root, {"format": "benchmark"})


def one_query_lookalike(repeats: int, warmup: int) -> dict[str, Any]:
    image, model, vectors, index = _query_index()

    for _ in range(warmup):
        hits = index.search(image, k=QUERY_K)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        hits = index.search(image, k=QUERY_K)
        times.append(time.perf_counter() - t0)

    # Where the time goes (informational): the two halves Index.search is made of.
    embed_t, search_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        q = model.embed([image])
        t1 = time.perf_counter()
        vectors.search(q, QUERY_K)
        t2 = time.perf_counter()
        embed_t.append(t1 - t0)
        search_t.append(t2 - t1)
    return {
        "latency": _percentiles(times),
        "precision": model.precision,
        "top_ids": [h.id for h in hits],
        "parts": {
            "model.embed": _percentiles(embed_t),
            "ExactIndex.search": _percentiles(search_t),
        },
    }


def _busy_loop(go: Any, stop: Any, parent: int, deadline: float) -> None:
    """A background-load process: spins a pure-Python loop (one core) while ``go`` is set, sleeps while
    it is not; exits on ``stop``, when ``parent`` is gone, or at ``deadline`` (``time.monotonic``)."""
    while not stop.is_set() and os.getppid() == parent and time.monotonic() < deadline:
        if not go.wait(0.5):
            continue
        until = time.perf_counter() + 0.005
        x = 0
        while time.perf_counter() < until:
            for _ in range(1000):
                x += 1


def _own_cpu_seconds() -> float:
    """CPU time of this process (all its threads) so far."""
    t = os.times()
    return t.user + t.system


def one_query_load(repeats: int, warmup: int, load: int) -> dict[str, Any]:
    """The single query of :func:`one_query_lookalike`, ``repeats`` times quiet and ``repeats`` times with
    ``load`` busy processes, in alternate blocks of :data:`LOAD_BLOCK` (which of the two comes first
    alternates too)."""
    import multiprocessing as mp

    image, model, vectors, index = _query_index()
    ctx = mp.get_context("spawn")  # the busy processes import nothing but this script's stdlib modules
    go, stop = ctx.Event(), ctx.Event()
    deadline = time.monotonic() + LOAD_MAX_SECONDS
    workers = [ctx.Process(target=_busy_loop, args=(go, stop, os.getpid(), deadline), daemon=True)
               for _ in range(load)]  # fmt: skip
    times: dict[str, list[float]] = {"quiet": [], "loaded": []}
    other = {"quiet": [0.0, 0.0], "loaded": [0.0, 0.0]}  # machine busy seconds not ours, wall seconds
    for w in workers:
        w.start()
    try:
        for _ in range(warmup):
            index.search(image, k=QUERY_K)
        blocks = -(-repeats // LOAD_BLOCK)
        for b in range(2 * blocks):
            state = ("quiet", "loaded")[(b + b // 2) % 2]  # q l l q q l l q ...: each first half the time
            if state == "loaded":
                go.set()
            else:
                go.clear()
            time.sleep(LOAD_SETTLE_S)
            n = min(LOAD_BLOCK, repeats - len(times[state]))
            busy0, own0, t0 = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
            for _ in range(n):
                q0 = time.perf_counter()
                hits = index.search(image, k=QUERY_K)
                times[state].append(time.perf_counter() - q0)
            wall, busy = time.perf_counter() - t0, _busy_cpu_seconds()
            if busy is not None and busy0 is not None:
                other[state][0] += busy - busy0 - (_own_cpu_seconds() - own0)
                other[state][1] += wall
    finally:
        stop.set()
        go.set()
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.terminate()
    return {
        "background_processes": load,
        "block": LOAD_BLOCK,
        "quiet": _percentiles(times["quiet"]),
        "loaded": _percentiles(times["loaded"]),
        # cores busy with other work while the blocks ran; the loaded figure includes the N busy processes
        "other_load_cores_by_block": {k: round(v[0] / v[1], 2) if v[1] else None for k, v in other.items()},
        "top_ids": [h.id for h in hits],
    }


def one_index_seed(folder: str) -> dict[str, Any]:
    import numpy as np
    import torch
    from PIL import Image

    model = _seed_model()
    encoder = model.network
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    out = Path(tempfile.mkdtemp(prefix="seed-features-", dir=os.environ.get("BENCH_TMP")))
    t0 = time.perf_counter()
    features = []
    for p in paths:
        with Image.open(p) as im:  # cv2.imread + cv2.cvtColor(BGR2RGB)
            rgb = im.convert("RGB")
        x = _seed_preprocess(rgb)
        with torch.no_grad():
            features.append(encoder.encode(x.view(-1, 3, 32, 32)))
    np.save(out / "features.npy", torch.cat(features).numpy())
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {"images": len(paths), "seconds": seconds, "img_per_s": len(paths) / seconds}


def one_index_lookalike(folder: str, batch_size: int, num_workers: int) -> dict[str, Any]:
    from lookalike.search import Index

    model = _seed_model()
    tmp = Path(tempfile.mkdtemp(prefix="lookalike-index-", dir=os.environ.get("BENCH_TMP")))
    try:
        t0 = time.perf_counter()
        index = Index.build(folder, model, tmp / "index", batch_size=batch_size, num_workers=num_workers)
        seconds = time.perf_counter() - t0
        n = len(index)
        embed_seconds = float(index.manifest["embed_seconds"])
        size = sum(f.stat().st_size for f in (tmp / "index").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "images": n,
        "seconds": seconds,
        "img_per_s": n / seconds,
        "embed_seconds": embed_seconds,  # decode + hash + encode (embed_files), from the manifest
        "index_bytes": size,
    }


def one_baseline() -> dict[str, Any]:
    """Import torch + lookalike and create the model: the floor under every other RSS figure."""
    _seed_model()
    return {}


ONE = {
    "baseline": one_baseline,
    "query-seed": one_query_seed,
    "query-lookalike": one_query_lookalike,
    "query-load": one_query_load,
    "index-seed": one_index_seed,
    "index-lookalike": one_index_lookalike,
}


def run_one(name: str, kwargs_json: str, out_path: str) -> None:
    """Child side: run one measurement, add its RSS, write the JSON result to ``out_path``."""
    import torch

    kwargs = json.loads(kwargs_json)
    result = ONE[name](**kwargs)
    result["rss_mib"] = _rss()
    result["torch_threads"] = torch.get_num_threads()
    Path(out_path).write_text(json.dumps(result))


# ============================================================================================ parent
def spawn(name: str, **kwargs: Any) -> dict[str, Any]:
    """Run one measurement in a fresh ``python speed.py --one NAME`` process and collect its result.

    ``os.wait4`` also gives the whole child tree's peak (the largest of the child and its waited-for
    descendants), recorded as ``rss_mib.tree``; ``RUSAGE_CHILDREN`` read here in the parent would be a
    running maximum over all earlier measurements too, so it is not used.

    ``other_load_cores``: CPU time the rest of the machine used while the measurement ran (machine-wide
    busy time from ``/proc/stat`` minus the child tree's own user + system time), per second of wall
    time. Anything well above 0 means the numbers were taken on a shared, busy machine.
    """
    fd, out = tempfile.mkstemp(prefix=f"speed-{name}-", suffix=".json")
    busy0, t0 = _busy_cpu_seconds(), time.perf_counter()
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--one-args", json.dumps(kwargs),
           "--one-out", out]  # fmt: skip
    try:
        proc = subprocess.Popen(cmd, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"measurement {name} {kwargs} failed with exit status {proc.returncode}")
        result = json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    result["rss_mib"]["tree"] = round(usage.ru_maxrss / 1024, 1)
    busy = _busy_cpu_seconds()
    if busy is not None and busy0 is not None:
        own = usage.ru_utime + usage.ru_stime
        result["other_load_cores"] = round(max(0.0, (busy - busy0 - own) / wall), 2)
    return result


def _busy_cpu_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine so far (Linux ``/proc/stat``), or None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is in user)
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import numpy
    import PIL
    import torch

    import lookalike

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "lookalike"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    flags = ""
    with contextlib.suppress(OSError, StopIteration):
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "avx512": "avx512f" in flags,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "numpy_version": numpy.__version__,
        "pillow_version": PIL.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "lookalike_version": lookalike.__version__,
        "git_commit": commit,
        "lookalike_uncommitted_changes": dirty,
        "loadavg_at_start": list(os.getloadavg()),
    }


def prepare_data(tarball: Path, cache: Path, limit: int | None) -> Path:
    """Extract the tarball once into ``cache/cifar10`` (reused afterwards); return the train folder.

    With ``limit``, a folder of hard links to the first ``limit / classes`` images of each class.
    """
    dest = cache / "cifar10"
    marker = dest / ".complete"
    stamp = f"{tarball.stat().st_size} {tarball.stat().st_mtime_ns}"
    if not (marker.is_file() and marker.read_text() == stamp):
        cache.mkdir(parents=True, exist_ok=True)
        print(f"extracting {tarball} into {dest} (once) ...", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=".cifar10-", dir=cache))
        with tarfile.open(tarball) as tf:
            try:
                tf.extractall(tmp, filter="data")
            except TypeError:  # Python without extraction filters
                tf.extractall(tmp)
        (tmp / ".complete").write_text(stamp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    train = dest / "train"
    if limit is None:
        return train
    subset = cache / f"cifar10-train-{limit}"
    sub_marker = subset / ".complete"
    if sub_marker.is_file() and sub_marker.read_text() == stamp:
        return subset
    shutil.rmtree(subset, ignore_errors=True)
    classes = sorted(d for d in train.iterdir() if d.is_dir())
    per = limit // len(classes)
    for c in classes:
        (subset / c.name).mkdir(parents=True)
        for f in sorted(c.iterdir())[:per]:
            try:
                os.link(f, subset / c.name / f.name)
            except OSError:
                shutil.copy2(f, subset / c.name / f.name)
    sub_marker.write_text(stamp)
    return subset


def _fmt_rss(r: dict[str, float]) -> str:
    s = f"{r['main']:.0f}"
    if r.get("workers"):
        s += f" (+{r['workers']:.0f} per worker)"
    return s


def print_tables(results: dict[str, Any]) -> None:
    rows_q: list[list[str]] = []
    q = results.get("query")
    if q:
        for way in ("seed", "lookalike"):
            r = q[way]
            lat = r["latency"]
            rows_q.append([
                way, r["what"], f"{lat['median_ms']:.2f}", f"{lat['p95_ms']:.2f}", str(lat["runs"]),
                f"{q['speedup_median']:.0f}x" if way == "lookalike" else "1x", _fmt_rss(r["rss_mib"]),
                f"{r.get('other_load_cores', float('nan')):.2f}",
            ])  # fmt: skip
    rows_i: list[list[str]] = []
    ix = results.get("indexing")
    if ix and ix.get("seed"):
        s = ix["seed"]
        rows_i.append(["seed", "1 image per forward, no hash/catalog", f"{s['images']:,}", f"{s['seconds']:.1f}",
                       f"{s['img_per_s']:,.0f}", "1.0x", _fmt_rss(s["rss_mib"]),
                       f"{s.get('other_load_cores', float('nan')):.2f}"])  # fmt: skip
        for r in ix["lookalike"]:
            rows_i.append([
                "lookalike", f"Index.build workers={r['num_workers']} batch={r['batch_size']}",
                f"{r['images']:,}", f"{r['seconds']:.1f}", f"{r['img_per_s']:,.0f}",
                f"{r['img_per_s'] / s['img_per_s']:.1f}x", _fmt_rss(r["rss_mib"]),
                f"{r.get('other_load_cores', float('nan')):.2f}",
            ])  # fmt: skip
    rows_l: list[list[str]] = []
    ld = results.get("query_under_load")
    if ld:
        for state in ("quiet", "loaded"):
            lat = ld[state]
            busy = f", {ld['background_processes']} busy processes" if state == "loaded" else ""
            other = ld["other_load_cores_by_block"][state]
            rows_l.append([state, f"Index.search(image, k=10){busy}", f"{lat['median_ms']:.2f}",
                           f"{lat['p95_ms']:.2f}", str(lat["runs"]),
                           f"{other:.2f}" if other is not None else "?"])  # fmt: skip
        med_ok = ld["median_ratio"] <= GOAL_LOAD_MEDIAN_RATIO
        p95_ok = ld["p95_ratio"] <= GOAL_LOAD_P95_RATIO
        rows_l.append(["loaded / quiet", "goal: median <= 2x, p95 <= 5x",
                       f"{ld['median_ratio']:.2f}x {'PASS' if med_ok else 'FAIL'}",
                       f"{ld['p95_ratio']:.2f}x {'PASS' if p95_ok else 'FAIL'}", "", ""])  # fmt: skip
    hl = ["", "what is timed", "median ms", "p95 ms", "runs", "other load"]
    hq = ["way", "what is timed", "median ms", "p95 ms", "runs", "speed-up", "peak RSS MiB", "other load"]
    hi = ["way", "setting", "images", "seconds", "img/s", "vs seed", "peak RSS MiB", "other load"]
    try:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=max(Console().width, 150))
        for title, head, rows in (
            (f"One query, {QUERY_DB_SIZE:,} x {QUERY_DIM:,} database, from a decoded 32x32 image", hq, rows_q),
            ("Indexing CIFAR-10 train JPEGs (cifar-seed model)", hi, rows_i),
            ("One query, quiet and under background load (blocks interleaved in one run)", hl, rows_l),
        ):
            if not rows:
                continue
            t = Table(title=title)
            for i, h in enumerate(head):
                t.add_column(h, justify="left" if i < 2 else "right")
            for row in rows:
                t.add_row(*row)
            console.print(t)
    except ImportError:
        for head, rows in ((hq, rows_q), (hi, rows_i), (hl, rows_l)):
            if rows:
                print(" | ".join(head))
                for row in rows:
                    print(" | ".join(row))
                print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="CIFAR-10 JPEG tarball (default: ../shared/data/cifar10-jpg.tar.gz from the repo root)",
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="10,000 images and fewer query repeats")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the tarball is extracted once")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers to try")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512], help="batch sizes to try")
    ap.add_argument("--background-load", type=int, default=0, metavar="N",
                    help="also time the single query quiet and with N busy processes (one core each), "
                         "interleaved in one run (goal: median <= 2x, p95 <= 5x the quiet ones)")  # fmt: skip
    ap.add_argument("--skip-query", action="store_true", help="leave out the query measurements")
    ap.add_argument("--skip-index", action="store_true", help="leave out the indexing measurements")
    ap.add_argument("--one", choices=sorted(ONE), help=argparse.SUPPRESS)
    ap.add_argument("--one-args", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--one-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        run_one(args.one, args.one_args, args.one_out)
        return 0

    data = args.data if args.data.is_absolute() else (REPO / args.data)
    seed_reps, look_reps = (10, 100) if args.quick else (30, 300)
    limit = 10_000 if args.quick else None
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "machine": machine_info()}
    m = results["machine"]
    print(f"{m['cpu_model']}, {m['cpu_count']} CPUs, torch {m['torch_version']} ({m['torch_threads']} threads), "
          f"load average {m['loadavg_at_start'][0]:.2f}", flush=True)  # fmt: skip

    base = spawn("baseline")
    results["baseline_rss_mib"] = base["rss_mib"]

    if not args.skip_query:
        print(f"query: seed way x{seed_reps} ...", flush=True)
        seed = spawn("query-seed", repeats=seed_reps, warmup=2)
        print(f"query: lookalike way x{look_reps} ...", flush=True)
        look = spawn("query-lookalike", repeats=look_reps, warmup=20)
        seed["what"] = "ToTensor+Normalize, encode, 10,000 F.cosine_similarity, round, sorted()"
        look["what"] = f"Index.search(image, k=10), {look['precision']} encoder: model.embed + ExactIndex.search + hits"
        speedup = seed["latency"]["median_ms"] / look["latency"]["median_ms"]
        results["query"] = {
            "database": [QUERY_DB_SIZE, QUERY_DIM],
            "k": QUERY_K,
            "seed": seed,
            "lookalike": look,
            "speedup_median": speedup,
            "speedup_p95": seed["latency"]["p95_ms"] / look["latency"]["p95_ms"],
            "top10_overlap": len(set(seed["top_ids"]) & set(look["top_ids"])),
            "note": "the seed way rounds scores to 3 decimals before sorting, so near-ties can reorder",
        }

    if args.background_load > 0:
        n = args.background_load
        print(f"query: lookalike way x{look_reps} quiet and x{look_reps} with {n} busy process"
              f"{'es' if n > 1 else ''}, interleaved ...", flush=True)  # fmt: skip
        ld = spawn("query-load", repeats=look_reps, warmup=20, load=n)
        ld["median_ratio"] = ld["loaded"]["median_ms"] / ld["quiet"]["median_ms"]
        ld["p95_ratio"] = ld["loaded"]["p95_ms"] / ld["quiet"]["p95_ms"]
        ld["p95_vs_quiet_median"] = ld["loaded"]["p95_ms"] / ld["quiet"]["median_ms"]
        results["query_under_load"] = ld

    if not args.skip_index:
        if not data.is_file():
            print(f"indexing benchmark skipped: {data} not found (it holds the CIFAR-10 JPEGs; see "
                  f"../shared/data/README.md). The query benchmark needs no data.", flush=True)  # fmt: skip
            results["indexing"] = {"skipped": f"{data} not found"}
        else:
            folder = prepare_data(data, args.cache_dir, limit)
            os.environ.setdefault("BENCH_TMP", str(args.cache_dir))
            ix: dict[str, Any] = {"folder": str(folder), "lookalike": []}
            print(f"indexing: seed way over {folder} ...", flush=True)
            ix["seed"] = spawn("index-seed", folder=str(folder))
            for w in args.workers:
                for b in args.batch_sizes:
                    print(f"indexing: lookalike Index.build num_workers={w} batch_size={b} ...", flush=True)
                    r = spawn("index-lookalike", folder=str(folder), batch_size=b, num_workers=w)
                    r.update(num_workers=w, batch_size=b, speedup_vs_seed=r["img_per_s"] / ix["seed"]["img_per_s"])
                    ix["lookalike"].append(r)
            best = max(ix["lookalike"], key=lambda r: r["img_per_s"])
            default = next((r for r in ix["lookalike"] if (r["num_workers"], r["batch_size"]) == (1, 256)), None)
            ix["best"] = {k: best[k] for k in ("num_workers", "batch_size", "img_per_s", "speedup_vs_seed")}
            if default:
                ix["default_settings"] = {k: default[k] for k in ("img_per_s", "speedup_vs_seed")}
            results["indexing"] = ix

    goals: dict[str, Any] = {}
    if "query" in results:
        sp = results["query"]["speedup_median"]
        goals["query_speedup_>=50x"] = {"value": round(sp, 1), "met": sp >= GOAL_QUERY_SPEEDUP}
    ld = results.get("query_under_load")
    if ld:
        goals[f"loaded_median_<={GOAL_LOAD_MEDIAN_RATIO:g}x_quiet"] = {
            "value": round(ld["median_ratio"], 2),
            "met": ld["median_ratio"] <= GOAL_LOAD_MEDIAN_RATIO,
        }
        goals[f"loaded_p95_<={GOAL_LOAD_P95_RATIO:g}x_quiet"] = {
            "value": round(ld["p95_ratio"], 2), "met": ld["p95_ratio"] <= GOAL_LOAD_P95_RATIO}  # fmt: skip
    ix = results.get("indexing", {})
    if ix.get("best"):
        goals["index_rate_>=3000_img_per_s"] = {"value": round(ix["best"]["img_per_s"]),
                                                "met": ix["best"]["img_per_s"] >= GOAL_INDEX_RATE}  # fmt: skip
        goals["index_speedup_>=2.5x"] = {"value": round(ix["best"]["speedup_vs_seed"], 2),
                                         "met": ix["best"]["speedup_vs_seed"] >= GOAL_INDEX_SPEEDUP}  # fmt: skip
    results["goals"] = goals
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())

    print_tables(results)
    print(f"baseline (import torch + lookalike + model): peak RSS {results['baseline_rss_mib']['main']:.0f} MiB")
    print(
        "other load: cores kept busy by other processes during the measurement (0 = quiet machine; "
        "under load it includes the busy processes)"
    )
    for name, g in goals.items():
        print(f"goal {name}: {g['value']} -> {'met' if g['met'] else 'NOT met'}")
    if args.json:
        out = args.json if args.json.is_absolute() else Path.cwd() / args.json
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
