#!/usr/bin/env python
"""Peak memory of indexing as the folder grows (issue 8, memory-bounded indexing).

    OMP_NUM_THREADS=1 python benchmarks/index_memory.py --sizes 5000,10000 --json benchmarks/results/index_memory.json
    OMP_NUM_THREADS=1 python benchmarks/index_memory.py --sizes 10000,100000

For each size N: N small JPEGs (32x32, seeded noise over a gradient, 1,000 per sub-folder) are generated
once into ``--cache-dir`` (reused when present), then a fresh child process of this script runs what
``lookalike index FOLDER -o OUT`` runs (:func:`lookalike.search.update_index`: scan, decode + hash in a
DataLoader worker, encode, commit a shard of vectors with its catalog rows every ``--shard-size`` images)
with a cheap extractor (raw ``pixels``, 3,072-d at 32 px), and reports its peak RSS: ``VmHWM`` of
``/proc/self/status`` for the main process, and ``RUSAGE_CHILDREN``'s peak for the decoding worker (the
largest single worker; it is forked, so it shares most pages with the main process). A second child re-runs
the same command on the finished index (nothing changed: scan, compare size + mtime, rewrite the manifest).

The table gives images, seconds, img/s, peak RSS of the main process and of the worker (MiB), the
baseline (RSS after importing torch + lookalike and creating the model, before indexing) and the growth
above it per 10,000 images. The 1M extrapolation is the largest measured peak plus the slope between the
two largest sizes (or, with one size, the growth above the baseline per image) times the missing images.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lookalike-bench" / "index-memory"
GOAL_MIB_AT_1M = 2048


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def make_images(folder: Path, n: int) -> Path:
    """``n`` small JPEGs in ``folder`` (generated once; a marker file says they are complete)."""
    import numpy as np
    from PIL import Image

    marker = folder / ".complete"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(n)
    yy, xx = np.mgrid[0:32, 0:32]
    t0 = time.perf_counter()
    for i in range(n):
        sub = folder / f"part{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        base = (xx * rng.uniform(0, 8) + yy * rng.uniform(0, 8))[..., None] + rng.uniform(0, 255, 3)
        arr = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(sub / f"img{i:07d}.jpg", quality=90)
    marker.write_text(str(n))
    print(f"generated {n:,} images in {folder} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return folder


def child(args: argparse.Namespace) -> None:
    """One measurement, in this fresh process; prints one JSON line."""
    sys.path.insert(0, str(REPO))
    from lookalike import Model
    from lookalike.search import update_index

    model = Model.pretrained(args.extractor, image_size=args.image_size)
    baseline = status_mib("VmRSS")
    t0 = time.perf_counter()
    summary = update_index(
        args.folder, model, args.out, batch_size=args.batch_size, num_workers=args.workers,
        shard_size=args.shard_size,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "images": summary.count, "embedded": summary.embedded, "unchanged": summary.unchanged,
        "seconds": round(seconds, 3), "baseline_mib": round(baseline, 1), "peak_mib": round(status_mib("VmHWM"), 1),
        "worker_peak_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "shards": len(list(Path(args.out).glob("vectors-*.npy"))),
    }))  # fmt: skip


def measure(args: argparse.Namespace, folder: Path, out: Path, mode: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", "--folder", str(folder), "--out", str(out), "--extractor", args.extractor,
           "--image-size", str(args.image_size), "--workers", str(args.workers), "--batch-size", str(args.batch_size),
           "--shard-size", str(args.shard_size)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["mode"] = mode
    return row


def machine_info() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "lookalike"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())  # fmt: skip
    except OSError:
        commit, dirty = None, None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "git_commit": commit,
        "lookalike_uncommitted_changes": dirty,
        "loadavg_at_start": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5000,10000", help="comma-separated image counts (each above one shard)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="generated images are kept here")
    parser.add_argument("--extractor", default="pixels")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args)
        return
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    for n in sizes:
        folder = make_images(args.cache_dir / f"images-{n}", n)
        with tempfile.TemporaryDirectory(prefix="lookalike-index-memory-") as tmp:
            out = Path(tmp) / "index"
            rows.append(measure(args, folder, out, "build"))
            rows.append(measure(args, folder, out, "re-run"))
    builds = [r for r in rows if r["mode"] == "build"]
    for r in rows:
        r["img_per_s"] = round(r["images"] / r["seconds"], 1) if r["seconds"] else None
        r["growth_mib_per_10k"] = round((r["peak_mib"] - r["baseline_mib"]) / r["images"] * 10_000, 2)
    if len(builds) >= 2:
        a, b = builds[-2], builds[-1]
        slope = (b["peak_mib"] - a["peak_mib"]) / (b["images"] - a["images"])
        how = f"slope between {a['images']:,} and {b['images']:,} images"
    else:
        b = builds[-1]
        slope = (b["peak_mib"] - b["baseline_mib"]) / b["images"]
        how = "growth above the baseline per image (an upper bound)"
    at_1m = b["peak_mib"] + slope * (1_000_000 - b["images"])
    print(f"\nindexing with {args.extractor}@{args.image_size}, {args.workers} worker(s), batch {args.batch_size}, "
          f"shards of {args.shard_size}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}\n")  # fmt: skip
    print("| run | images | seconds | img/s | peak RSS MiB (main) | worker MiB | baseline MiB | growth MiB / 10k |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['images']:,} | {r['seconds']:.1f} | {r['img_per_s']:,.0f} | {r['peak_mib']:,.0f} | "
              f"{r['worker_peak_mib']:,.0f} | {r['baseline_mib']:,.0f} | {r['growth_mib_per_10k']:.1f} |")  # fmt: skip
    verdict = "meets" if at_1m <= GOAL_MIB_AT_1M else "misses"
    print(f"\nextrapolated peak RSS at 1,000,000 images: {at_1m:,.0f} MiB ({how}: {slope * 10_000:.1f} MiB per 10k); "
          f"{verdict} the {GOAL_MIB_AT_1M:,} MiB goal")  # fmt: skip
    if args.json:
        payload = {
            "benchmark": "index_memory",
            "settings": {k: v for k, v in vars(args).items() if k not in ("one", "folder", "out", "json")},
            "rows": rows,
            "extrapolated_peak_mib_at_1m": round(at_1m, 1),
            "extrapolation": how,
            "goal_mib_at_1m": GOAL_MIB_AT_1M,
            "machine": machine_info(),
        }
        payload["settings"]["cache_dir"] = str(args.cache_dir)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
