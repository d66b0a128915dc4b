#!/usr/bin/env python
"""Approximate search at scale (issue 8): build time, memory, single-query latency and recall@10 vs exact.

    OMP_NUM_THREADS=1 python benchmarks/ann_scale.py --sizes 100000 --json benchmarks/results/ann_scale_100k.json
    python benchmarks/ann_scale.py --sizes 1000000 --json benchmarks/results/ann_scale_1m.json

Datasets (all vectors L2-normalised float32, 128-d; ``--queries`` held-out queries never in the database):

* ``clustered``: seeded synthetic: 1,000 gaussian clusters in 128-d. Centres are ``N(0, 1/d)`` (unit norm
  on average); a point is its centre plus noise whose per-dimension scale decays as ``j^-0.75`` (a low
  intrinsic dimension, like real embeddings) under one random rotation, times a per-cluster spread in
  [0.5, 0.9]. At 100k the nearest neighbour of a query has cosine ~0.90 (10th ~0.85), random pairs ~0.
* ``cifar``: real embeddings: ``--real-vectors FILE.npy`` (n, d) float32; without it
  ``/tmp/exp/cifar_adapted_128.npy`` when present; else PCA-128 (fitted on the train split) of
  ``/tmp/exp/feats_efficientnet-lite0_128.npz`` (EfficientNet-Lite0 features of CIFAR-10's 50,000 train +
  10,000 test images); skipped with a message when none exists. ``--queries`` source vectors are held out
  as queries; the rest are repeated to the size, every copy with gaussian noise of per-dimension
  ``sigma = 0.25 * m / sqrt(d)`` (``m`` = median distance between a source unit vector and its nearest
  other source, measured on 2,000 of them) and re-normalised: a copy lies about a quarter of a typical
  nearest-neighbour distance from its source, so the copies are distinct but still each other's nearest.

Backends (lookalike's own classes; ids are row numbers):

* ``exact``: :class:`lookalike.index.ExactIndex`, the latency row (the ground truth is faiss
  ``IndexFlatIP``, computed once per dataset and size with every core, cached under ``--cache-dir``).
* ``hnsw``: :class:`~lookalike.index.ann.HNSWIndex` (defaults M=32, efConstruction=200), searched with each
  ``--ef`` value.
* ``ivfpq``: :class:`~lookalike.index.ann.IVFPQIndex` with its defaults (nlist 2*sqrt(n), 32 PQ bytes at
  128-d, sq8 re-ranking of 100 candidates), searched with each ``--nprobe`` value, and with
  ``refine="none", m=64`` (PQ only, 64 bytes) as the smallest option (``ivfpq-pq64``).

Each (dataset, size, backend) is built in a fresh child process of this script, so its RSS is clean: the
child loads the vectors, records RSS, builds (faiss may use every core while building: ``--build-threads``),
calls glibc's ``malloc_trim(0)`` (so freed training buffers the allocator kept do not count) and records RSS
again (growth = the index's resident size; peak = ``VmHWM`` above the start) and the serialized
faiss index size (``faiss.serialize_index``) and ``memory_bytes()``. Then with ``faiss.omp_set_num_threads(1)``
(and OpenBLAS's threads capped by ``OMP_NUM_THREADS=1`` when the parent is run with it) it answers the
queries one at a time through ``index.search(q[None], 10)``: p50/p99 latency over ``--queries`` queries
(the API's whole cost: normalisation, faiss, re-ranking, result assembly), and recall@10 = |top-10 ∩ exact
top-10| / 10 averaged over the queries (cosine). One query on one thread is the interactive case; batches
are faster per query. The table ends with the goals at 1M (p50 <= 5 ms at recall@10 >= 0.95; an IVF-PQ
option under 200 MB).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lookalike-bench" / "ann-scale"
REAL_DEFAULT = Path("/tmp/exp/cifar_adapted_128.npy")
REAL_FEATURES = Path("/tmp/exp/feats_efficientnet-lite0_128.npz")
DIM = 128
K = 10
GOAL_P50_MS, GOAL_RECALL, GOAL_IVF_MB = 5.0, 0.95, 200.0


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def clustered(n: int, dim: int = DIM, clusters: int = 1000, seed: int = 0) -> np.ndarray:
    """``n`` seeded unit vectors from ``clusters`` anisotropic gaussian clusters (see the module notes)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) / np.sqrt(dim)
    spread = rng.uniform(0.5, 0.9, clusters).astype(np.float32)
    scale = np.arange(1, dim + 1, dtype=np.float32) ** -0.75
    scale *= np.sqrt(1.0 / np.sum(scale**2))
    rot = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        c = rng.integers(0, clusters, m)
        noise = (rng.standard_normal((m, dim), dtype=np.float32) * scale) @ rot
        out[s : s + m] = _unit(centres[c] + noise * spread[c, None])
    return out


def real_sources(path: Path | None) -> tuple[np.ndarray, str] | None:
    """Unit source vectors of the ``cifar`` dataset and where they came from, or None when none exists."""
    if path is None and REAL_DEFAULT.exists():
        path = REAL_DEFAULT
    if path is not None:
        return _unit(np.load(path)), str(path)
    if not REAL_FEATURES.exists():
        return None
    data = np.load(REAL_FEATURES)
    train, test = data["train"].astype(np.float32), data["test"].astype(np.float32)
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train[::5] - mean, full_matrices=False)  # PCA on 10,000 train rows
    basis = vt[:DIM].T
    x = np.concatenate([train, test]) - mean
    return _unit(x @ basis), f"PCA-{DIM} of {REAL_FEATURES}"


def repeated(sources: np.ndarray, n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(database of ``n`` noisy copies, held-out queries, notes) from real source vectors."""
    import faiss

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(sources))
    queries, base = sources[perm[:n_queries]], sources[perm[n_queries:]]
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    sims, _ = flat.search(base[:2000], 2)
    nn = float(np.median(np.sqrt(np.maximum(2 - 2 * sims[:, 1], 0))))
    sigma = 0.25 * nn / np.sqrt(base.shape[1])
    out = np.empty((n, base.shape[1]), np.float32)
    for s in range(0, n, 65536):
        rows = np.arange(s, min(s + 65536, n)) % len(base)
        out[s : s + len(rows)] = _unit(
            base[rows] + sigma * rng.standard_normal((len(rows), base.shape[1]), dtype=np.float32)
        )
    return out, queries, {"sources": len(base), "median_nn_distance": round(nn, 4), "sigma": float(sigma)}


def prepare(dataset: str, n: int, n_queries: int, cache: Path, real: Path | None) -> Path | None:
    """Write ``base.npy``, ``queries.npy``, ``gt.npy`` (exact top-10) and ``info.json`` once; the folder."""
    import faiss

    folder = cache / (f"{dataset}-{n}-{n_queries}" + ("" if real is None else f"-{real.stem}"))
    if (folder / "info.json").exists():
        return folder
    info: dict[str, Any] = {"dataset": dataset, "n": n}
    if dataset == "clustered":
        x = clustered(n + n_queries)
        queries, base = x[:n_queries], x[n_queries:]
        info["source"] = "seeded synthetic: 1,000 gaussian clusters"
    else:
        got = real_sources(real)
        if got is None:
            print(f"cifar: skipped (no --real-vectors, {REAL_DEFAULT} nor {REAL_FEATURES})", flush=True)
            return None
        sources, info["source"] = got
        base, queries, notes = repeated(sources, n, n_queries)
        info.update(notes)
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    _, gt = flat.search(queries, K)
    info["ground_truth_s"] = round(time.perf_counter() - t, 2)
    np.save(folder / "base.npy", base)
    np.save(folder / "queries.npy", queries)
    np.save(folder / "gt.npy", gt)
    (folder / "info.json").write_text(json.dumps(info))
    return folder


def child(spec: dict) -> dict:
    """Build one backend over the prepared vectors and measure it (runs in a fresh process)."""
    import faiss

    from lookalike.index import ExactIndex, HNSWIndex, IVFPQIndex

    folder = Path(spec["folder"])
    base = np.load(folder / "base.npy")
    queries, gt = np.load(folder / "queries.npy"), np.load(folder / "gt.npy")
    if spec["build_threads"]:
        faiss.omp_set_num_threads(spec["build_threads"])
    rss0, hwm0 = status_mib("VmRSS"), status_mib("VmHWM")
    backend, dim = spec["backend"], base.shape[1]
    t = time.perf_counter()
    if backend == "exact":
        index = ExactIndex(dim)
    elif backend == "hnsw":
        index = HNSWIndex(dim)
    elif backend == "ivfpq":
        index = IVFPQIndex(dim)
    elif backend == "ivfpq-pq64":
        index = IVFPQIndex(dim, m=64, refine="none")
    else:
        raise SystemExit(f"unknown backend {backend}")
    index.add(base, np.arange(len(base), dtype=np.int64))
    build_s = time.perf_counter() - t
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss1, hwm1 = status_mib("VmRSS"), status_mib("VmHWM")
    row: dict[str, Any] = {
        "build_s": round(build_s, 2),
        "rss_growth_mb": round((rss1 - rss0) * 2**20 / 1e6, 1),
        "peak_growth_mb": round((max(hwm1, hwm0) - rss0) * 2**20 / 1e6, 1),
    }
    faiss_index = getattr(index, "_index", None)
    if faiss_index is not None:
        row["faiss_mb"] = round(faiss.serialize_index(faiss_index).size / 1e6, 1)
    if hasattr(index, "memory_bytes"):
        row["memory_bytes_mb"] = round(index.memory_bytes() / 1e6, 1)
    if backend == "ivfpq":
        row["params"] = {"nlist": index.nlist, "m": index.m, "refine": index.refine}
    del base
    faiss.omp_set_num_threads(1)
    settings: list[tuple[str, Any]] = [("", None)]
    if backend == "hnsw":
        settings = [("efSearch", ef) for ef in spec["ef"]]
    elif backend.startswith("ivfpq"):
        settings = [("nprobe", p) for p in spec["nprobe"]]
    results = []
    n_lat = len(queries) if backend != "exact" else min(len(queries), spec["exact_queries"])
    for name, value in settings:
        if name == "efSearch":
            index.ef_search = value
            index._index.hnsw.efSearch = value
        elif name == "nprobe":
            index.nprobe = value
            index._index.nprobe = value
        for q in queries[:20]:  # warm-up
            index.search(q[None], K)
        got = np.empty((len(queries), K), np.int64)
        lat = []
        for i, q in enumerate(queries):
            t = time.perf_counter()
            _, ids = index.search(q[None], K)
            if i < n_lat:
                lat.append(time.perf_counter() - t)
            got[i] = ids[0]
        rec = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(got, gt)]))
        results.append(
            {
                "setting": f"{name}={value}" if name else "",
                "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
                "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
                "recall_at_10": round(rec, 4),
                "latency_queries": n_lat,
            }
        )
    row["settings"] = results
    return row


def run_child(spec: dict) -> dict:
    """Run :func:`child` in a fresh interpreter and return its JSON line."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if proc.returncode:
        raise SystemExit(f"child failed ({spec['backend']}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_average() -> str:
    """``uptime``'s load averages."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def judge(rows: list[dict]) -> list[str]:
    """Sentences on the goals at 1M (for every dataset measured at 1M)."""
    lines = []
    for dataset in sorted({r["dataset"] for r in rows if r["n"] >= 1_000_000}):
        at = [r for r in rows if r["dataset"] == dataset and r["n"] >= 1_000_000]
        fast = [
            (r["backend"], s)
            for r in at
            if r["backend"] != "exact"
            for s in r["settings"]
            if s["p50_ms"] <= GOAL_P50_MS and s["recall_at_10"] >= GOAL_RECALL
        ]
        best = min(fast, key=lambda bs: bs[1]["p50_ms"], default=None)
        lines.append(
            f"{dataset} 1M: p50 <= {GOAL_P50_MS:g} ms at recall@10 >= {GOAL_RECALL}: "
            + (
                f"met ({best[0]} {best[1]['setting']}: {best[1]['p50_ms']} ms, {best[1]['recall_at_10']})"
                if best
                else "not met"
            )
        )
        small = [
            r
            for r in at
            if r["backend"].startswith("ivfpq") and max(r.get("memory_bytes_mb", 1e9), r["rss_growth_mb"]) < GOAL_IVF_MB
        ]
        text = ", ".join(
            f"{r['backend']} {r['memory_bytes_mb']} MB (RSS +{r['rss_growth_mb']} MB), recall@10 "
            f"{max(s['recall_at_10'] for s in r['settings'])}"
            for r in small
        )
        lines.append(f"{dataset} 1M: IVF-PQ under {GOAL_IVF_MB:g} MB: " + (f"met ({text})" if small else "not met"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="clustered,cifar")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--backends", default="exact,hnsw,ivfpq,ivfpq-pq64")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries (latency and recall)")
    parser.add_argument("--exact-queries", type=int, default=200, help="queries timed for the exact row")
    parser.add_argument("--ef", default="64,128", help="HNSW efSearch values")
    parser.add_argument("--nprobe", default="16,32,64", help="IVF-PQ nprobe values")
    parser.add_argument("--build-threads", type=int, default=0, help="faiss threads while building (0: default)")
    parser.add_argument("--real-vectors", type=Path, default=None, help="(n, d) float32 .npy of real embeddings")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    rows: list[dict] = []
    for dataset in args.datasets.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            folder = prepare(dataset, n, args.queries, args.cache_dir, args.real_vectors)
            if folder is None:
                continue
            info = json.loads((folder / "info.json").read_text())
            for backend in args.backends.split(","):
                spec = {
                    "folder": str(folder),
                    "backend": backend,
                    "ef": [int(v) for v in args.ef.split(",")],
                    "nprobe": [int(v) for v in args.nprobe.split(",")],
                    "build_threads": args.build_threads,
                    "exact_queries": args.exact_queries,
                }
                load = load_average()
                row = {"dataset": dataset, "n": n, "backend": backend, "load_before": load, **run_child(spec)}
                row["load_after"] = load_average()
                row["info"] = info
                rows.append(row)
                for s in row["settings"]:
                    print(
                        f"{dataset:9s} {n:>9,} {backend:10s} {s['setting']:12s} build {row['build_s']:7.1f} s  "
                        f"mem {row.get('memory_bytes_mb', float('nan')):7.1f} MB  "
                        f"faiss {row.get('faiss_mb', 0):7.1f} MB  "
                        f"rss +{row['rss_growth_mb']:7.1f} MB  p50 {s['p50_ms']:7.3f} ms  p99 {s['p99_ms']:7.3f} ms  "
                        f"recall@10 {s['recall_at_10']:.3f}  load {load}",
                        flush=True,
                    )
    print()
    print(
        "| dataset | vectors | backend | setting | build s | memory MB (estimate / faiss / RSS growth) "
        "| p50 ms | p99 ms | recall@10 |"
    )
    print("|---|---:|---|---|---:|---|---:|---:|---:|")
    for r in rows:
        for s in r["settings"]:
            mem = f"{r.get('memory_bytes_mb', '–')} / {r.get('faiss_mb', '–')} / {r['rss_growth_mb']}"
            print(
                f"| {r['dataset']} | {r['n']:,} | {r['backend']} | {s['setting']} | {r['build_s']} | {mem} | "
                f"{s['p50_ms']} | {s['p99_ms']} | {s['recall_at_10']:.3f} |"
            )
    verdicts = judge(rows)
    for line in verdicts:
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "rows": rows,
            "goals": verdicts,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
