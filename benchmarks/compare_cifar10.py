#!/usr/bin/env python
"""Pretrained extractors against the autoencoder and raw pixels on CIFAR-10, and how fast they embed (issue 6).

    python benchmarks/compare_cifar10.py --json benchmarks/results/compare_cifar10.json
    python benchmarks/compare_cifar10.py --quick --json benchmarks/results/compare_cifar10_quick.json
    python benchmarks/compare_cifar10.py --sections quality --rows pixels,efficientnet-lite0@128
    python benchmarks/compare_cifar10.py --sections speed                 # only the speed section
    python benchmarks/compare_cifar10.py --autoencoder models/cifar-default  # a saved model instead of training

**Protocol** (``../shared/data/README.md``, the same as ``quality_cifar10.py``): the database is the 50,000
CIFAR-10 train images, the queries the 10,000 test images, relevant = same class. Every row is scored by
``lookalike.metrics.evaluate_vectors(db, db_labels, queries, query_labels, ks=(10, 100, 1000), map_at=1000,
knn_k=20, metric="cosine")``. Nothing is fitted on a test image or on any label: the autoencoder is trained
and the adapted heads are fitted on the 50,000 database images only, without their labels.

**Data**: quality_cifar10.py's ``build_npz`` (the tarball ``--data``, default ``../shared/data/cifar10-jpg.tar.gz``,
decoded once with the library's decoder into ``--cache-dir``/cifar10-uint8.npz); when the tarball is absent the
npz cache is used if it is there; with neither, the run is skipped with a message (exit status 0).

**Upscaling**: images go from 32 px to an extractor's input size the way its ``Model.preprocessing`` says
(``lookalike.data.image_to_array``: Pillow bilinear resize of the whole image). For speed, each child resizes
the uint8 batch with torch ``F.interpolate(mode="bilinear", antialias=False, align_corners=False)`` only after
checking, on 256 database images spread over the classes, that at that size it matches Pillow
(``arrays_to_pixels``) within 1 grey level on at least 99 % of the pixels; otherwise it uses Pillow. The check
and the method used are in the JSON (``resize``). With torch 2.13 and Pillow 13 the two are bit-identical at
64, 128 and 224 px. Resizing is not part of any img/s.

**Rows of the ``quality`` section** (each extractor/size in a fresh child process; ``--rows`` chooses):

1. ``pixels``: ``Model.pretrained("pixels")``: raw 32 px pixels scaled to [-1, 1] (3,072-d), the floor.
2. ``autoencoder``: the default autoencoder, trained here by
   ``lookalike.training.train(train_images, None, preset="default", epochs=--ae-epochs (30), seed=0,
   val_fraction=0)`` on the uint8 ``(n, 32, 32, 3)`` train images (as quality_cifar10.py's ``default`` row),
   or loaded from ``--autoencoder DIR`` (a saved model directory; then no training time).
3. ``efficientnet-lite0@S`` for S in ``--sizes`` (64,128,224) and ``efficientnet-lite2@S`` for S in
   ``--lite2-sizes`` (128): ``Model.pretrained(name, image_size=S)``, frozen 1280-d features.
4. ``efficientnet-lite0@128+adapted`` (``lookalike.adaptation.adapt``, method ``neighbours``, the library's
   defaults) and ``efficientnet-lite0@128+pca`` (method ``pca``), fitted on the 50,000 database features of
   the frozen row (computed once, in the same child). The adapted model's embedding of an image is
   ``head(frozen features)``, so the database and the queries are embedded by applying ``adapted.network.head``
   in fp32 to the stored frozen features; the child checks this on 256 queries against
   ``adapted.embed_pixels`` (precision auto) and reports the largest cosine difference. Were it above 0.01,
   every image would be re-embedded through ``adapted.embed_pixels`` and that time added.

Every model embeds with ``set_precision("auto")`` (what ``Index.build`` uses: a traced and frozen bfloat16
channels_last encoder on CPUs with native bf16, else fp32), through ``Model.embed_pixels`` (batch 256, all
torch threads).

Columns: dims; input px; embedding img/s (database + queries over the wall time of ``embed_pixels`` only,
after a warm-up batch; adapted rows: the frozen embedding plus the head); fit/train s (autoencoder: the
``train`` call; adapted rows: the ``adapt`` call, k-NN graph + training); mAP@1000, mAP, P@10, P@100, 20-NN
accuracy; "load": cores other processes kept busy while the child ran (0 = quiet machine). Below the table:
each adapted row's extra time (fitting + applying the head; + re-embedding if it was needed) and head check.

**The ``speed`` section** (issue 6 §4): Lite0 at each ``--sizes`` and Lite2 at each ``--lite2-sizes`` embed
2,048 uint8 test images (already resized) on ``--speed-threads`` (2) torch threads under
``torch.inference_mode``, with batch sizes 64 and 256, one warm-up pass over two batches, then 3 timed passes
(median) per engine and batch size: eager fp32 NCHW (the plain rate, the 1.0x), eager fp32 channels_last
(weights and input), eager bf16 channels_last, the library path (``Model.embed_pixels`` after
``set_precision("auto")``: the traced + frozen bf16 channels_last encoder, the product's real rate),
``torch.compile`` fp32 and bf16 (channels_last, inductor with ``freezing=True``; each in its own child,
skipped with the reason if compiling fails or takes more than ``--compile-limit`` = 180 s), and ONNX Runtime
fp32 only when ``onnxruntime`` is importable (it is not installed by this script). Every engine starts from
the same uint8 pixels and includes ``lookalike.data.normalize``, as the library does. bf16 engines are
skipped on CPUs without native bf16.
*Equal retrieval quality*: Lite0@128 embedded in fp32 and through the library's path (bf16) on a subset, the
first 1,000 train images of each class (10,000, database) and the first 200 test images of each class (2,000,
queries; per class because the files are in class order, so the first 10,000 train images would be two
classes only): mAP@1000, 20-NN, and the smallest/largest cosine between the two embeddings of an image.

**Goals** (judged on a full run only): adapted Lite0@128 mAP@1000 >= frozen Lite0@128 + 0.03 with fitting
under 15 min; Lite0@128's library path >= 1.5x eager fp32 NCHW (best batch size of each, same run) with
|delta mAP@1000| <= 0.005 between fp32 and the library path.

**--quick**: the first 500 train images of each class (5,000) and the first 100 test images of each class
(1,000); sizes 64 only (adapted rows at 64), Lite2 skipped; 2 adaptation epochs; autoencoder 1 epoch; the
speed section on 256 images (``torch.compile`` at batch 64 only: one compilation per engine) and the
equal-quality check at 64 px on 100/20 images per class. Goals are not judged. Explicit ``--sizes``,
``--ae-epochs`` ... still win over the quick values.

Every row group and every speed measurement runs in a fresh child process of this script (``--one``);
progress goes to stderr. ``--json PATH`` writes the machine, the arguments and every number (rewritten after
every child). Every number printed is measured by this run.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _load_quality() -> Any:
    """benchmarks/quality_cifar10.py as a module: its data, progress printing, and (through it) speed.py."""
    spec = importlib.util.spec_from_file_location(
        "lookalike_bench_quality", Path(__file__).with_name("quality_cifar10.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


quality = _load_quality()
speed = quality.speed  # benchmarks/speed.py: machine info, load accounting, rss
_log: Callable[[str], None] = quality._log

DEFAULT_DATA = quality.DEFAULT_DATA
DEFAULT_CACHE = quality.DEFAULT_CACHE
DEFAULT_WEIGHTS = Path("..") / "shared" / "data" / "weights"  # safetensors copies, used when pip's are absent
KS, MAP_AT, KNN_K = quality.KS, quality.MAP_AT, quality.KNN_K

LITE0, LITE2 = "efficientnet-lite0", "efficientnet-lite2"
PRETRAINED = (LITE0, LITE2)
SIZES, LITE2_SIZES, ADAPT_SIZE = (64, 128, 224), (128,), 128
ADAPT_METHODS = {"adapted": "views", "neighbours": "neighbours", "pca": "pca"}  # row suffix -> adapt's method
AE_EPOCHS = 30
BATCHES = (64, 256)
SPEED_IMAGES, REPEATS, COMPILE_LIMIT = 2048, 3, 180
EQUAL_PER_CLASS = (1000, 200)  # (train, test) images per class of the equal-quality check
EMBED_CHUNK = 2048  # images resized at a time (a 224 px chunk is 300 MB of uint8)
CHECK_IMAGES = 256  # images of the resize check and of the adapted-head check
HEAD_TOLERANCE = 0.01  # largest cosine difference accepted before re-embedding through the adapted model

GOAL_ADAPT_GAIN = 0.03
GOAL_ADAPT_SECONDS = 15 * 60
GOAL_SPEEDUP = 1.5
GOAL_EQUAL_MAP = 0.005

ENGINES = {  # name -> what it is (the order of the speed table)
    "eager-fp32": "eager fp32 NCHW",
    "eager-fp32-cl": "eager fp32 channels_last",
    "eager-bf16-cl": "eager bf16 channels_last",
    "library": "library: embed_pixels, precision auto",
    "compile-fp32": "torch.compile fp32 channels_last",
    "compile-bf16": "torch.compile bf16 channels_last",
    "onnxruntime-fp32": "ONNX Runtime fp32",
}


# ====================================================================================== child helpers
def _load_split(job: dict[str, Any], train_pc: int | None, test_pc: int | None) -> tuple[Any, Any, Any, Any]:
    """uint8 ``(n, 3, 32, 32)`` train and test images with labels, the first ``*_pc`` of each class."""
    import numpy as np

    with np.load(job["npz"], allow_pickle=False) as z:
        tr = quality._first_per_class(z["train_labels"], train_pc)
        te = quality._first_per_class(z["test_labels"], test_pc)
        return z["train_images"][tr], z["train_labels"][tr], z["test_images"][te], z["test_labels"][te]


def _check_resize(sample: Any, prep: Any) -> dict[str, Any]:
    """Which resize reproduces the model's preprocessing: ``none``, ``torch`` (checked) or ``pillow``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from lookalike.data import arrays_to_pixels

    s = prep.image_size
    if sample.shape[1:] == (prep.channels, s, s):
        return {"method": "none"}
    if prep.channels != sample.shape[1] or prep.interpolation != "bilinear":
        return {"method": "pillow", "why": f"{prep.interpolation} interpolation / {prep.channels} channels"}
    ref = arrays_to_pixels(np.ascontiguousarray(sample.transpose(0, 2, 3, 1)), prep).astype(np.int16)
    fast = F.interpolate(torch.from_numpy(sample), size=(s, s), mode="bilinear", antialias=False, align_corners=False)
    diff = np.abs(fast.numpy().astype(np.int16) - ref)
    within = float((diff <= 1).mean())
    return {"method": "torch" if within >= 0.99 else "pillow", "checked_images": len(sample), "within_1": within,
            "identical": float((diff == 0).mean()), "max_diff": int(diff.max())}  # fmt: skip


def _prepare(images: Any, prep: Any, method: str) -> Any:
    """uint8 ``(n, 3, 32, 32)`` -> the model's uint8 ``(n, C, S, S)`` pixels, resized by ``method``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from lookalike.data import arrays_to_pixels

    s = prep.image_size
    if method == "none":
        return np.ascontiguousarray(images)
    if method == "torch":
        out = F.interpolate(torch.from_numpy(images), size=(s, s), mode="bilinear", antialias=False,
                            align_corners=False)  # fmt: skip
        return out.contiguous().numpy()
    return arrays_to_pixels(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), prep)


def _pretrained(job: dict[str, Any], name: str, size: int) -> Any:
    from lookalike.models import Model

    return Model.pretrained(name, image_size=size, weights=job["weights"].get(name))


def _embed(model: Any, xtr: Any, xte: Any, label: str) -> tuple[Any, Any, dict[str, Any]]:
    """Database and query embeddings through ``model.embed_pixels``; only the embedding is timed."""
    import numpy as np

    prep = model.preprocessing
    resize = _check_resize(xtr[:: max(1, len(xtr) // CHECK_IMAGES)][:CHECK_IMAGES], prep)  # every class
    model.embed_pixels(_prepare(xtr[:256], prep, resize["method"]))  # warm-up (and the bf16 trace)
    outs, embed_s, resize_s = [], 0.0, 0.0
    for images in (xtr, xte):
        parts = []
        for start in range(0, len(images), EMBED_CHUNK):
            t = time.perf_counter()
            px = _prepare(images[start : start + EMBED_CHUNK], prep, resize["method"])
            t1 = time.perf_counter()
            parts.append(model.embed_pixels(px))
            embed_s += time.perf_counter() - t1
            resize_s += t1 - t
        outs.append(np.concatenate(parts))
    n = len(xtr) + len(xte)
    _log(f"{label}: embedded {n:,} images at {n / embed_s:,.0f} img/s ({model.precision}, resize: "
         f"{resize['method']}, {resize_s:.1f} s)")  # fmt: skip
    info = {"embed_seconds": embed_s, "embed_images": n, "embed_img_per_s": n / embed_s, "resize": resize,
            "resize_seconds": resize_s, "precision": model.precision}  # fmt: skip
    return outs[0], outs[1], info


def _scores(db: Any, ytr: Any, q: Any, yte: Any) -> dict[str, Any]:
    from lookalike.metrics import evaluate_vectors

    r = evaluate_vectors(db, ytr, q, yte, ks=KS, map_at=MAP_AT, knn_k=KNN_K, metric="cosine")
    return {"dims": int(db.shape[1]), "map_at_1000": r.map_at_k, "map": r.mean_average_precision,
            "p_at_10": r.precision_at_k[10], "p_at_100": r.precision_at_k[100], "knn_20": r.knn_accuracy,
            "chance": r.chance_precision, "n_database": r.n_database, "n_queries": r.n_queries,
            "n_evaluated": r.n_evaluated, "eval_seconds": r.seconds}  # fmt: skip


def _row_cosines(a: Any, b: Any) -> Any:
    import numpy as np

    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def _apply_head(head: Any, feats: Any) -> Any:
    """The adapted head on stored frozen features, in fp32 (what the adapted model computes after its backbone)."""
    import numpy as np
    import torch

    with torch.inference_mode():
        return np.concatenate([head(torch.from_numpy(feats[i : i + 8192])).float().numpy()
                               for i in range(0, len(feats), 8192)])  # fmt: skip


# ========================================================================================= child jobs
def job_pixels(job: dict[str, Any]) -> list[dict[str, Any]]:
    from lookalike.models import Model

    xtr, ytr, xte, yte = _load_split(job, job["train_pc"], job["test_pc"])
    model = Model.pretrained("pixels", image_size=32).set_precision("auto")
    db, q, emb = _embed(model, xtr, xte, "pixels")
    return [{"name": "pixels", "what": "raw 32 px pixels scaled to [-1, 1]", "input_px": 32, "fit_seconds": None,
             **emb, **_scores(db, ytr, q, yte)}]  # fmt: skip


def job_autoencoder(job: dict[str, Any]) -> list[dict[str, Any]]:
    from lookalike.models import Model
    from lookalike.training import train

    xtr, ytr, xte, yte = _load_split(job, job["train_pc"], job["test_pc"])
    extra: dict[str, Any] = {}
    if job["autoencoder_dir"]:
        model = Model.load(job["autoencoder_dir"])
        train_s = None
        what = f"saved model {job['autoencoder_dir']} ({model.describe()})"
        extra["saved_model_epochs"] = model.info.get("epochs")
    else:
        t = time.perf_counter()
        model = train(xtr.transpose(0, 2, 3, 1), None, preset="default", epochs=job["ae_epochs"], seed=job["seed"],
                      val_fraction=0.0, callbacks=[quality._Progress("autoencoder")])  # fmt: skip
        train_s = time.perf_counter() - t
        history = list(model.info.get("history", []))
        what = f"default preset, {job['ae_epochs']} epoch(s) on the database images ({model.describe()})"
        extra.update(
            epochs=job["ae_epochs"],
            history=history,
            train_img_per_s=statistics.fmean(h["images_per_s"] for h in history) if history else None,
        )
    model.set_precision("auto")
    db, q, emb = _embed(model, xtr, xte, "autoencoder")
    return [{"name": "autoencoder", "what": what, "input_px": model.preprocessing.image_size,
             "fit_seconds": train_s, **extra, **emb, **_scores(db, ytr, q, yte)}]  # fmt: skip


def _view_features(model: Any, images: Any, resize: str, seed: int) -> Any:
    """``lookalike.adaptation.VIEWS`` augmented views' features of each of ``images`` (uint8 (n, 3, 32, 32))."""
    import numpy as np
    import torch

    from lookalike.adaptation import VIEW_AUGMENTATION, VIEWS, embed_pixel_views

    gen = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, len(images), EMBED_CHUNK):
        pixels = _prepare(images[start : start + EMBED_CHUNK], model.preprocessing, resize)
        parts.append(embed_pixel_views(model, pixels, VIEWS, VIEW_AUGMENTATION, gen))
    return np.concatenate(parts, axis=1)


def job_extractor(job: dict[str, Any]) -> list[dict[str, Any]]:
    """One pretrained extractor at one size: the frozen row, then its adapted rows from the same features
    (``+adapted``, the library's default method: fitted on a seeded sample of at most 20,000 database images
    and two augmented views of each, as ``lookalike index`` fits it)."""
    import numpy as np

    from lookalike.adaptation import adapt, sample_paths

    name, size = job["name"], job["size"]
    label = f"{name}@{size}"
    xtr, ytr, xte, yte = _load_split(job, job["train_pc"], job["test_pc"])
    model = _pretrained(job, name, size).set_precision("auto")
    db, q, emb = _embed(model, xtr, xte, label)
    frozen = {"name": label, "what": f"{model.describe()}, frozen", "input_px": size, "fit_seconds": None,
              "weights": model.info.get("weights"), **emb}  # fmt: skip
    _log(f"{label}: evaluating {len(q):,} queries against {len(db):,} ...")
    frozen.update(_scores(db, ytr, q, yte))
    rows = [frozen]
    for suffix in job["adapt"]:
        method = ADAPT_METHODS[suffix]
        row_label = f"{label}+{suffix}"
        _log(f"{row_label}: fitting ({method}) on {len(db):,} database features ...")
        t = time.perf_counter()
        if method == "views":  # as `lookalike index` fits it: a seeded sample, each image and its views
            rows_fit = np.asarray(sample_paths(list(range(len(db))), seed=job["seed"]))
            views = _view_features(model, xtr[rows_fit], emb["resize"]["method"], job["seed"])
            adapted = adapt(model, db[rows_fit], views=views, epochs=job["adapt_epochs"], seed=job["seed"])
        else:
            adapted = adapt(model, db, method=method, epochs=job["adapt_epochs"], seed=job["seed"])
        fit_s = time.perf_counter() - t
        info = dict(adapted.info.get("adaptation", {}))
        head = adapted.network.head
        t = time.perf_counter()
        db_a, q_a = _apply_head(head, db), _apply_head(head, q)
        head_s = time.perf_counter() - t
        # check: head(stored frozen features) == what the adapted model embeds (its own precision, auto)
        adapted.set_precision("auto")
        sample = _prepare(xte[:CHECK_IMAGES], adapted.preprocessing, emb["resize"]["method"])
        direct = adapted.embed_pixels(sample)
        max_diff = float(1.0 - _row_cosines(direct, q_a[:CHECK_IMAGES]).min())
        reembed_s = None
        if max_diff > HEAD_TOLERANCE:
            _log(f"{row_label}: head(frozen features) differs from the adapted model by {max_diff:.4f}: re-embedding")
            db_a, q_a, re = _embed(adapted, xtr, xte, row_label)
            reembed_s = re["embed_seconds"]
        n = len(db) + len(q)
        if reembed_s is None:  # the frozen embedding + the head: what embedding through the adapted model costs
            embed_s, extra_s = emb["embed_seconds"] + head_s, fit_s + head_s
            precision = f"{emb['precision']} + fp32 head"
        else:
            embed_s, extra_s, precision = reembed_s, fit_s + reembed_s, adapted.precision
        _log(f"{row_label}: fitted in {fit_s:.1f} s, head applied in {head_s:.2f} s (check: max cosine "
             f"difference {max_diff:.2e}); evaluating ...")  # fmt: skip
        rows.append({
            "name": row_label, "what": f"{label} + {method} head ({info.get('dims')}-d) fitted on the database",
            "input_px": size, "fit_seconds": fit_s, "adaptation": info, "knn_graph_seconds": info.get("knn_seconds"),
            "head_seconds": head_s, "reembed_seconds": reembed_s, "extra_seconds": extra_s,
            "head_check_images": len(sample), "head_check_max_cos_diff": max_diff, "embed_seconds": embed_s,
            "embed_images": n, "embed_img_per_s": n / embed_s, "resize": emb["resize"], "precision": precision,
            **_scores(db_a, ytr, q_a, yte),
        })  # fmt: skip
        del db_a, q_a
    return rows


# ------------------------------------------------------------------------------------------- speed
def _speed_pixels(job: dict[str, Any], prep: Any) -> Any:
    """The first ``speed_images`` test images (spread over the classes), resized: a uint8 torch tensor."""
    import torch

    _, _, xte, _ = _load_split(job, 0, math.ceil(job["speed_images"] / 10))
    xte = xte[: job["speed_images"]]
    return torch.from_numpy(_prepare(xte, prep, _check_resize(xte[:CHECK_IMAGES], prep)["method"]))


def _time_engine(
    run: Callable[[Any, int], Any], pixels: Any, repeats: int, batches: tuple[int, ...] = BATCHES
) -> dict[str, Any]:
    """``run(pixels, batch)`` embeds every image in batches: per batch size, warm-up then the median of repeats."""
    out: dict[str, Any] = {}
    for batch in batches:
        t = time.perf_counter()
        run(pixels[:batch], batch)
        run(pixels[:batch], batch)
        warm = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run(pixels, batch)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        out[str(batch)] = {"img_per_s": len(pixels) / med, "seconds": times, "warmup_seconds": warm}
    return out


def _batched(encode: Callable[[Any], Any], prep: Any, dtype: Any, channels_last: bool) -> Callable[[Any, int], Any]:
    """An engine from an ``encode(x)``: normalise each uint8 batch (as the library does) and encode it."""
    import torch

    from lookalike.data import normalize

    def run(pixels: Any, batch: int) -> None:
        for start in range(0, len(pixels), batch):
            x = normalize(pixels[start : start + batch], prep).to(dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            encode(x).float().numpy()

    return run


def _encode_module(net: Any) -> Any:
    """A module whose ``forward`` is ``net.encode`` (what torch.compile and the ONNX export take)."""
    import torch

    class Encode(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.encode(x)

    return Encode(net).eval()


def job_speed(job: dict[str, Any]) -> dict[str, Any]:
    """Eager engines, the library path and ONNX Runtime for one extractor/size."""
    import torch

    from lookalike.models.model import cpu_supports_bf16

    torch.set_num_threads(job["threads"])
    name, size = job["name"], job["size"]
    model = _pretrained(job, name, size)
    prep = model.preprocessing
    pixels = _speed_pixels(job, prep)
    net = model.network.eval()
    bf16 = cpu_supports_bf16()
    results: dict[str, Any] = {}
    with torch.inference_mode():
        for engine in ("eager-fp32", "eager-fp32-cl", "eager-bf16-cl", "library", "onnxruntime-fp32"):
            _log(f"speed {name}@{size}: {ENGINES[engine]} ...")
            try:
                if engine == "eager-fp32":
                    run = _batched(net.encode, prep, torch.float32, False)
                elif engine == "eager-fp32-cl":
                    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
                    run = _batched(cl.encode, prep, torch.float32, True)
                elif engine == "eager-bf16-cl":
                    if not bf16:
                        results[engine] = {"skipped": "this CPU has no native bfloat16"}
                        continue
                    half = copy.deepcopy(net).to(torch.bfloat16).to(memory_format=torch.channels_last)
                    run = _batched(half.encode, prep, torch.bfloat16, True)
                elif engine == "library":
                    model.set_precision("auto")

                    def run(px: Any, batch: int) -> None:
                        model.embed_pixels(px, batch_size=batch, threads=job["threads"])
                else:
                    if importlib.util.find_spec("onnxruntime") is None:
                        results[engine] = {"skipped": "onnxruntime is not installed (never installed here)"}
                        continue
                    run = _onnx_engine(net, prep, job["threads"])
                res = _time_engine(run, pixels, job["repeats"])
            except Exception as exc:  # one engine failing must not lose the others
                results[engine] = {"skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                continue
            if engine == "library":
                res["precision"] = model.precision
                res["how"] = ("traced + frozen bf16 channels_last" if model.precision == "bf16"
                              else "eager fp32 channels_last input (no native bf16)")  # fmt: skip
            results[engine] = res
            _log(
                f"speed {name}@{size}: {ENGINES[engine]}: "
                + ", ".join(f"batch {b} {r['img_per_s']:,.0f} img/s" for b, r in res.items() if b.isdigit())
            )
    return {"name": name, "size": size, "images": len(pixels), "threads": job["threads"], "engines": results}


def _onnx_engine(net: Any, prep: Any, threads: int) -> Callable[[Any, int], Any]:
    """Export ``encode`` to ONNX (fp32, dynamic batch) and run it with ONNX Runtime on ``threads`` threads."""
    import shutil

    import onnxruntime as ort
    import torch

    from lookalike.data import normalize

    path = Path(tempfile.mkdtemp(prefix="compare-bench-onnx-")) / "encode.onnx"
    example = torch.zeros(2, prep.channels, prep.image_size, prep.image_size)
    kwargs = {"input_names": ["x"], "output_names": ["y"], "dynamic_axes": {"x": {0: "n"}, "y": {0: "n"}},
              "opset_version": 17}  # fmt: skip
    try:
        torch.onnx.export(_encode_module(net), (example,), str(path), dynamo=False, **kwargs)
    except TypeError:  # a torch without the dynamo switch
        torch.onnx.export(_encode_module(net), (example,), str(path), **kwargs)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    shutil.rmtree(path.parent, ignore_errors=True)

    def run(pixels: Any, batch: int) -> None:
        for start in range(0, len(pixels), batch):
            session.run(None, {"x": normalize(pixels[start : start + batch], prep).numpy()})

    return run


class _CompileTimeout(Exception):
    pass


def job_compile(job: dict[str, Any]) -> dict[str, Any]:
    """``torch.compile`` (inductor, freezing) of the channels_last encoder in fp32 or bf16, one child each.

    Inductor gets an empty cache folder, so the compile time is a first compile's, as a user would pay it.
    """
    import shutil

    import torch

    from lookalike.data import normalize
    from lookalike.models.model import cpu_supports_bf16

    torch.set_num_threads(job["threads"])
    name, size, engine = job["name"], job["size"], job["engine"]
    label = f"speed {name}@{size}: {ENGINES[engine]}"
    if engine == "compile-bf16" and not cpu_supports_bf16():
        return {"engine": engine, "result": {"skipped": "this CPU has no native bfloat16"}}
    model = _pretrained(job, name, size)
    prep = model.preprocessing
    pixels = _speed_pixels(job, prep)
    dtype = torch.bfloat16 if engine == "compile-bf16" else torch.float32
    cache = tempfile.mkdtemp(prefix="compare-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    net = copy.deepcopy(model.network).to(dtype).to(memory_format=torch.channels_last).eval()
    compiled = torch.compile(_encode_module(net))
    timed_out = []

    def on_alarm(signum: int, frame: Any) -> None:
        timed_out.append(True)
        raise _CompileTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    limit = job["compile_limit"]
    compile_s: dict[str, float] = {}
    try:
        with torch.inference_mode():
            for batch in job["batches"]:  # one compilation per input shape (dynamic=False)
                first = _batched(compiled, prep, dtype, True)
                signal.alarm(max(1, math.ceil(limit - sum(compile_s.values()))))
                t = time.perf_counter()
                try:
                    first(pixels[:batch], batch)
                finally:
                    signal.alarm(0)
                compile_s[str(batch)] = time.perf_counter() - t
                _log(f"{label}: compiled for batch {batch} in {compile_s[str(batch)]:.0f} s")
            probe = normalize(pixels[:8], prep).to(dtype).contiguous(memory_format=torch.channels_last)
            cos = torch.nn.functional.cosine_similarity(compiled(probe).float(), net.encode(probe).float())
            agree = float(cos.min())
            res = _time_engine(_batched(compiled, prep, dtype, True), pixels, job["repeats"], job["batches"])
    except Exception as exc:  # inductor wraps the alarm's exception in its own
        why = (f"compiling took more than {limit} s" if timed_out else
               f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")  # fmt: skip
        _log(f"{label}: skipped: {why}")
        return {"engine": engine, "result": {"skipped": why, "compile_seconds": compile_s}}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    res.update(compile_seconds=compile_s, min_cosine_vs_eager=agree)
    _log(f"{label}: " + ", ".join(f"batch {b} {r['img_per_s']:,.0f} img/s" for b, r in res.items() if b.isdigit()))
    return {"engine": engine, "result": res}


def job_equal(job: dict[str, Any]) -> dict[str, Any]:
    """Lite0 in fp32 against the library's path (bf16 where native): retrieval quality and cosines."""
    import torch

    torch.set_num_threads(job["threads"])
    size = job["size"]
    xtr, ytr, xte, yte = _load_split(job, *job["per_class"])
    model = _pretrained(job, LITE0, size)
    out: dict[str, Any] = {"name": LITE0, "size": size, "n_database": len(xtr), "n_queries": len(xte)}
    vecs = {}
    for precision in ("fp32", "auto"):
        model.set_precision(precision)
        db, q, emb = _embed(model, xtr, xte, f"equal quality {LITE0}@{size} {precision}")
        vecs[precision] = (db, q)
        out[precision] = {"precision": model.precision, "embed_img_per_s": emb["embed_img_per_s"],
                          **_scores(db, ytr, q, yte)}  # fmt: skip
    import numpy as np

    cos = _row_cosines(np.concatenate(vecs["fp32"]), np.concatenate(vecs["auto"]))
    out.update(min_cosine=float(cos.min()), max_cosine=float(cos.max()), mean_cosine=float(cos.mean()),
               delta_map_at_1000=out["auto"]["map_at_1000"] - out["fp32"]["map_at_1000"],
               delta_knn_20=out["auto"]["knn_20"] - out["fp32"]["knn_20"])  # fmt: skip
    return out


JOBS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "pixels": job_pixels,
    "autoencoder": job_autoencoder,
    "extractor": job_extractor,
    "speed": job_speed,
    "compile": job_compile,
    "equal": job_equal,
}


def run_job(job: dict[str, Any]) -> Any:
    out = JOBS[job["kind"]](job)
    return {"result": out, "rss_mib": speed._rss()["main"]}


# ============================================================================================ parent
def spawn(job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one job in a fresh ``python compare_cifar10.py --one JOB`` process; its result, wall time and load."""
    fd, out = tempfile.mkstemp(prefix="compare-bench-", suffix=".json")
    os.close(fd)
    busy0, t0 = speed._busy_cpu_seconds(), time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(job), "--one-out", out]
    try:
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)  # the child and what it started (compile workers)
                _, status, usage = os.wait4(proc.pid, 0)
                raise RuntimeError(f"killed after {timeout:.0f} s")
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"exit status {proc.returncode}")
        result = json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    result.update(wall_seconds=wall, rss_mib_tree=round(usage.ru_maxrss / 1024, 1))
    busy = speed._busy_cpu_seconds()
    if busy is not None and busy0 is not None:
        result["other_load_cores"] = round(max(0.0, (busy - busy0 - usage.ru_utime - usage.ru_stime) / wall), 2)
    return result


def _parse_sizes(text: str | None, default: tuple[int, ...]) -> list[int]:
    if text is None:
        return list(default)
    return [int(s) for s in text.split(",") if s.strip()]


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's sizes, counts and epochs: full defaults, the --quick values, explicit options over both."""
    q = args.quick
    s = {
        "train_pc": 500 if q else None,
        "test_pc": 100 if q else None,
        "sizes": _parse_sizes(args.sizes, (64,) if q else SIZES),
        "lite2_sizes": _parse_sizes(args.lite2_sizes, () if q else LITE2_SIZES),
        "adapt_size": args.adapt_size or (64 if q else ADAPT_SIZE),
        "adapt_epochs": args.adapt_epochs or (2 if q else None),
        "ae_epochs": args.ae_epochs or (1 if q else AE_EPOCHS),
        "speed_images": args.speed_images or (256 if q else SPEED_IMAGES),
        "equal_size": 64 if q else ADAPT_SIZE,
        "equal_per_class": (100, 20) if q else EQUAL_PER_CLASS,
    }
    s["equal_size"] = args.equal_size or s["equal_size"]
    return s


def _quality_plan(s: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(job kind or extractor@size, the rows it yields) in table order."""
    groups: list[tuple[str, list[str]]] = [("pixels", ["pixels"]), ("autoencoder", ["autoencoder"])]
    sizes = sorted(set(s["sizes"]) | {s["adapt_size"]})
    for name, name_sizes in ((LITE0, sizes), (LITE2, s["lite2_sizes"])):
        for size in name_sizes:
            rows = [f"{name}@{size}"] if name != LITE0 or size in s["sizes"] else []
            if name == LITE0 and size == s["adapt_size"]:
                rows += [f"{name}@{size}+{suffix}" for suffix in ADAPT_METHODS]
            if rows:
                groups.append((f"{name}@{size}", rows))
    return groups


def _weights(names: list[str], weights_dir: Path) -> tuple[dict[str, str | None], dict[str, str]]:
    """Per extractor: the weights file to pass (None: the installed package) or why it is skipped."""
    from lookalike.errors import LookalikeError
    from lookalike.models import Model

    chosen: dict[str, str | None] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            Model.pretrained(name, image_size=32)
            chosen[name] = None
            continue
        except LookalikeError as exc:
            reason = str(exc)
        local = weights_dir / f"{name}.safetensors"
        if local.is_file():
            try:
                Model.pretrained(name, image_size=32, weights=local)
                chosen[name] = str(local.resolve())
                print(f"{name}: {reason}; using {local} instead", flush=True)
                continue
            except LookalikeError as exc:
                reason += f"; {local}: {exc}"
        skipped[name] = reason
    return chosen, skipped


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _print_table(title: str, head: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, h in enumerate(head):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        Console(width=max(Console().width, 200)).print(table)
    except ImportError:
        print(title)
        print(" | ".join(head))
        for row in rows:
            print(" | ".join(row))
        print()


QUALITY_HEAD = ["row", "dims", "input px", "embed img/s", "fit/train s", "mAP@1000", "mAP", "P@10", "P@100",
                "20-NN", "load"]  # fmt: skip


def print_quality(section: dict[str, Any]) -> None:
    rows, notes = [], []
    for r in section["rows"]:
        if "error" in r:
            rows.append([r["name"], f"FAILED: {r['error']}"] + [""] * (len(QUALITY_HEAD) - 2))
            continue
        rows.append([
            r["name"], str(r["dims"]), str(r["input_px"]), _fmt(r["embed_img_per_s"], ",.0f"),
            _fmt(r["fit_seconds"], ",.1f"), _fmt(r["map_at_1000"], ".3f"), _fmt(r["map"], ".3f"),
            _fmt(r["p_at_10"], ".3f"), _fmt(r["p_at_100"], ".3f"), _fmt(r["knn_20"], ".3f"),
            _fmt(r.get("other_load_cores"), ".2f"),
        ])  # fmt: skip
        if "extra_seconds" in r:
            how = (f"head on the stored features {r['head_seconds']:.2f} s (no re-embedding: head(frozen features) "
                   f"matches adapted.embed_pixels on {r['head_check_images']} images, max cosine difference "
                   f"{r['head_check_max_cos_diff']:.1e})" if r["reembed_seconds"] is None else
                   f"re-embedding {r['reembed_seconds']:.1f} s (head check failed: max cosine difference "
                   f"{r['head_check_max_cos_diff']:.1e})")  # fmt: skip
            knn = r.get("knn_graph_seconds")
            notes.append(f"{r['name']}: fitting {r['fit_seconds']:.1f} s"
                         + (f" (k-NN graph {knn:.1f} s + training)" if knn is not None else "")
                         + f", {how}; total extra time {r['extra_seconds']:.1f} s")  # fmt: skip
        elif r["name"] == "autoencoder":
            notes.append(f"autoencoder: {r['what']}"
                         + (f"; training {r['fit_seconds']:.0f} s at {r['train_img_per_s']:,.0f} img/s"
                            if r.get("train_img_per_s") else ""))  # fmt: skip
    done = [r for r in section["rows"] if "error" not in r]
    title = "CIFAR-10 retrieval, cosine"
    if done:
        title += (f": {done[0]['n_queries']:,} queries vs {done[0]['n_database']:,} database images "
                  f"(chance {done[0]['chance']:.3f})")  # fmt: skip
    _print_table(title, QUALITY_HEAD, rows)
    for note in notes:
        print(note)
    resizes = {r["name"]: r["resize"] for r in done if r.get("resize", {}).get("method") not in (None, "none")}
    if resizes:
        methods = sorted({v["method"] for v in resizes.values()})
        worst = min(v.get("within_1", 1.0) for v in resizes.values())
        print(f"upscaling: {', '.join(methods)} (torch vs Pillow bilinear on {CHECK_IMAGES} images: "
              f"{worst:.2%} of pixels or more within 1 grey level)")  # fmt: skip


SPEED_HEAD = ["extractor", "engine", "batch 64 img/s", "batch 256 img/s", "best", "x eager fp32", "note", "load"]


def _best(res: dict[str, Any]) -> float | None:
    rates = [v["img_per_s"] for k, v in res.items() if k.isdigit()]
    return max(rates) if rates else None


def print_speed(section: dict[str, Any]) -> None:
    rows = []
    for cfg in section["configs"]:
        engines = cfg.get("engines", {})
        base = _best(engines.get("eager-fp32", {}))
        for engine, what in ENGINES.items():
            res = engines.get(engine)
            if res is None:
                continue
            if "skipped" in res:
                rows.append([cfg["label"], what, "-", "-", "-", "-", f"skipped: {res['skipped']}", ""])
                continue
            best = _best(res)
            note = res.get("how", "")
            if "compile_seconds" in res:
                note = (f"compiled in {sum(res['compile_seconds'].values()):.0f} s; min cosine vs eager "
                        f"{res['min_cosine_vs_eager']:.4f}")  # fmt: skip
            rows.append([cfg["label"], what, _fmt(res.get("64", {}).get("img_per_s"), ",.0f"),
                         _fmt(res.get("256", {}).get("img_per_s"), ",.0f"), _fmt(best, ",.0f"),
                         _fmt(best / base if best and base else None, ".2f"), note,
                         _fmt(res.get("other_load_cores"), ".2f")])  # fmt: skip
    if rows:
        c = next((c for c in section["configs"] if "images" in c), {"images": "?", "threads": "?"})
        _print_table(f"Embedding speed: {c['images']} images, torch threads: {c['threads']}, inference_mode, "
                     f"median of {section['repeats']} passes (img/s)", SPEED_HEAD, rows)  # fmt: skip
    for cfg in section["configs"]:
        if "skipped" in cfg or "error" in cfg:
            print(f"speed {cfg['label']}: {'skipped' if 'skipped' in cfg else 'FAILED'}: "
                  f"{cfg.get('skipped') or cfg.get('error')}")  # fmt: skip
    eq = section.get("equal")
    if eq and "error" not in eq:
        head = ["precision", "mAP@1000", "mAP", "P@10", "20-NN", "embed img/s"]
        rows = [[f"{p} ({eq[p]['precision']})", _fmt(eq[p]["map_at_1000"], ".4f"), _fmt(eq[p]["map"], ".4f"),
                 _fmt(eq[p]["p_at_10"], ".4f"), _fmt(eq[p]["knn_20"], ".4f"), _fmt(eq[p]["embed_img_per_s"], ",.0f")]
                for p in ("fp32", "auto")]  # fmt: skip
        _print_table(f"Equal retrieval quality: {eq['name']}@{eq['size']}, {eq['n_queries']:,} queries vs "
                     f"{eq['n_database']:,} database images", head, rows)  # fmt: skip
        print(f"fp32 vs library path: delta mAP@1000 {eq['delta_map_at_1000']:+.4f}, delta 20-NN "
              f"{eq['delta_knn_20']:+.4f}; cosine between an image's two embeddings: min {eq['min_cosine']:.5f}, "
              f"max {eq['max_cosine']:.5f}")  # fmt: skip
    elif eq:
        print(f"equal retrieval quality: FAILED: {eq['error']}")


def judge_goals(results: dict[str, Any]) -> dict[str, Any]:
    goals: dict[str, Any] = {}
    rows = {r["name"]: r for r in results["quality"].get("rows", []) if "error" not in r}
    frozen, adapted = rows.get(f"{LITE0}@128"), rows.get(f"{LITE0}@128+adapted")
    if frozen and adapted:
        gain = adapted["map_at_1000"] - frozen["map_at_1000"]
        goals[f"adapted Lite0@128 mAP@1000 >= frozen + {GOAL_ADAPT_GAIN}, fitting < 15 min"] = {
            "value": f"{adapted['map_at_1000']:.3f} vs {frozen['map_at_1000']:.3f} ({gain:+.3f}), fitting "
                     f"{adapted['fit_seconds'] / 60:.1f} min",
            "met": gain >= GOAL_ADAPT_GAIN and adapted["fit_seconds"] < GOAL_ADAPT_SECONDS,
        }  # fmt: skip
    cfg = next((c for c in results["speed"].get("configs", []) if c["label"] == f"{LITE0}@128"), None)
    eq = results["speed"].get("equal")
    if cfg and eq and "error" not in eq and eq["size"] == 128:
        lib, base = _best(cfg["engines"].get("library", {})), _best(cfg["engines"].get("eager-fp32", {}))
        if lib and base:
            goals[f"Lite0@128 library path >= {GOAL_SPEEDUP}x eager fp32 NCHW at |delta mAP@1000| <= "
                  f"{GOAL_EQUAL_MAP}"] = {
                "value": f"{lib:,.0f} vs {base:,.0f} img/s = {lib / base:.2f}x, delta mAP@1000 "
                         f"{eq['delta_map_at_1000']:+.4f}",
                "met": lib / base >= GOAL_SPEEDUP and abs(eq["delta_map_at_1000"]) <= GOAL_EQUAL_MAP,
            }  # fmt: skip
    return goals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("**Protocol**")[0].strip(),
        epilog="The protocol, the rows, the speed section and --quick are described in this script's docstring.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="CIFAR-10 JPEG tarball (default: ../shared/data/cifar10-jpg.tar.gz from the repo root)",
    )
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where the tarball is extracted and decoded once (default {DEFAULT_CACHE})",
    )
    ap.add_argument(
        "--weights-dir",
        type=Path,
        default=DEFAULT_WEIGHTS,
        help="safetensors weights used when the pip packages are not installed (default ../shared/data/weights)",
    )
    ap.add_argument("--json", type=Path, help="write the results here (rewritten after every child)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="5,000 / 1,000 images, size 64 only, no Lite2, 2 adapt epochs, 1 autoencoder epoch, speed on 256 images",
    )
    ap.add_argument("--sections", default="quality,speed", help="comma-separated: quality, speed (default both)")
    ap.add_argument("--rows", help="comma-separated quality rows (default: all; see the docstring)")
    ap.add_argument("--sizes", help="Lite0 input sizes (default 64,128,224; --quick 64)")
    ap.add_argument("--lite2-sizes", help="Lite2 input sizes, empty for none (default 128; --quick none)")
    ap.add_argument("--adapt-size", type=int, help="Lite0 size of the adapted rows (default 128; --quick 64)")
    ap.add_argument(
        "--adapt-epochs", type=int, help="epochs of the neighbours head (default: the library's; --quick 2)"
    )
    ap.add_argument("--autoencoder", type=Path, metavar="DIR", help="embed with this saved model instead of training")
    ap.add_argument("--ae-epochs", type=int, help=f"epochs of the trained autoencoder (default {AE_EPOCHS}; --quick 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of training and fitting (default 0)")
    ap.add_argument("--speed-threads", type=int, default=2, help="torch threads of the speed section (default 2)")
    ap.add_argument("--speed-images", type=int, help=f"images per speed measurement (default {SPEED_IMAGES}; "
                                                     "--quick 256)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=REPEATS, help=f"timed passes per measurement (default {REPEATS})")
    ap.add_argument(
        "--compile-limit",
        type=int,
        default=COMPILE_LIMIT,
        help=f"seconds torch.compile may take before the engine is skipped (default {COMPILE_LIMIT})",
    )
    ap.add_argument("--equal-size", type=int, help="Lite0 size of the equal-quality check (default 128; --quick 64)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--one-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        Path(args.one_out).write_text(json.dumps(run_job(json.loads(args.one))))
        return 0
    sections = [s for s in args.sections.split(",") if s]
    if not set(sections) <= {"quality", "speed"}:
        ap.error(f"unknown section(s) in {args.sections!r} (quality, speed)")
    s = _settings(args)
    if any(n < 1 for n in s["sizes"] + s["lite2_sizes"] + [s["adapt_size"], s["ae_epochs"], s["speed_images"]]):
        ap.error("sizes, epochs and image counts must be at least 1")
    if args.speed_images and args.speed_images % max(BATCHES):
        ap.error(f"--speed-images must be a multiple of {max(BATCHES)}")
    groups = _quality_plan(s)
    known = [r for _, rows in groups for r in rows]
    wanted = args.rows.split(",") if args.rows else None
    if wanted is not None:
        bad = [w for w in wanted if w not in known]
        if bad:
            ap.error(f"unknown row(s) {', '.join(bad)} (this run's rows: {', '.join(known)})")
    if args.autoencoder is not None and not (args.autoencoder / "config.json").is_file():
        ap.error(f"--autoencoder {args.autoencoder}: not a model directory (no config.json)")
    full = not args.quick and all(v is None for v in (args.sizes, args.lite2_sizes, args.adapt_size,
                                                      args.adapt_epochs, args.ae_epochs, args.speed_images,
                                                      args.equal_size)) and args.repeats == REPEATS  # fmt: skip
    mode = "full" if full else "quick" if args.quick else "partial"

    results: dict[str, Any] = {
        "mode": mode,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("one")},
        "settings": s,
        "protocol": {"ks": list(KS), "map_at": MAP_AT, "knn_k": KNN_K, "metric": "cosine"},
        "machine": speed.machine_info(),
        "quality": {"rows": []},
        "speed": {"configs": [], "repeats": args.repeats},
    }
    m = results["machine"]
    print(f"{m['cpu_model']}, {m['cpu_count']} CPUs, torch {m['torch_version']} ({m['torch_threads']} threads), "
          f"load average {m['loadavg_at_start'][0]:.2f}; mode {mode}", flush=True)  # fmt: skip

    data = args.data if args.data.is_absolute() else REPO / args.data
    npz = quality.decoded_npz(data, args.cache_dir)
    if npz is None:
        print(f"skipped: neither {data} nor {args.cache_dir / quality.NPZ_NAME} exists (the CIFAR-10 JPEGs; see "
              "../shared/data/README.md).")  # fmt: skip
        return 0
    if not data.is_file():
        print(f"{data} not found: using the decoded cache {npz}", flush=True)

    weights_dir = args.weights_dir if args.weights_dir.is_absolute() else REPO / args.weights_dir
    needed = [n for n in PRETRAINED if n == LITE0 or s["lite2_sizes"]]
    weights, no_weights = _weights(needed, weights_dir)
    for name, why in no_weights.items():
        print(f"{name} rows skipped: {why}", flush=True)
    base = {"npz": str(npz), "seed": args.seed, "weights": weights, "train_pc": s["train_pc"],
            "test_pc": s["test_pc"]}  # fmt: skip
    started = time.perf_counter()
    failed = 0

    def record() -> None:
        quality._write_json(args.json, results)

    if "quality" in sections:
        sec = results["quality"]
        sec.update(train_per_class=s["train_pc"], test_per_class=s["test_pc"])
        for group, rows in groups:
            rows = [r for r in rows if wanted is None or r in wanted]
            if not rows:
                continue
            if group in ("pixels", "autoencoder"):
                job = {**base, "kind": group, "autoencoder_dir": str(args.autoencoder.resolve())
                       if args.autoencoder else None, "ae_epochs": s["ae_epochs"]}  # fmt: skip
            else:
                name, size = group.split("@")
                if name in no_weights:
                    sec.setdefault("skipped", {})[group] = no_weights[name]
                    continue
                adapt_rows = [r.split("+", 1)[1] for r in rows if "+" in r]
                job = {**base, "kind": "extractor", "name": name, "size": int(size), "adapt": adapt_rows,
                       "adapt_epochs": s["adapt_epochs"]}  # fmt: skip
            _log(f"quality {group} started ({time.perf_counter() - started:.0f} s into the run)")
            try:
                res = spawn(job)
            except (RuntimeError, OSError, ValueError) as exc:
                failed += 1
                _log(f"quality {group} FAILED: {exc}")
                sec["rows"] += [{"name": r, "error": str(exc)} for r in rows]
                continue
            for r in res["result"]:
                r.update(other_load_cores=res.get("other_load_cores"), child_wall_seconds=res["wall_seconds"],
                         rss_mib=res["rss_mib"])  # fmt: skip
                sec["rows"].append(r)
                _log(f"{r['name']}: mAP@1000 {r['map_at_1000']:.3f}, P@10 {r['p_at_10']:.3f}, 20-NN {r['knn_20']:.3f}")
            record()

    if "speed" in sections:
        sec = results["speed"]
        common = {**base, "threads": args.speed_threads, "speed_images": s["speed_images"], "repeats": args.repeats}
        configs = [(LITE0, z) for z in s["sizes"]] + [(LITE2, z) for z in s["lite2_sizes"]]
        compile_batches = BATCHES[:1] if args.quick else BATCHES  # --quick: one compilation per engine
        for name, size in configs:
            label = f"{name}@{size}"
            if name in no_weights:
                sec["configs"].append({"label": label, "skipped": no_weights[name], "engines": {}})
                continue
            cfg: dict[str, Any] = {"label": label, "engines": {}}
            sec["configs"].append(cfg)
            _log(f"speed {label} started ({time.perf_counter() - started:.0f} s into the run)")
            try:
                res = spawn({**common, "kind": "speed", "name": name, "size": size})
                cfg.update({k: v for k, v in res["result"].items() if k != "engines"})
                for engine, r in res["result"]["engines"].items():
                    cfg["engines"][engine] = {**r, "other_load_cores": res.get("other_load_cores")}
            except (RuntimeError, OSError, ValueError) as exc:
                failed += 1
                _log(f"speed {label} FAILED: {exc}")
                cfg["error"] = str(exc)
            for engine in ("compile-fp32", "compile-bf16"):
                job = {**common, "kind": "compile", "name": name, "size": size, "engine": engine,
                       "compile_limit": args.compile_limit, "batches": compile_batches}  # fmt: skip
                try:  # the child stops compiling itself at the limit; this kill is the backstop
                    res = spawn(job, timeout=args.compile_limit + 1200)
                    load = res.get("other_load_cores")
                    cfg["engines"][engine] = {**res["result"]["result"], "other_load_cores": load}
                except (RuntimeError, OSError, ValueError) as exc:
                    cfg["engines"][engine] = {"skipped": f"failed: {exc}"}
                record()
            order = list(ENGINES)
            cfg["engines"] = dict(sorted(cfg["engines"].items(), key=lambda kv: order.index(kv[0])))
            record()
        if LITE0 not in no_weights:
            _log(f"equal quality {LITE0}@{s['equal_size']} started")
            try:
                res = spawn({**common, "kind": "equal", "size": s["equal_size"], "per_class": s["equal_per_class"]})
                sec["equal"] = {**res["result"], "other_load_cores": res.get("other_load_cores")}
            except (RuntimeError, OSError, ValueError) as exc:
                failed += 1
                sec["equal"] = {"error": str(exc)}
            record()

    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    results["total_seconds"] = time.perf_counter() - started
    results["goals"] = goals = judge_goals(results) if full else {}
    if "quality" in sections:
        print_quality(results["quality"])
        for group, why in results["quality"].get("skipped", {}).items():
            print(f"{group}: skipped ({why})")
    if "speed" in sections:
        print_speed(results["speed"])
    print("load: cores kept busy by other processes while the child ran (0 = quiet machine)")
    print(f"total {results['total_seconds'] / 60:.1f} min")
    if full:
        for name, g in goals.items():
            print(f"goal {name}: {g['value']} -> {'met' if g['met'] else 'NOT met'}")
        if not goals:
            print("goals: not judged (their rows did not run)")
    else:
        print("goals: judged only on a full run (no --quick and no size, epoch or count options)")
    quality._write_json(args.json, results)
    if args.json:
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
