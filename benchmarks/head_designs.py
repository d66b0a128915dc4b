#!/usr/bin/env python
"""Designs of a learned model on top of a frozen ImageNet backbone, compared on cached features (issue 14 §1).

    python benchmarks/head_designs.py cache --sizes 128                     # Lite0 features of every dev set
    python benchmarks/head_designs.py cache --sizes 160,224 --views 0 --sets clothing,scene15
    python benchmarks/head_designs.py designs --json benchmarks/results/head_designs.json
    python benchmarks/head_designs.py designs --sets clothing --designs adapted:blend=0,adapted,views+knn+rec
    python benchmarks/head_designs.py sizes --sizes 128,160,224 --json benchmarks/results/head_sizes.json

A quick bench for choosing a design, not the product's benchmark (that is ``real_folders.py``, which runs
``lookalike compare`` end to end): the backbone runs once per image and view (``cache``), then every design
is fitted and scored in seconds on the same features.

**cache**: for each prepared set of ``real_sets.py`` (development sets unless ``--sets``), efficientnet-lite0
at each ``--sizes`` (bf16 autocast, channels-last) gives the final feature map and its average pool of the
original image and of ``--views`` augmented views (``lookalike.augment.random_view``: crop 30-100 %, flip,
colour jitter, grey; seeded), saved as ``CACHE/<set>@<size>[v<views>].npz``.

**designs**: ``lookalike compare``'s split (``split_queries``: 20 % of each class as queries, at most
1,000, seed 0); every head is fitted on the database images only, without labels; mAP@100, precision@1,
precision@10 and 20-NN accuracy of the queries against the database, cosine:

- ``frozen``: the pooled features; ``frozen-centred``: unit, minus the database mean, unit again;
- ``adapted[:m=METHOD][:k=K][:ks=SHARE][:t=T][:e=E][:blend=W][:fd=N]``: ``lookalike.adaptation.adapt`` as
  the library runs it (``m=views``, the default, on the cached views; ``m=neighbours``: the neighbour-contrastive MLP),
  ``blend`` its safeguard (0.5 by default) with ``fd`` frozen directions (128);
- ``views``, ``views+knn``, ``views+knn+rec``: an MLP encoder trained with NT-Xent between two of the
  cached versions of an image (original and views), ``+knn``: half the positives are a frozen-space
  neighbour instead, ``+rec``: plus a decoder reconstructing the frozen features (an autoencoder over the
  backbone's features with an invariance loss); each also blended 50/50 with the full frozen features.
  ``views+knn+rec`` is the prototype of the library's ``views`` method (which blends with 128 frozen
  directions instead of all of them).

**sizes**: frozen and ``adapted:m=neighbours:e=30`` per input size, from ``cache --views 0`` files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_sets  # noqa: E402

from lookalike.adaptation import _nt_xent, adapt, knn_graph  # noqa: E402  (the library's NT-Xent)
from lookalike.comparison import split_queries  # noqa: E402
from lookalike.metrics import evaluate_vectors  # noqa: E402
from lookalike.models import Model  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "lookalike-bench" / "head-features"
DEFAULT_DESIGNS = "adapted:m=neighbours:blend=0,adapted:m=neighbours,views,views+knn,views+knn+rec,adapted"


def l2(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def cache_path(cache: Path, name: str, size: int, views: int) -> Path:
    return cache / f"{name}@{size}{'' if views == 2 else f'v{views}'}.npz"


# ------------------------------------------------------------------------------------------ cache
def cache_features(names: list[str], size: int, views: int, cache: Path) -> None:
    from lookalike.augment import Augmentation, random_view
    from lookalike.data import find_images

    model = Model.pretrained("efficientnet-lite0", image_size=size)
    net = model.network.backbone.eval()
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
    aug, gen = Augmentation(crop_scale=(0.3, 1.0)), torch.Generator().manual_seed(0)
    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        root, out = real_sets.set_root(name), cache_path(cache, name, size, views)
        if root is None:
            print(f"{name}: not prepared (python benchmarks/real_sets.py prepare {name})")
            continue
        if out.exists():
            continue
        t0 = time.perf_counter()
        paths = find_images(root)
        labels = [p.relative_to(root).parts[0] for p in paths]
        pooled, maps = None, None
        for s in range(0, len(paths), 64):
            pix = torch.from_numpy(np.stack([model.prepare(p) for p in paths[s : s + 64]])).float() / 255
            for v in range(views + 1):
                x = pix if v == 0 else random_view(pix, aug, gen)
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    m = net.extract_features(((x - mean) / std).contiguous(memory_format=torch.channels_last)).float()
                if maps is None:
                    maps = np.zeros((views + 1, len(paths), *m.shape[1:]), np.float16)
                    pooled = np.zeros((views + 1, len(paths), m.shape[1]), np.float16)
                maps[v, s : s + len(pix)] = m.numpy()
                pooled[v, s : s + len(pix)] = m.mean(dim=(2, 3)).numpy()
        np.savez(out, pooled=pooled, maps=maps, labels=np.array(labels), paths=np.array([str(p) for p in paths]))
        print(f"{name}@{size}: {len(paths):,} images x {views + 1}, {time.perf_counter() - t0:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------- designs
def score(x: np.ndarray, labels: np.ndarray, q: np.ndarray, db: np.ndarray) -> dict[str, float]:
    r = evaluate_vectors(x[db], labels[db], x[q], labels[q], ks=(1, 10), map_at=100, knn_k=20)
    return {"map100": r.map_at_k, "p1": r.precision_at_k[1], "p10": r.precision_at_k[10], "knn": r.knn_accuracy}


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers)


def fit_views(versions: np.ndarray, graph: torch.Tensor, *, knn: bool, rec: bool, epochs: int = 30) -> nn.Module:
    """An MLP encoder over (versions, n, D) centred unit features: NT-Xent between two random versions of an
    image (``knn``: half the positives a frozen-space neighbour's original), ``rec``: + reconstruction."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    dims = [versions.shape[-1], 1024, 128]
    enc, dec = _mlp(dims), (_mlp(dims[::-1]) if rec else None)
    params = [*enc.parameters(), *(dec.parameters() if dec is not None else [])]
    x = torch.from_numpy(versions).float()
    n_versions, n, d = x.shape
    bs = min(256, n // 2)
    steps = max(1, n // bs)
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps, pct_start=0.1)
    enc.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(steps):
            idx = perm[s * bs : (s + 1) * bs]
            a = x[torch.randint(0, n_versions, (len(idx),), generator=gen), idx]
            b = x[torch.randint(0, n_versions, (len(idx),), generator=gen), idx]
            if knn:
                use = torch.rand(len(idx), generator=gen) < 0.5
                nb = graph[idx, torch.randint(0, graph.shape[1], (len(idx),), generator=gen)]
                b = torch.where(use[:, None], x[0, nb], b)
            za, zb = enc(F.dropout(a, 0.1)), enc(F.dropout(b, 0.1))
            loss = _nt_xent(za, zb, 0.2)
            if dec is not None:
                loss = loss + F.mse_loss(F.normalize(dec(za), dim=1), F.normalize(x[0, idx], dim=1)) * d
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return enc.eval()


def run_design(key: str, pooled: np.ndarray, db: np.ndarray, base: Model) -> tuple[np.ndarray, list[str]]:
    """The embedding of every image by design ``key`` (fitted on ``db`` rows), and which blends to add."""
    orig = pooled[0]
    if key.startswith("adapted"):
        opts = dict(kv.split("=") for kv in key.split(":")[1:])
        method = opts.get("m", "views")
        m = adapt(base, orig[db], views=pooled[1:, db] if method == "views" else None, method=method, seed=0,
                  neighbours=int(opts.get("k", 5)), temperature=float(opts["t"]) if "t" in opts else None,
                  neighbour_share=float(opts.get("ks", 0.5)),
                  epochs=int(opts["e"]) if "e" in opts else None, blend=float(opts.get("blend", 0.5)),
                  frozen_dims=int(opts.get("fd", 128)))  # fmt: skip
        with torch.no_grad():
            return m.network.head(torch.from_numpy(orig)).numpy(), []
    if key.startswith("views"):
        unit = l2(pooled)
        centred = l2(unit - unit[0, db].mean(0))
        graph = torch.from_numpy(knn_graph(centred[0, db], 5))
        enc = fit_views(centred[:, db], graph, knn="knn" in key, rec="rec" in key)
        with torch.no_grad():
            return enc(torch.from_numpy(centred[0])).numpy(), ["blend0.5"]
    raise SystemExit(f"error: unknown design {key!r}")


def designs(names: list[str], keys: list[str], cache: Path, size: int) -> dict[str, dict[str, dict[str, float]]]:
    base = Model.pretrained("efficientnet-lite0", image_size=size)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        path = cache_path(cache, name, size, 2)
        if not path.exists():
            print(f"{name}: no cached features ({path}); run `cache` first")
            continue
        d = np.load(path)
        pooled, labels = d["pooled"].astype(np.float32), d["labels"]
        q, db = split_queries(list(labels), 0.2, 1000, 0)
        rows = results[name] = {"frozen": score(pooled[0], labels, q, db)}
        unit = l2(pooled[0])
        rows["frozen-centred"] = score(l2(unit - unit[db].mean(0)), labels, q, db)
        for key in keys:
            t0 = time.perf_counter()
            x, blends = run_design(key, pooled, db, base)
            rows[key] = {**score(x, labels, q, db), "fit_s": round(time.perf_counter() - t0, 1)}
            for b in blends:
                w = float(b.removeprefix("blend"))
                mixed = np.concatenate([math.sqrt(w) * unit, math.sqrt(1 - w) * l2(x)], axis=1)
                rows[f"{key}|{b}"] = score(mixed, labels, q, db)
        print_table(name, rows)
    return results


def sizes(names: list[str], sides: list[int], cache: Path) -> dict[str, dict[str, dict[str, float]]]:
    base = Model.pretrained("efficientnet-lite0", image_size=128)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        rows: dict[str, dict[str, float]] = {}
        for side in sides:
            path = next((p for p in (cache_path(cache, name, side, 0), cache_path(cache, name, side, 2)) if p.exists()),
                        None)  # fmt: skip
            if path is None:
                continue
            d = np.load(path)
            pooled, labels = d["pooled"][:1].astype(np.float32), d["labels"]
            q, db = split_queries(list(labels), 0.2, 1000, 0)
            rows[f"frozen@{side}"] = score(pooled[0], labels, q, db)
            x, _ = run_design("adapted:m=neighbours:e=30", pooled, db, base)
            rows[f"adapted:e=30@{side}"] = score(x, labels, q, db)
        if rows:
            results[name] = rows
            print_table(name, rows)
    return results


def print_table(name: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{name}")
    print(f"  {'design':<26}{'mAP@100':>9}{'P@1':>8}{'P@10':>8}{'20-NN':>8}{'fit s':>8}")
    for key, r in rows.items():
        fit = f"{r['fit_s']:.1f}" if "fit_s" in r else ""
        print(f"  {key:<26}{r['map100']:>9.3f}{r['p1']:>8.3f}{r['p10']:>8.3f}{r['knn']:>8.3f}{fit:>8}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["cache", "designs", "sizes"])
    ap.add_argument("--sets", help="comma-separated set names (default: every prepared development set)")
    ap.add_argument("--sizes", default="128", help="input sides (cache, sizes); designs use the first")
    ap.add_argument("--views", type=int, default=2, help="augmented views per image (cache)")
    ap.add_argument("--designs", default=DEFAULT_DESIGNS, help=f"designs (default {DEFAULT_DESIGNS})")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"features (default {DEFAULT_CACHE})")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    names = args.sets.split(",") if args.sets else [s.name for s in real_sets.SETS if not s.held_out]
    sides = [int(s) for s in args.sizes.split(",")]
    if args.command == "cache":
        for side in sides:
            cache_features(names, side, args.views, args.cache_dir)
        return
    if args.command == "designs":
        out = designs(names, args.designs.split(","), args.cache_dir, sides[0])
    else:
        out = sizes(names, sides, args.cache_dir)
    if args.json:
        info = {"command": " ".join(sys.argv), "torch_threads": torch.get_num_threads(), "cpu": os.cpu_count()}
        args.json.write_text(json.dumps({"info": info, "sets": out}, indent=1))


if __name__ == "__main__":
    main()
