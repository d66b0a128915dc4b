"""What reloading an index costs in resident memory, in one process (what `lookalike serve` does when the
index folder changes under it): load the index, then load it again N times, each new one swapped in for
the last as the server does (the old one dropped, `gc.freeze()`, `malloc_trim`), and print the process's
RSS and the Python objects' memory (tracemalloc) after each.

    python benchmarks/reload_memory.py INDEX_DIR                 # 5 reloads, a search on each new index
    python benchmarks/reload_memory.py INDEX_DIR --no-search     # without the first search
    python benchmarks/reload_memory.py INDEX_DIR --json out.json

INDEX_DIR: any index folder, e.g. the soak's (`$TMPDIR/lookalike-bench/soak-cifar10/index`, made by
`benchmarks/soak.py`). Run it with the other processes of the machine quiet; it is single-threaded.
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc
from pathlib import Path

from lookalike._memory import map_large_allocations, release_free_memory
from lookalike.search import Index


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index", type=Path, help="an index folder")
    ap.add_argument("--reloads", type=int, default=5, help="how many times to load it again")
    ap.add_argument("--no-search", action="store_true", help="no search on each new index")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()

    map_large_allocations()  # as the server does at start
    index = Index.load(args.index)
    if not args.no_search:
        index.search(next(iter(index.entries)), k=5)
    gc.collect()
    gc.freeze()
    rows = [{"step": "loaded", "rss_mib": round(rss_mib(), 1), "python_mib": None}]
    tracemalloc.start()
    for i in range(args.reloads):
        new = Index.load(args.index, model=index.model)
        if not args.no_search:
            new.search(next(iter(new.entries)), k=5)
        index = new  # the swap: the old index is dropped here
        del new
        gc.freeze()
        release_free_memory()
        current, _ = tracemalloc.get_traced_memory()
        rows.append({"step": f"reload {i + 1}", "rss_mib": round(rss_mib(), 1),
                     "python_mib": round(current / 2**20, 1)})  # fmt: skip
    print(f"{len(index):,} images, {'with' if not args.no_search else 'without'} a search on each new index")
    print(f"{'step':<10}{'RSS MiB':>10}{'+MiB':>8}{'Python MiB (tracemalloc)':>27}")
    prev = None
    for r in rows:
        step = "" if prev is None else f"{r['rss_mib'] - prev:+.0f}"
        py = "-" if r["python_mib"] is None else f"{r['python_mib']:.1f}"
        print(f"{r['step']:<10}{r['rss_mib']:>10.1f}{step:>8}{py:>27}")
        prev = r["rss_mib"]
    if args.json:
        args.json.write_text(json.dumps({"index": str(args.index), "images": len(index), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
