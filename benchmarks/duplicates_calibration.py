#!/usr/bin/env python
"""Calibrate the default threshold of ``lookalike duplicates`` per extractor (issue 8 part 4).

    OMP_NUM_THREADS=1 python benchmarks/duplicates_calibration.py --originals 1000 --distractors 5000 \\
        --ae-epochs 20 --json benchmarks/results/duplicates_calibration.json
    python benchmarks/duplicates_calibration.py --model models/cifar-default --extractors autoencoder

**Data**: CIFAR-10 test images (quality_cifar10.py's ``build_npz``: the tarball ``--data``, decoded once into
``--cache-dir``/cifar10-uint8.npz; the npz alone is enough). A seeded permutation gives ``--originals``
images and ``--distractors`` other, distinct images. CIFAR-10 has a few near-identical images of its own;
they count as false pairs here.

**Copies**: every original gets one copy per transform, made with Pillow from its 32 px pixels (seeded):

* ``resize``: half of them shrunk to 50-80 % of the side, half enlarged to 125-200 % (bicubic); the
  extractor's preprocessing resizes the copy to its input size, as it would any file;
* ``jpeg``: re-compressed as JPEG at quality 30-50;
* ``crop``: 5-10 % of each side cut off (split at random between the two edges), not resized back;
* ``flip``: mirrored left-right;
* ``brightness``: ``ImageEnhance.Brightness`` by a factor 0.8-0.9 or 1.1-1.2;
* ``rotate90``: turned by 90° one way or the other.

**Extractors** (``--extractors``): ``autoencoder`` (the default preset, trained here with
``lookalike.training.train(distractors, None, epochs=--ae-epochs, val_fraction=0, seed=--seed)`` on the
distractors only, so neither an original nor a copy is seen in training; or ``--model DIR``),
``efficientnet-lite0`` (``Model.pretrained("efficientnet-lite0", image_size=--lite0-size)``, skipped when
its weights are not installed), ``efficientnet-lite0+adapted`` (lookalike's default: the same backbone with
a ``views`` head learned on the distractors and two augmented views of each) and ``pixels``. Every model
embeds with ``set_precision(--precision)`` (``auto``, as ``Index.build`` does) through ``Model.embed``;
similarities are cosines of the L2-normalised embeddings, as in an index.

**Measures**, per extractor and transform:

* **top-1**: the share of copies whose most similar image among the originals + distractors is their
  original (the copy-retrieval goal: >= 95 % for resized, re-compressed and flipped copies);
* **recall(t)**: the share of copies whose similarity to their original is >= t (the copy-original pair
  would be an edge of ``lookalike duplicates --threshold t``);
* **precision(t)**: of all pairs >= t in the collection originals + distractors + that transform's copies,
  the share that are copy-original pairs. Pooled rows (``core`` = resize + jpeg + flip, ``all``) use the
  collection with all their copies, where two copies of the same original are a true pair too.
  Precision depends on how many duplicates a collection holds (here 1 original in 6 has copies); recall
  and top-1 do not.

Pair counts come from histograms of every pair's similarity (bins of 0.001, computed in blocks of rows),
so no N×N matrix is kept. **The default threshold** per extractor is the highest grid threshold (step
``--step``, 0.005) at which ``core`` recall is at least ``--recall-target`` (0.9): the strictest threshold
that still finds 90 % of ordinary copies. When that threshold's ``core`` precision is below
``--min-precision`` (0.5), the extractor cannot tell those copies from distinct images at that recall (raw
pixels and flips), and the threshold with the best F1 on ``core`` is taken instead; the JSON says which rule
applied. Best F1 is printed beside it in any case. Finally
``lookalike.duplicates.group_rows`` groups originals + distractors + all copies at that threshold (single
and star linkage) to show how much single linkage chains (a group mixing two originals' families, or a
distractor).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRANSFORMS = ("resize", "jpeg", "crop", "flip", "brightness", "rotate90")
CORE = ("resize", "jpeg", "flip")  # the copies the default threshold must find
BINS = 2000  # similarity histogram bins over [-1, 1)
EDGE_SLACK = 1e-6  # as lookalike.duplicates.EDGE_SLACK
EXTRACTORS = ("autoencoder", "efficientnet-lite0", "efficientnet-lite0+adapted", "pixels")


def _load_quality() -> Any:
    spec = importlib.util.spec_from_file_location(
        "lookalike_bench_quality", Path(__file__).with_name("quality_cifar10.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ============================================================================================ data
def load_images(args: argparse.Namespace) -> np.ndarray:
    """CIFAR-10 test images as uint8 ``(10000, 32, 32, 3)``."""
    npz = args.cache_dir / "cifar10-uint8.npz"
    if Path(args.data).is_file():
        npz = _load_quality().build_npz(Path(args.data), args.cache_dir)
    elif not npz.is_file():
        raise SystemExit(f"neither {args.data} nor {npz} exists; nothing to calibrate on")
    with np.load(npz, allow_pickle=False) as z:
        return np.ascontiguousarray(z["test_images"].transpose(0, 2, 3, 1))


def make_copy(img: np.ndarray, transform: str, rng: np.random.Generator) -> np.ndarray:
    """One copy of an ``(H, W, 3)`` uint8 image (see the module notes)."""
    from PIL import Image, ImageEnhance

    pil = Image.fromarray(img)
    h, w = img.shape[:2]
    if transform == "resize":
        scale = rng.uniform(0.5, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 2.0)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(pil.resize(size, Image.Resampling.BICUBIC))
    if transform == "jpeg":
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(rng.integers(30, 51)))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if transform == "crop":
        cut_w, cut_h = (max(1, round(s * rng.uniform(0.05, 0.10))) for s in (w, h))
        left, top = int(rng.integers(0, cut_w + 1)), int(rng.integers(0, cut_h + 1))
        return img[top : h - (cut_h - top), left : w - (cut_w - left)].copy()
    if transform == "flip":
        return img[:, ::-1].copy()
    if transform == "brightness":
        factor = 1 + (1 if rng.random() < 0.5 else -1) * rng.uniform(0.1, 0.2)
        return np.asarray(ImageEnhance.Brightness(pil).enhance(factor))
    if transform == "rotate90":
        return np.rot90(img, 1 if rng.random() < 0.5 else 3).copy()
    raise ValueError(transform)


# ========================================================================================= models
def get_model(name: str, args: argparse.Namespace, distractors: np.ndarray) -> tuple[Any, str, float]:
    """(model, what it is, seconds spent training) for an extractor name; None when unavailable."""
    from lookalike.errors import LookalikeError
    from lookalike.models import Model

    if name == "autoencoder":
        if args.model is not None:
            return Model.load(args.model), f"autoencoder loaded from {args.model}", 0.0
        from lookalike.training import train

        _log(f"training the default autoencoder on the {len(distractors):,} distractors, {args.ae_epochs} epochs ...")
        t0 = time.perf_counter()
        model = train(distractors, None, epochs=args.ae_epochs, val_fraction=0, seed=args.seed)
        secs = time.perf_counter() - t0
        return model, f"default preset, {args.ae_epochs} epochs on the distractors", secs
    size = args.lite0_size if name.startswith("efficientnet") else None
    if name.endswith("+adapted"):  # the default: a views head learned on the distractors (as `index` would)
        import torch

        from lookalike.adaptation import VIEW_AUGMENTATION, VIEWS, adapt, embed_pixel_views
        from lookalike.data import arrays_to_pixels

        base = Model.pretrained(name.removesuffix("+adapted"), image_size=size).set_precision(args.precision)
        _log(f"learning {name}'s head on the {len(distractors):,} distractors and {VIEWS} views of each ...")
        t0 = time.perf_counter()
        pixels = arrays_to_pixels(np.ascontiguousarray(distractors), base.preprocessing)
        features = base.embed_pixels(pixels)
        gen = torch.Generator().manual_seed(args.seed)
        views = np.concatenate([embed_pixel_views(base, pixels[i : i + 1024], VIEWS, VIEW_AUGMENTATION, gen)
                                for i in range(0, len(pixels), 1024)], axis=1)  # fmt: skip
        model = adapt(base, features, views=views, seed=args.seed)
        return model, f"{name} at {size} px, head learned on the distractors", time.perf_counter() - t0
    try:
        model = Model.pretrained(name, image_size=size) if size else Model.pretrained(name)
    except LookalikeError as exc:
        _log(f"skipping {name}: {exc}")
        return None, str(exc), 0.0
    return model, f"pretrained {name}" + (f" at {size} px" if size else ""), 0.0


def embed(model: Any, images: list[np.ndarray]) -> np.ndarray:
    """Unit embeddings of images of any size (prepared by the model's preprocessing)."""
    vecs = model.embed(images, batch_size=256)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return (vecs / np.where(norms > 0, norms, 1)).astype(np.float32)


# ======================================================================================== measures
def _hist(sims: np.ndarray) -> np.ndarray:
    """Counts of similarities per bin of width 2/BINS (bin k starts at -1 + 2k/BINS; the last, k = BINS, holds
    1.0). Similarities get the duplicate finder's slack (EDGE_SLACK) first, so bin counts match its edges."""
    s = np.clip(sims.astype(np.float64) + EDGE_SLACK, -1.0, 1.0)
    return np.bincount(np.floor((s + 1.0) * (BINS / 2)).astype(np.int64).ravel(), minlength=BINS + 1)


def _ge(hist: np.ndarray) -> np.ndarray:
    """count(sim >= bin start) for every bin start: a reverse cumulative sum."""
    return np.cumsum(hist[::-1])[::-1]


def pair_histograms(db: np.ndarray, copies: dict[str, np.ndarray], n_orig: int, block: int = 1000) -> dict[str, Any]:
    """Histograms of every pair's similarity: db-db, copy-db (all and true), copy-copy (all and true)."""
    out: dict[str, Any] = {"dd": np.zeros(BINS + 1, np.int64), "cd": {}, "cd_true": {}, "cc": {}, "cc_true": {}}
    for start in range(0, len(db), block):
        s = db[start : start + block] @ db.T
        rows = np.arange(start, start + len(s))[:, None]
        out["dd"] += _hist(s[np.arange(len(db))[None, :] > rows])
    names = list(copies)
    for a, ta in enumerate(names):
        c = copies[ta]
        s = c @ db.T
        out["cd"][ta] = _hist(s)
        out["cd_true"][ta] = _hist(np.diagonal(s[:, :n_orig]))
        for tb in names[a:]:
            s = c @ copies[tb].T
            if tb == ta:
                out["cc"][(ta, tb)] = _hist(s[np.triu_indices(len(c), 1)])
                out["cc_true"][(ta, tb)] = np.zeros(BINS + 1, np.int64)
            else:
                out["cc"][(ta, tb)] = _hist(s)
                out["cc_true"][(ta, tb)] = _hist(np.diagonal(s))
    return out


def scenario(h: dict[str, Any], transforms: tuple[str, ...], n_orig: int) -> dict[str, np.ndarray]:
    """Recall (copy-original pairs found) and pair precision at every bin start, for one collection."""
    every = h["dd"].copy()
    true = np.zeros(BINS + 1, np.int64)
    orig_pairs = np.zeros(BINS + 1, np.int64)
    for t in transforms:
        every += h["cd"][t]
        true += h["cd_true"][t]
        orig_pairs += h["cd_true"][t]
    for (a, b), hist in h["cc"].items():
        if a in transforms and b in transforms:
            every += hist
            true += h["cc_true"][(a, b)]
    found, true_found, orig_found = _ge(every), _ge(true), _ge(orig_pairs)
    recall = orig_found / (n_orig * len(transforms))
    precision = np.where(found > 0, true_found / np.maximum(found, 1), 1.0)
    pair_recall = true_found / max(int(true.sum()), 1)
    f1 = np.where(
        precision + pair_recall > 0, 2 * precision * pair_recall / np.maximum(precision + pair_recall, 1e-12), 0
    )
    return {"recall": recall, "precision": precision, "pair_recall": pair_recall, "f1": f1, "found": found}


def _bin_of(t: float) -> int:
    return int(round((t + 1.0) * BINS / 2))


def top1(db: np.ndarray, copies: np.ndarray) -> float:
    """Share of copies whose most similar database image is their original (row i of ``db``)."""
    best = np.concatenate([np.argmax(copies[s : s + 1000] @ db.T, axis=1) for s in range(0, len(copies), 1000)])
    return float(np.mean(best == np.arange(len(copies))))


def chaining(db: np.ndarray, copies: dict[str, np.ndarray], n_orig: int, threshold: float) -> dict[str, Any]:
    """Group originals + distractors + every copy at ``threshold``; how pure are the groups?"""
    from lookalike.duplicates import group_rows

    vectors = np.concatenate([db, *copies.values()])
    family = np.concatenate([np.arange(len(db))] + [np.arange(n_orig) for _ in copies])  # original of each row
    out = {}
    for linkage in ("single", "star"):
        t0 = time.perf_counter()
        groups = group_rows(vectors, threshold, linkage=linkage)
        secs = time.perf_counter() - t0
        mixed = [g for g in groups if len(np.unique(family[g[0]])) > 1]
        out[linkage] = {
            "groups": len(groups),
            "largest": max((len(g[0]) for g in groups), default=0),
            "mixed_groups": len(mixed),
            "images_in_mixed_groups": int(sum(len(g[0]) for g in mixed)),
            "images_in_groups": int(sum(len(g[0]) for g in groups)),
            "min_pairwise_below_threshold": int(sum(g[3] < threshold - 1e-6 for g in groups)),
            "seconds": round(secs, 2),
        }
    return out


def calibrate(name: str, db: np.ndarray, copies: dict[str, np.ndarray], n_orig: int, args: argparse.Namespace) -> dict:
    """Every measure for one extractor's embeddings."""
    h = pair_histograms(db, copies, n_orig)
    grid = np.round(np.arange(args.grid_min, 1.0 + 1e-9, args.step), 6)
    scenarios = {t: scenario(h, (t,), n_orig) for t in copies}
    scenarios["core"] = scenario(h, tuple(t for t in CORE if t in copies), n_orig)
    scenarios["all"] = scenario(h, tuple(copies), n_orig)
    core = scenarios["core"]
    ok = [t for t in grid if core["recall"][_bin_of(t)] >= args.recall_target]
    best_f1 = float(grid[int(np.argmax([core["f1"][_bin_of(t)] for t in grid]))])
    chosen = float(max(ok)) if ok else best_f1
    rule = f"highest threshold on a {args.step} grid with core recall >= {args.recall_target}"
    if not ok or core["precision"][_bin_of(chosen)] < args.min_precision:
        why = (
            "never reached" if not ok else f"precision {core['precision'][_bin_of(chosen)]:.3f} < {args.min_precision}"
        )
        rule = f"best F1 on core ({rule}: {why} at {chosen:.3f})"
        chosen = best_f1

    def at(t: float, s: dict[str, np.ndarray]) -> dict[str, float]:
        b = _bin_of(t)
        return {k: float(s[k][b]) for k in ("recall", "precision", "pair_recall", "f1")} | {"pairs": int(s["found"][b])}

    per_transform = {}
    for t, c in copies.items():
        sims = np.einsum("ij,ij->i", c, db[:n_orig])
        per_transform[t] = {
            "top1": top1(db, c),
            "median_similarity": float(np.median(sims)),
            "p10_similarity": float(np.quantile(sims, 0.1)),
            "at_default": at(chosen, scenarios[t]),
        }
    return {
        "extractor": name,
        "threshold": chosen,
        "rule": rule,
        "reached_target": bool(ok) and chosen == float(max(ok)),
        "best_f1_threshold": best_f1,
        "core_at_default": at(chosen, core),
        "core_at_best_f1": at(best_f1, core),
        "all_at_default": at(chosen, scenarios["all"]),
        "core_top1": float(np.mean([per_transform[t]["top1"] for t in CORE if t in copies])),
        "per_transform": per_transform,
        "grid": {
            "thresholds": grid.tolist(),
            **{
                f"{s}_{k}": [round(float(scenarios[s][k][_bin_of(t)]), 5) for t in grid]
                for s in ("core", "all")
                for k in ("recall", "precision")
            },
        },
        "chaining": chaining(db, copies, n_orig, chosen),
    }


# ========================================================================================= output
def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([title, line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def report(result: dict[str, Any]) -> str:
    """Plain-text tables of one extractor's calibration."""
    t = result["threshold"]
    rows = []
    for name, r in result["per_transform"].items():
        a = r["at_default"]
        rows.append([name, f"{r['top1']:.3f}", f"{r['median_similarity']:.3f}", f"{r['p10_similarity']:.3f}",
                     f"{a['recall']:.3f}", f"{a['precision']:.3f}"])  # fmt: skip
    for name in ("core", "all"):
        a = result[f"{name}_at_default"]
        top = f"{result['core_top1']:.3f}" if name == "core" else ""
        rows.append([name, top, "", "", f"{a['recall']:.3f}", f"{a['precision']:.3f}"])
    out = [
        _table(
            f"{result['extractor']} ({result['what']}): default threshold {t:.3f} ({result['rule']})",
            ["transform", "top-1", "median sim", "10th pct sim", f"recall@{t:.3f}", f"precision@{t:.3f}"],
            rows,
        )
    ]
    g = result["grid"]
    pick = [i for i, x in enumerate(g["thresholds"]) if abs(x - t) <= 0.05 + 1e-9 and round(x * 1000) % 10 == 0]
    out.append(
        _table(
            "  threshold grid (core = resize + jpeg + flip copies; all = every transform)",
            ["threshold", "core recall", "core precision", "all recall", "all precision"],
            [
                [
                    f"{g['thresholds'][i]:.3f}",
                    f"{g['core_recall'][i]:.3f}",
                    f"{g['core_precision'][i]:.3f}",
                    f"{g['all_recall'][i]:.3f}",
                    f"{g['all_precision'][i]:.3f}",
                ]
                for i in pick
            ],
        )  # fmt: skip
    )
    b = result["core_at_best_f1"]
    out.append(f"  best F1 on core: threshold {result['best_f1_threshold']:.3f} "
               f"(recall {b['recall']:.3f}, precision {b['precision']:.3f}, F1 {b['f1']:.3f})")  # fmt: skip
    for linkage, c in result["chaining"].items():
        out.append(
            f"  {linkage} linkage at {t:.3f} over {result['n_grouped']:,} images: {c['groups']:,} groups "
            f"({c['images_in_groups']:,} images), largest {c['largest']}, {c['mixed_groups']} mixing "
            f"distinct images ({c['images_in_mixed_groups']:,} images), {c['min_pairwise_below_threshold']} "
            f"with a pair below the threshold; {c['seconds']} s"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    quality_defaults = {
        "data": Path("..") / "shared" / "data" / "cifar10-jpg.tar.gz",
        "cache": Path("/tmp/lookalike-bench"),
    }
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=quality_defaults["data"], help="CIFAR-10 JPEG tarball")
    ap.add_argument("--cache-dir", type=Path, default=quality_defaults["cache"], help="where it is decoded once")
    ap.add_argument("--originals", type=int, default=1000, help="images that get copies (default 1000)")
    ap.add_argument("--distractors", type=int, default=5000, help="other, distinct images (default 5000)")
    ap.add_argument("--extractors", default=",".join(EXTRACTORS), help="comma-separated (default: all four)")
    ap.add_argument("--model", type=Path, help="a saved autoencoder to use instead of training one")
    ap.add_argument("--ae-epochs", type=int, default=20, help="epochs when training the autoencoder here")
    ap.add_argument("--lite0-size", type=int, default=128, help="input size of efficientnet-lite0 (default 128)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="as Index.build: auto")
    ap.add_argument("--recall-target", type=float, default=0.9, help="core recall the default keeps (0.9)")
    ap.add_argument(
        "--min-precision",
        type=float,
        default=0.5,
        help="below this core precision at the recall target, take the best-F1 threshold (0.5)",
    )
    ap.add_argument("--step", type=float, default=0.005, help="threshold grid step (0.005)")
    ap.add_argument("--grid-min", type=float, default=0.0, help="lowest threshold of the grid (0.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)
    if args.originals < 10 or args.distractors < 10:
        ap.error("--originals and --distractors must be at least 10")
    if not 0 < args.step <= 0.1 or round(args.step * BINS / 2, 6) % 1:
        ap.error("--step must be a multiple of 0.001, at most 0.1")

    import torch

    t_start = time.perf_counter()
    images = load_images(args)
    if args.originals + args.distractors > len(images):
        ap.error(f"--originals + --distractors must be at most {len(images)}")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(images))
    originals = images[order[: args.originals]]
    distractors = images[order[args.originals : args.originals + args.distractors]]
    copies_px = {t: [make_copy(im, t, rng) for im in originals] for t in TRANSFORMS}
    db_px = list(originals) + list(distractors)
    _log(f"{len(originals):,} originals, {len(distractors):,} distractors, {len(TRANSFORMS)} copies each original")

    results: dict[str, Any] = {
        "command": " ".join(
            [Path(sys.argv[0]).name if argv is None else "duplicates_calibration.py", *(argv or sys.argv[1:])]
        ),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "extractors": {},
    }
    for name in [n.strip() for n in args.extractors.split(",") if n.strip()]:
        model, what, train_s = get_model(name, args, distractors)
        if model is None:
            results["extractors"][name] = {"skipped": what}
            continue
        model.set_precision(args.precision)
        t0 = time.perf_counter()
        db = embed(model, db_px)
        copies = {t: embed(model, px) for t, px in copies_px.items()}
        embed_s = time.perf_counter() - t0
        _log(f"{name}: embedded {len(db) + sum(map(len, copies.values())):,} images in {embed_s:.0f} s; measuring ...")
        result = calibrate(name, db, copies, len(originals), args)
        result.update(what=what, precision=model.precision, train_seconds=round(train_s, 1),
                      embed_seconds=round(embed_s, 1), n_grouped=len(db) + sum(map(len, copies.values())))  # fmt: skip
        results["extractors"][name] = result
        print(report(result) + "\n", flush=True)
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    print("CALIBRATED table for lookalike/duplicates.py:")
    for name, r in results["extractors"].items():
        if "threshold" in r:
            c = r["core_at_default"]
            values = f'{r["threshold"]:.3f}, {c["recall"]:.3f}, {c["precision"]:.3f}, "{r["what"]}"'
            print(f'    "{name}": Calibration({values}),')
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(results, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o)
            + "\n"
        )
        _log(f"wrote {args.json}")
    _log(f"done in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
