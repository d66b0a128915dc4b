"""Pictures: reconstruction grids, loss curves, query/result grids and precision@k curves.

matplotlib is used with its non-interactive Agg backend; every function writes a PNG atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._fs import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _as_hwc(img: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) or (H, W, C) or (H, W) -> something imshow takes."""
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return img


def reconstruction_grid(
    originals: np.ndarray, reconstructions: np.ndarray, path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Originals in the top row, their reconstructions below (as seed 001 shows), uint8 ``(n, C, H, W)``."""
    plt = _pyplot()
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.5), squeeze=False)
    for i in range(n):
        for row, imgs in enumerate((originals, reconstructions)):
            ax = axes[row, i]
            img = _as_hwc(imgs[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        if i == 0:
            axes[0, 0].set_ylabel("original", fontsize=8)
            axes[1, 0].set_ylabel("reconstructed", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def loss_curve(history: Sequence[dict], path: str | os.PathLike[str], title: str = "") -> Path:
    """Train and validation loss per epoch from a training history (dicts with epoch/train_loss/val_loss)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    val = [h.get("val_loss") for h in history]
    if any(v is not None for v in val):
        ax.plot(epochs, [np.nan if v is None else v for v in val], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reconstruction loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def result_grid(
    rows: Sequence[tuple[np.ndarray, str, Sequence[tuple]]],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """One row per query: the query image (blue frame), then its results, each captioned (like seed 004).

    Args:
        rows: ``(query_image, query_caption, results)`` where each result is ``(image, caption)`` or
            ``(image, caption, same_class)``; ``same_class`` True/False draws a green/red frame (when
            labels are known), None draws none. Images are uint8 ``(H, W[, C])`` or ``(C, H, W)``.
        path: the PNG to write.
        title: a line above the grid.
    """
    plt = _pyplot()
    ncols = 1 + max((len(r[2]) for r in rows), default=0)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.6 * ncols, 2.1 * len(rows) + 0.3), squeeze=False)
    for r, (qimg, qcap, results) in enumerate(rows):
        cells = [(qimg, qcap, "query")] + [(*cell, None)[:3] for cell in results]
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            img, cap, mark = cells[c]
            img = _as_hwc(img)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(cap, fontsize=7)
            colour = {"query": "tab:blue", True: "tab:green", False: "tab:red"}.get(mark)
            if colour is not None:
                for side in ax.spines.values():
                    side.set_edgecolor(colour)
                    side.set_linewidth(2.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def precision_at_k_curve(results: Any, path: str | os.PathLike[str], title: str = "") -> Path:
    """Mean precision@k against k (log scale), one line per evaluation, to compare feature extractors.

    Args:
        results: an :class:`~lookalike.metrics.EvaluationResult`, or a mapping of run name -> result. The
            dotted line of each run is its chance precision (a random ranking).
        path: the PNG to write.
        title: a line above the plot.
    """
    plt = _pyplot()
    runs = results if isinstance(results, Mapping) else {"": results}
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, r in runs.items():
        curve = np.asarray(r.precision_curve, dtype=np.float64)
        k = np.arange(1, len(curve) + 1)
        label = f"{name}  " if name else ""
        label += f"mAP@{r.map_k} {r.map_at_k:.3f}, {r.knn_k}-NN {r.knn_accuracy:.3f}"
        (line,) = ax.plot(k, curve, label=label)
        marks = [x for x in r.ks if x <= len(curve)]
        ax.plot(marks, curve[np.array(marks, dtype=int) - 1], "o", color=line.get_color(), markersize=4)
        if np.isfinite(r.chance_precision):
            ax.axhline(r.chance_precision, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("k (results looked at)")
    ax.set_ylabel("precision@k (share with the query's label)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
