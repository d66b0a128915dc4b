#!/usr/bin/env python
"""Retrieval quality of lookalike's models on CIFAR-10, against the seeds' models and pixel baselines.

    python benchmarks/quality_cifar10.py --json benchmarks/results/quality_cifar10.json
    python benchmarks/quality_cifar10.py --quick --json benchmarks/results/quality_cifar10_quick.json
    python benchmarks/quality_cifar10.py --rows default,default/vicreg --epochs 5   # some rows, shorter
    python benchmarks/quality_cifar10.py --sections digits,large                   # only those sections

**Protocol** (``../shared/data/README.md``): the database is the 50,000 CIFAR-10 train images, the queries
the 10,000 test images, relevant = same class; models are trained on the train images only, without their
labels (no validation split, seeded). Every row is scored by
``lookalike.metrics.evaluate_vectors(db, db_labels, queries, query_labels, ks=(10, 100, 1000), map_at=1000,
knn_k=20, metric="cosine")``: mAP@1000, mAP over the whole database, P@10, P@100, 20-NN accuracy.

**Data**: ``--data`` (default ``../shared/data/cifar10-jpg.tar.gz`` from the repository root) is extracted
once into ``--cache-dir`` (speed.py's ``prepare_data``), and every JPEG is decoded once, with the library's
own decoder (``lookalike.data.load_pixels``, 32 px RGB), into ``CACHE/cifar10-uint8.npz``: uint8
``(N, 3, 32, 32)`` pixels + labels (index of the class folder in sorted order) for each split. If the
tarball is absent the CIFAR-10 sections are skipped with a message (exit status 0); ``digits`` and
``mnist`` still run.

**Rows of the ``cifar10`` section** (``CIFAR_ROWS`` and ``ABLATIONS`` below; add a row there):

1. ``pixels``: the raw pixels scaled to [-1, 1] (3,072-d).
2. ``pca-256``: scikit-learn ``PCA(256)`` of those pixels, fit on the train images (seeded).
3. ``cifar-seed``: seed 001's network and recipe (its preset: 15 epochs, batch 64, Adam 1e-3, MSE).
4. ``mnist-seed-style``: seed 004's network (preset ``mnist-seed``: convs 32/16/8 + max-pooling, sigmoid +
   BCE, 10 epochs, batch 128) built for 32 px RGB input (``Model.from_preset("mnist-seed", image_size=32,
   channels=3)``: a 4x4x8 = 128-d code); ``lookalike.train`` has no ``channels`` option, so this row is
   trained with ``Trainer.fit`` like ``train`` does inside.
5. ``denoising``: the ``denoising`` preset (residual denoising autoencoder, lookalike 0.1's default).
6. ``default``: the ``default`` preset (SimCLR + reconstruction "invariant" autoencoder).
7. ablations of ``default`` (``ABLATIONS``): ``default/no-recon`` (recon_weight 0), ``default/vicreg``
   (objective vicreg), ``default/full-size-views`` (augmentation view_scale 1.0), ``default/no-colour``
   (augmentation jitter 0 and grayscale 0), ``default/4-widths`` (widths [32, 64, 128, 256]),
   ``default/wide`` (widths [64, 128, 256]), ``default/recon-all`` (recon_batch 256).

Rows that only change what ``lookalike.train`` exposes are trained with
``lookalike.training.train(images, None, preset=..., epochs=..., seed=..., val_fraction=0)``, as a user
would; the others with ``Model.from_preset(...)`` (TrainConfig fields and augmentation passed as overrides)
or, for architecture keywords, the network built the way ``from_preset`` builds it, then
``Trainer(model, None).fit(TrainingData(pixels, names, []))``. Embeddings: ``Model.embed_pixels`` after
``model.set_precision(--precision)`` (default ``auto``, what ``Index.build`` uses: bfloat16 on CPUs that
compute it natively, else fp32).

Columns: dims; epochs; training seconds (wall time of the training call; for PCA the fit); training img/s
(images per second seen by the optimiser, the mean over epochs of ``EpochStats.images_per_s``, as
``model.info["history"]`` reports it); embedding seconds (preparing + embedding every database and query
image); the five metrics; "load": cores other processes kept busy meanwhile (0 = quiet machine).

**Extra sections** (``--sections``, each its own table):

* ``digits``: scikit-learn's bundled 8x8 digits (``lookalike.datasets.load_dataset("digits")``, offline),
  split 80/20, stratified, seeded (1,437 database images, 360 queries); rows ``pixels`` (the 8x8 pixels,
  64-d), ``mnist-seed`` (its preset through ``lookalike.train``: 28 px grey) and ``default`` (through
  ``lookalike.train`` with the automatic image size, as ``lookalike demo`` does: 32 px).
* ``mnist``: when MNIST is in the lookalike cache (it is never downloaded here; skipped with a message
  otherwise): the first 1,000 train images of each class as database and training set, the first 200
  test images of each class as queries; the same three rows (``pixels`` is 784-d).
* ``large``: CIFAR-10 upscaled to 64 px (Pillow bicubic), to check that the default is also good on images
  that are not 32 px: the first 1,000 train images of each class (10,000) as database and training set,
  the first 200 test images of each class (2,000) as queries; rows ``pixels`` (64 px, 12,288-d) and
  ``default`` at ``image_size=64``.

Trained rows follow their preset's recipe (epochs, batch size, ...) unless ``--epochs N`` overrides the
epochs of every trained row.

**--quick**: sections ``cifar10`` and ``digits``, rows ``pixels``, ``pca-256``, ``cifar-seed``, ``default``;
CIFAR-10 subset = the first 500 train images of each class (5,000, database and training set) and the first
100 test images of each class (1,000 queries), file name order; 1 epoch for every CIFAR-10 row (the digits
rows keep their recipe: the set is small). ``--sections``/``--rows`` still choose, and ``mnist``/``large``
asked for with ``--quick`` use 500/100 images per class and 1 epoch too. Goals are only judged on a full run.

Every row runs in a fresh child process of this script (``--one``), so memory and thread state never leak
between rows; progress (row started, epochs, img/s, elapsed) goes to stderr. ``--json PATH`` writes the
machine, the arguments, every row's numbers and each trained row's per-epoch history (rewritten after every
row, so a long run leaves partial results behind).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _load_speed() -> Any:
    """benchmarks/speed.py as a module: its data extraction, machine info and load accounting."""
    spec = importlib.util.spec_from_file_location("lookalike_bench_speed", Path(__file__).with_name("speed.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


speed = _load_speed()
DEFAULT_DATA = speed.DEFAULT_DATA  # ../shared/data/cifar10-jpg.tar.gz, relative to the repository root
DEFAULT_CACHE = speed.DEFAULT_CACHE
NPZ_NAME = "cifar10-uint8.npz"
NPZ_VERSION = "1"  # bump when the decoding changes


# ======================================================================================== the rows
@dataclass(frozen=True)
class Row:
    """One row of a table: a baseline (``pixels``, ``pca``) or a preset trained with overrides."""

    name: str
    what: str
    kind: str = "train"  # "pixels", "pca" or "train"
    preset: str | None = None
    image_size: int | None = None  # None: the preset's (the default preset: 32 or 64 px from the data)
    channels: int | None = None  # None: the preset's
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    augmentation: dict[str, Any] = field(default_factory=dict)  # merged into the preset's augmentation dict
    arch: dict[str, Any] = field(default_factory=dict)  # architecture keyword arguments (widths, ...)


CIFAR_ROWS: list[Row] = [
    Row("pixels", "raw pixels scaled to [-1, 1]", kind="pixels"),
    Row("pca-256", "PCA(256) of those pixels, fit on the train images", kind="pca"),
    Row("cifar-seed", "seed 001 conv AE, Linear 1000-d ReLU code, MSE, Adam 1e-3, batch 64", preset="cifar-seed"),
    Row(
        "mnist-seed-style",
        "seed 004 conv AE (32/16/8 + max-pool) on 32 px RGB: 4x4x8 code, sigmoid + BCE",
        preset="mnist-seed",
        image_size=32,
        channels=3,
    ),
    Row("denoising", "residual denoising AE, Linear 256-d code (lookalike 0.1's default)", preset="denoising"),
    Row("default", "invariant AE: SimCLR on 16 px views + reconstruction, pooled 128-d", preset="default"),
]

# Ablations of the default: one row each, overriding TrainConfig fields (train=), the augmentation (merged
# into the preset's, augmentation=) or the network's keyword arguments (arch=). Add rows here.
ABLATIONS: list[Row] = [
    Row(
        "default/no-recon",
        "default without the reconstruction loss (recon_weight 0)",
        preset="default",
        train={"recon_weight": 0.0},
    ),
    Row("default/vicreg", "default with VICReg instead of SimCLR", preset="default", train={"objective": "vicreg"}),
    Row(
        "default/full-size-views",
        "default with 32 px views (view_scale 1.0)",
        preset="default",
        augmentation={"view_scale": 1.0},
    ),
    Row(
        "default/no-colour",
        "default without colour jitter or grayscale views",
        preset="default",
        augmentation={"jitter": 0.0, "grayscale": 0.0},
    ),
    Row(
        "default/4-widths",
        "default with widths [32, 64, 128, 256]: one more stage, 256-d, 4x4 final map",
        preset="default",
        arch={"widths": [32, 64, 128, 256]},
    ),
    Row(
        "default/wide",
        "default with widths [64, 128, 256]: twice as wide, 256-d",
        preset="default",
        arch={"widths": [64, 128, 256]},
    ),
    Row(
        "default/recon-all",
        "default reconstructing every image of the batch (recon_batch 256) instead of 32",
        preset="default",
        train={"recon_batch": 256},
    ),
]

SMALL_ROWS: list[Row] = [
    Row("pixels", "raw pixels scaled to [-1, 1]", kind="pixels"),
    Row("mnist-seed", "seed 004 conv AE, its preset (28 px grey, BCE), via lookalike.train", preset="mnist-seed"),
    Row("default", "the default preset via lookalike.train, automatic image size", preset="default"),
]

SECTIONS: dict[str, list[Row]] = {
    "cifar10": CIFAR_ROWS + ABLATIONS,
    "digits": SMALL_ROWS,
    "mnist": SMALL_ROWS,
    "large": [
        Row("pixels", "raw 64 px pixels (CIFAR-10 upscaled, bicubic) scaled to [-1, 1]", kind="pixels"),
        Row("default", "the default preset at image_size=64", preset="default", image_size=64),
    ],
}
SECTION_TITLES = {
    "cifar10": "CIFAR-10",
    "digits": "scikit-learn digits (8x8 grey)",
    "mnist": "MNIST subset",
    "large": "CIFAR-10 upscaled to 64 px",
}
QUICK_ROWS = ("pixels", "pca-256", "cifar-seed", "default")
QUICK_SECTIONS = ("cifar10", "digits")
CIFAR_SECTIONS = ("cifar10", "large")

# What `lookalike.training.train` takes besides the preset; anything else needs the explicit path.
TRAIN_KWARGS = ("batch_size", "lr", "latent_dim")

KS = (10, 100, 1000)
MAP_AT = 1000
KNN_K = 20

GOAL_MAP = 0.40
GOAL_KNN = 0.65
GOAL_TRAIN_SECONDS = 30 * 60
GOAL_SPEED_RATIO = 2.0


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ================================================================================ data (both sides)
def decoded_npz(tarball: Path, cache: Path) -> Path | None:
    """The decoded images, absolute: built from ``tarball`` when it is there (:func:`build_npz`), else the
    cache a previous run left in ``cache``, else None."""
    if tarball.is_file():
        return build_npz(tarball, cache).resolve()
    cached = cache / NPZ_NAME
    return cached.resolve() if cached.is_file() else None


def build_npz(tarball: Path, cache: Path) -> Path:
    """Extract the tarball once (speed.py's ``prepare_data``) and decode every JPEG once into an npz."""
    import numpy as np

    train_dir = speed.prepare_data(tarball, cache, None)
    stamp = f"{NPZ_VERSION} {tarball.stat().st_size} {tarball.stat().st_mtime_ns}"
    out = cache / NPZ_NAME
    if out.is_file():
        try:
            with np.load(out, allow_pickle=False) as z:
                if str(z["stamp"]) == stamp:
                    return out
        except (OSError, ValueError, KeyError):
            pass
    from lookalike.config import Preprocessing
    from lookalike.data import load_pixels

    prep = Preprocessing(image_size=32, channels=3)
    arrays: dict[str, Any] = {}
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    t0 = time.perf_counter()
    for split in ("train", "test"):
        root = train_dir.parent / split
        files = [(label, f) for label, c in enumerate(classes) for f in sorted((root / c).iterdir()) if f.is_file()]
        _log(f"decoding {len(files):,} {split} JPEGs into {out} (once) ...")
        pixels = np.empty((len(files), 3, 32, 32), dtype=np.uint8)
        for i, (_, f) in enumerate(files):
            pixels[i] = load_pixels(f, prep)[0]
        arrays[f"{split}_images"] = pixels
        arrays[f"{split}_labels"] = np.array([label for label, _ in files], dtype=np.int64)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, classes=np.array(classes), stamp=np.array(stamp), **arrays)
    os.replace(tmp, out)
    _log(f"decoded in {time.perf_counter() - t0:.0f} s")
    return out


def _first_per_class(labels: Any, per_class: int | None) -> Any:
    """Positions of the first ``per_class`` items of each label, in dataset order (all when None)."""
    import numpy as np

    if per_class is None:
        return np.arange(len(labels))
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    return np.sort(keep)


def load_section(job: dict[str, Any]) -> dict[str, Any]:
    """The section's database/training images and queries, uint8 ``(n, h, w, c)``, with labels."""
    import numpy as np

    section = job["section"]
    if section in CIFAR_SECTIONS:
        with np.load(job["npz"], allow_pickle=False) as z:
            tr = _first_per_class(z["train_labels"], job["train_per_class"])
            te = _first_per_class(z["test_labels"], job["test_per_class"])
            xtr, ytr = z["train_images"][tr].transpose(0, 2, 3, 1), z["train_labels"][tr]
            xte, yte = z["test_images"][te].transpose(0, 2, 3, 1), z["test_labels"][te]
        if section == "large":
            xtr, xte = _upscale(xtr, 64), _upscale(xte, 64)
    elif section == "digits":
        from sklearn.model_selection import train_test_split

        from lookalike.datasets import load_dataset

        d = load_dataset("digits", "train")
        tr, te = train_test_split(np.arange(len(d)), test_size=0.2, stratify=d.labels, random_state=job["seed"])
        tr, te = np.sort(tr), np.sort(te)
        xtr, ytr, xte, yte = d.images[tr], d.labels[tr], d.images[te], d.labels[te]
    elif section == "mnist":
        from lookalike.datasets import load_dataset

        a = load_dataset("mnist", "train", download=False)
        b = load_dataset("mnist", "test", download=False)
        tr = _first_per_class(a.labels, job["train_per_class"])
        te = _first_per_class(b.labels, job["test_per_class"])
        xtr, ytr, xte, yte = a.images[tr], a.labels[tr], b.images[te], b.labels[te]
    else:
        raise ValueError(f"unknown section {section!r}")
    return {"train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": yte}


def _upscale(images: Any, size: int) -> Any:
    import numpy as np
    from PIL import Image

    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC))
    return out


# ==================================================================================== child: one row
class _Progress:
    """Training callbacks that print epochs (and, during long epochs, a line every 30 s) to stderr."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.epochs = 0
        self.steps = 0

    def on_train_start(self, model: Any, start_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps = epochs, steps_per_epoch
        _log(f"{self.label}: training {model.describe()}: {epochs} epoch(s) x {steps_per_epoch} steps")

    def on_step(self, epoch: int, step: int, loss: float, images_per_s: float) -> None:
        now = time.perf_counter()
        if now - self.last >= 30:
            self.last = now
            _log(f"{self.label}: epoch {epoch}/{self.epochs} step {step}/{self.steps} loss {loss:.4f} "
                 f"{images_per_s:,.0f} img/s, {now - self.t0:.0f} s elapsed")  # fmt: skip

    def on_epoch_end(self, stats: Any) -> None:
        self.last = now = time.perf_counter()
        _log(f"{self.label}: epoch {stats.epoch}/{self.epochs} loss {stats.train_loss:.4f} "
             f"{stats.images_per_s:,.0f} img/s ({stats.seconds:.1f} s), {now - self.t0:.0f} s elapsed")  # fmt: skip


def _pixel_features(images: Any) -> Any:
    import numpy as np

    x = images.reshape(len(images), -1).astype(np.float32)
    x /= 127.5
    x -= 1.0
    return x


def _train(row: Row, images: Any, epochs: int | None, seed: int, label: str) -> tuple[Any, str]:
    """Train ``row`` on uint8 ``(n, h, w, c)`` images the way a user would; returns (model, how)."""
    import numpy as np

    from lookalike.data import arrays_to_pixels
    from lookalike.training import Trainer, TrainingData, train

    callbacks = [_Progress(label)]
    simple = not (row.arch or row.augmentation or row.channels) and set(row.train) <= set(TRAIN_KWARGS)
    if simple:
        model = train(images, None, preset=row.preset, image_size=row.image_size, epochs=epochs, seed=seed,
                      val_fraction=0.0, callbacks=callbacks, **row.train)  # fmt: skip
        return model, "lookalike.training.train"
    import torch

    from lookalike.models import Model
    from lookalike.models.autoencoders import build_network, init_weights
    from lookalike.models.presets import get_preset, resolve_preset

    image_size = row.image_size
    if image_size is None and row.preset == "default":  # what train() picks for arrays
        image_size = 32 if min(images.shape[1:3]) <= 40 else 64
    overrides: dict[str, Any] = dict(row.train, seed=seed, val_fraction=0.0)
    if epochs is not None:
        overrides["epochs"] = epochs
    if row.augmentation:
        overrides["augmentation"] = {**(get_preset(row.preset).train.augmentation or {}), **row.augmentation}
    if not row.arch:
        model = Model.from_preset(row.preset, image_size=image_size, channels=row.channels, **overrides)
        how = "Model.from_preset + Trainer.fit"
    else:  # Model.from_preset takes no architecture keywords: build the network as it does
        arch, kwargs, prep, cfg = resolve_preset(row.preset, image_size=image_size, channels=row.channels, **overrides)
        kwargs.update(row.arch)
        torch.manual_seed(cfg.seed)
        network = build_network(arch, in_channels=prep.channels, image_size=prep.image_size, **kwargs)
        init_weights(network, cfg.init)
        model = Model(network, prep, architecture=arch, arch_kwargs=kwargs, preset=row.preset, train_config=cfg)
        how = "build_network + Model + Trainer.fit"
    pixels = arrays_to_pixels(np.asarray(images), model.preprocessing)
    data = TrainingData(pixels, [f"image[{i}]" for i in range(len(pixels))], [])
    return Trainer(model, None, callbacks).fit(data), how


def run_row(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from lookalike.metrics import evaluate_vectors

    row = Row(**job["row"])
    label = f"{job['section']}:{row.name}"
    t0 = time.perf_counter()
    data = load_section(job)
    xtr, ytr, xte, yte = data["train_x"], data["train_y"], data["test_x"], data["test_y"]
    _log(f"{label}: {len(xtr):,} database/training images, {len(xte):,} queries, "
         f"{xtr.shape[1]}x{xtr.shape[2]}x{xtr.shape[3]} (loaded in {time.perf_counter() - t0:.1f} s)")  # fmt: skip
    out: dict[str, Any] = {"n_database": len(xtr), "n_queries": len(xte), "input_shape": list(xtr.shape[1:])}
    train_s = img_s = None
    if row.kind == "pixels":
        t = time.perf_counter()
        db, q = _pixel_features(xtr), _pixel_features(xte)
        embed_s = time.perf_counter() - t
    elif row.kind == "pca":
        from sklearn.decomposition import PCA

        n_comp = min(256, len(xtr), xtr[0].size)
        t = time.perf_counter()
        pca = PCA(n_comp, random_state=job["seed"]).fit(_pixel_features(xtr))
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        db, q = pca.transform(_pixel_features(xtr)), pca.transform(_pixel_features(xte))
        embed_s = time.perf_counter() - t
        out["pca"] = {
            "svd_solver": getattr(pca, "_fit_svd_solver", pca.svd_solver),
            "explained_variance": float(pca.explained_variance_ratio_.sum()),
        }
    else:
        from lookalike.data import arrays_to_pixels

        t = time.perf_counter()
        model, how = _train(row, xtr, job["epochs"], job["seed"], label)
        train_s = time.perf_counter() - t
        history = list(model.info.get("history", []))
        img_s = float(np.mean([h["images_per_s"] for h in history])) if history else None
        model.set_precision(job["precision"])
        t = time.perf_counter()
        db = model.embed_pixels(arrays_to_pixels(xtr, model.preprocessing))
        q = model.embed_pixels(arrays_to_pixels(xte, model.preprocessing))
        embed_s = time.perf_counter() - t
        cfg = model.train_config
        out.update(
            trained_with=how,
            model=model.describe(),
            parameters=sum(p.numel() for p in model.network.parameters()),
            preprocessing=model.preprocessing.to_dict(),
            architecture={"name": model.architecture, **model.arch_kwargs},
            train_config=cfg.to_dict(),
            epochs=cfg.epochs,
            precision=model.precision,
            history=history,
            epoch_seconds=sum(h["seconds"] for h in history),
        )
    _log(f"{label}: evaluating {len(q):,} queries against {len(db):,} ...")
    r = evaluate_vectors(db, ytr, q, yte, ks=KS, map_at=MAP_AT, knn_k=KNN_K, metric="cosine")
    out.update(
        dims=int(np.asarray(db).shape[1]),
        train_seconds=train_s,
        train_img_per_s=img_s,
        embed_seconds=embed_s,
        embed_images=len(xtr) + len(xte),
        map_at_1000=r.map_at_k,
        map=r.mean_average_precision,
        p_at_10=r.precision_at_k[10],
        p_at_100=r.precision_at_k[100],
        knn_20=r.knn_accuracy,
        chance=r.chance_precision,
        n_evaluated=r.n_evaluated,
        eval_seconds=r.seconds,
        torch_threads=torch.get_num_threads(),
        rss_mib=speed._rss()["main"],
    )
    return out


# ============================================================================================ parent
def spawn(job: dict[str, Any]) -> dict[str, Any]:
    """Run one row in a fresh ``python quality_cifar10.py --one JOB`` process and collect its result."""
    fd, out = tempfile.mkstemp(prefix="quality-", suffix=".json")
    os.close(fd)
    busy0, t0 = speed._busy_cpu_seconds(), time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(job), "--one-out", out]
    try:
        proc = subprocess.Popen(cmd, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"exit status {proc.returncode}")
        result = json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    result["wall_seconds"] = wall
    result["rss_mib_tree"] = round(usage.ru_maxrss / 1024, 1)
    busy = speed._busy_cpu_seconds()
    if busy is not None and busy0 is not None:
        result["other_load_cores"] = round(max(0.0, (busy - busy0 - usage.ru_utime - usage.ru_stime) / wall), 2)
    return result


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


HEAD = ["row", "what", "dims", "epochs", "train s", "train img/s", "embed s", "mAP@1000", "mAP", "P@10", "P@100",
        "20-NN", "load"]  # fmt: skip


def _table_rows(section: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in section["rows"]:
        if "error" in r:
            rows.append([r["name"], f"FAILED: {r['error']}"] + [""] * (len(HEAD) - 2))
            continue
        rows.append([
            r["name"], r["what"], str(r["dims"]), _fmt(r.get("epochs"), "d"), _fmt(r["train_seconds"], ",.1f"),
            _fmt(r["train_img_per_s"], ",.0f"), _fmt(r["embed_seconds"], ",.1f"), _fmt(r["map_at_1000"], ".3f"),
            _fmt(r["map"], ".3f"), _fmt(r["p_at_10"], ".3f"), _fmt(r["p_at_100"], ".3f"), _fmt(r["knn_20"], ".3f"),
            _fmt(r.get("other_load_cores"), ".2f"),
        ])  # fmt: skip
    return rows


def _title(name: str, section: dict[str, Any]) -> str:
    done = [r for r in section["rows"] if "error" not in r]
    if not done:
        return SECTION_TITLES[name]
    r = done[0]
    return (f"{SECTION_TITLES[name]}: {r['n_queries']:,} queries vs {r['n_database']:,} database images, cosine "
            f"(chance {r['chance']:.3f})")  # fmt: skip


def print_tables(results: dict[str, Any]) -> None:
    sections = {k: v for k, v in results["sections"].items() if v.get("rows")}
    try:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=max(Console().width, 180))
        for name, section in sections.items():
            t = Table(title=_title(name, section))
            for i, h in enumerate(HEAD):
                t.add_column(h, justify="left" if i < 2 else "right", max_width=44 if i == 1 else None)
            for row in _table_rows(section):
                t.add_row(*row)
            console.print(t)
    except ImportError:
        for name, section in sections.items():
            print(_title(name, section))
            print(" | ".join(HEAD))
            for row in _table_rows(section):
                print(" | ".join(row))
            print()
    for name, section in results["sections"].items():
        if section.get("skipped"):
            print(f"{SECTION_TITLES[name]}: skipped ({section['skipped']})")


def judge_goals(results: dict[str, Any]) -> dict[str, Any]:
    rows = {r["name"]: r for r in results["sections"].get("cifar10", {}).get("rows", []) if "error" not in r}
    d, s = rows.get("default"), rows.get("cifar-seed")
    goals: dict[str, Any] = {}
    if d:
        goals[f"default mAP@1000 >= {GOAL_MAP:.2f}"] = {"value": round(d["map_at_1000"], 4),
                                                        "met": d["map_at_1000"] >= GOAL_MAP}  # fmt: skip
        goals[f"default 20-NN >= {GOAL_KNN:.2f}"] = {"value": round(d["knn_20"], 4), "met": d["knn_20"] >= GOAL_KNN}
        goals["default training wall time <= 30 min"] = {"value": f"{d['train_seconds'] / 60:.1f} min",
                                                         "met": d["train_seconds"] <= GOAL_TRAIN_SECONDS}  # fmt: skip
        if s and s["train_img_per_s"]:
            ratio = d["train_img_per_s"] / s["train_img_per_s"]
            goals["default img/s >= 2x cifar-seed img/s"] = {
                "value": f"{d['train_img_per_s']:,.0f} vs {s['train_img_per_s']:,.0f} img/s = {ratio:.2f}x",
                "met": ratio >= GOAL_SPEED_RATIO,
            }
    return goals


def _write_json(path: Path | None, results: dict[str, Any]) -> None:
    if path is None:
        return
    out = path if path.is_absolute() else Path.cwd() / path
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)


def _selected(args: argparse.Namespace) -> dict[str, list[Row]]:
    """The rows to run in each section, from --quick, --sections and --rows."""
    sections = args.sections.split(",") if args.sections else list(QUICK_SECTIONS if args.quick else SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    wanted = args.rows.split(",") if args.rows else None
    if wanted is None and args.quick:  # the quick cifar10 rows; every row of the other sections
        wanted = [f"cifar10:{n}" for n in QUICK_ROWS] + [f"{s}:{r.name}" for s in SECTIONS if s != "cifar10"
                                                         for r in SECTIONS[s]]  # fmt: skip
    if wanted is not None:
        known = {r.name for rows in SECTIONS.values() for r in rows}
        known |= {f"{s}:{r.name}" for s, rows in SECTIONS.items() for r in rows}
        bad = [w for w in wanted if w not in known]
        if bad:
            raise ValueError(f"unknown row(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
    plan = {}
    for s in sections:
        rows = [r for r in SECTIONS[s] if wanted is None or r.name in wanted or f"{s}:{r.name}" in wanted]
        if rows:
            plan[s] = rows
    return plan


def _sizes(args: argparse.Namespace, section: str) -> tuple[int | None, int | None]:
    """(train images per class, test images per class); None = all (digits: its own 80/20 split)."""
    if section == "digits":
        return None, None
    if args.limit:
        return max(1, args.limit // 10), max(1, args.limit // 50)
    if args.quick:
        return 500, 100
    if section == "cifar10":
        return None, None
    return 1000, 200


def _epochs(args: argparse.Namespace, section: str) -> int | None:
    if args.epochs is not None:
        return args.epochs
    if (args.quick or args.limit) and section != "digits":
        return 1
    return None  # the preset's recipe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("**Protocol**")[0].strip(),
        epilog="rows:\n"
        + "\n".join(f"  {s}: {', '.join(r.name for r in rows)}" for s, rows in SECTIONS.items())
        + "\n\nThe protocol, every row and the --quick subset are described in this script's docstring.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="CIFAR-10 JPEG tarball (default: ../shared/data/cifar10-jpg.tar.gz from the repo root)",
    )
    ap.add_argument("--json", type=Path, help="write the results here (rewritten after every row)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="5,000 train / 1,000 test CIFAR-10 images, 1 epoch, rows pixels,pca-256,cifar-seed,default, "
        "sections cifar10,digits",
    )
    ap.add_argument(
        "--rows",
        help="comma-separated row names to run (NAME in every section, or SECTION:NAME); "
        "default: all (--quick: pixels,pca-256,cifar-seed,default)",
    )
    ap.add_argument(
        "--sections",
        help=f"comma-separated sections: {', '.join(SECTIONS)} (default: all; --quick: {','.join(QUICK_SECTIONS)})",
    )
    ap.add_argument("--epochs", type=int, help="epochs of every trained row (default: each preset's recipe)")
    ap.add_argument("--seed", type=int, default=0, help="seed of training, PCA and the digits split (default 0)")
    ap.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="embedding precision (Model.set_precision); auto, as Index.build does, by default",
    )
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where the tarball is extracted and decoded once (default {DEFAULT_CACHE})",
    )
    ap.add_argument("--limit", type=int, help=argparse.SUPPRESS)  # dev smoke runs: N train images, N/5 queries
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--one-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        Path(args.one_out).write_text(json.dumps(run_row(json.loads(args.one))))
        return 0
    if args.limit is not None and args.limit < 20:
        ap.error("--limit must be at least 20")
    if args.epochs is not None and args.epochs < 1:
        ap.error("--epochs must be at least 1")
    try:
        plan = _selected(args)
    except ValueError as exc:
        ap.error(str(exc))
    full = not (args.quick or args.limit or args.epochs is not None)
    mode = "full" if full else "quick" if args.quick else "partial"
    data = args.data if args.data.is_absolute() else (REPO / args.data)
    results: dict[str, Any] = {
        "mode": mode,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("one")},
        "protocol": {"ks": list(KS), "map_at": MAP_AT, "knn_k": KNN_K, "metric": "cosine"},
        "machine": speed.machine_info(),
        "sections": {},
    }
    m = results["machine"]
    print(f"{m['cpu_model']}, {m['cpu_count']} CPUs, torch {m['torch_version']} ({m['torch_threads']} threads), "
          f"load average {m['loadavg_at_start'][0]:.2f}; mode {mode}", flush=True)  # fmt: skip

    for section, rows in plan.items():
        tr, te = _sizes(args, section)
        size = "80/20 split" if section == "digits" else "all" if tr is None else f"{tr}/{te} per class"
        ep = _epochs(args, section)
        print(f"{section} ({size}, {'recipe epochs' if ep is None else f'{ep} epoch(s)'}): "
              f"{', '.join(r.name for r in rows)}", flush=True)  # fmt: skip
    npz: Path | None = None
    if any(s in CIFAR_SECTIONS for s in plan):
        if data.is_file():
            npz = build_npz(data, args.cache_dir).resolve()  # the children run in the repository root
        else:
            print(f"CIFAR-10 sections skipped: {data} not found (it holds the CIFAR-10 JPEGs; see "
                  f"../shared/data/README.md).", flush=True)  # fmt: skip
    failed = 0
    started = time.perf_counter()
    for section, rows in plan.items():
        res: dict[str, Any] = {"rows": []}
        results["sections"][section] = res
        if section in CIFAR_SECTIONS and npz is None:
            res["skipped"] = f"{data} not found"
            continue
        if section == "mnist":
            from lookalike.datasets import load_dataset
            from lookalike.errors import LookalikeError

            try:
                load_dataset("mnist", "test", download=False)
            except LookalikeError as exc:
                print(f"MNIST section skipped: not in the lookalike cache ({exc}).", flush=True)
                res["skipped"] = f"MNIST not in the cache: {exc}"
                continue
        train_pc, test_pc = _sizes(args, section)
        res.update(train_per_class=train_pc, test_per_class=test_pc, epochs_override=_epochs(args, section))
        for row in rows:
            job = {"section": section, "row": asdict(row), "npz": str(npz) if npz else None, "seed": args.seed,
                   "train_per_class": train_pc, "test_per_class": test_pc, "epochs": _epochs(args, section),
                   "precision": args.precision}  # fmt: skip
            _log(f"{section}:{row.name} started ({time.perf_counter() - started:.0f} s into the run)")
            try:
                r = spawn(job)
            except (RuntimeError, OSError, ValueError) as exc:
                failed += 1
                _log(f"{section}:{row.name} FAILED: {exc}")
                res["rows"].append({"name": row.name, "what": row.what, "spec": asdict(row), "error": str(exc)})
                continue
            r = {"name": row.name, "what": row.what, "spec": asdict(row), **r}
            res["rows"].append(r)
            _log(f"{section}:{row.name} done in {r['wall_seconds']:.0f} s: mAP@1000 {r['map_at_1000']:.3f}, "
                 f"P@10 {r['p_at_10']:.3f}, 20-NN {r['knn_20']:.3f}")  # fmt: skip
            _write_json(args.json, results)

    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    results["total_seconds"] = time.perf_counter() - started
    goals = judge_goals(results) if full else {}
    results["goals"] = goals
    print_tables(results)
    print("load: cores kept busy by other processes while the row ran (0 = quiet machine)")
    if full:
        for name, g in goals.items():
            print(f"goal {name}: {g['value']} -> {'met' if g['met'] else 'NOT met'}")
        if not goals:
            print("goals: not judged (the cifar10 default row did not run)")
    else:
        print("goals: judged only on a full run (no --quick, --epochs or --limit)")
    _write_json(args.json, results)
    if args.json:
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
