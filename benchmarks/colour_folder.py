#!/usr/bin/env python
"""Folders where colour is what differs: does the default keep it, and what do colour augmentations cost?

    python benchmarks/colour_folder.py --json benchmarks/results/colour_folder.json

Issue 14 asks that on a folder where colour tells the images apart (its example: 60 images of orange discs
and blue bars, where the old default reached precision@5 0.67 and raw pixels 0.91) lookalike's default
reach precision@5 >= 0.95, and what colour jitter and greyscale views cost there. Two generated folders
(seeded, PNG, 96x96 px, written under ``--cache-dir``):

- ``discs-bars``: 30 orange discs and 30 blue bars (the issue's folder), random size, place and angle, on
  a light background with noise;
- ``colours``: 6 classes of 20 images, each class one hue; every image is a disc, a bar or a square of
  that hue at a random size and place (shape, size and place are shared by every class: only colour tells).

Every extractor indexes each folder with :meth:`lookalike.Index.build` (what ``lookalike index`` runs);
the score is leave-one-out precision@5 and mAP@100 from :meth:`lookalike.Index.evaluate` (each image a
query against the others, labels = sub-folders). Rows: raw ``pixels`` (at 32 px), frozen
``efficientnet-lite0@128``, the default (``efficientnet-lite0+adapted``: views with colour jitter and grey
views, :data:`lookalike.adaptation.VIEW_AUGMENTATION`) and the same head learned on views without colour
changes (``jitter=0, grayscale=0``: crops and flips only). The cost on photos is measured by
``benchmarks/head_designs.py cache --no-colour`` (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lookalike-bench" / "colour-folders"
SIDE = 96
HUES = {  # RGB of each class of `colours`
    "red": (215, 40, 40),
    "orange": (240, 140, 20),
    "yellow": (230, 210, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (150, 50, 190),
}


def _shape(draw: ImageDraw.ImageDraw, kind: str, colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    size = rng.uniform(0.25, 0.6) * SIDE
    cx, cy = rng.uniform(size / 2, SIDE - size / 2, 2)
    jitter = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in colour)
    if kind == "disc":
        draw.ellipse([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], fill=jitter)
    elif kind == "square":
        draw.rectangle([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], fill=jitter)
    else:  # a bar at a random angle
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * size / 2, np.sin(angle) * size / 2
        draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=jitter, width=max(3, int(size / 5)))


def _canvas(rng: np.random.Generator) -> Image.Image:
    base = rng.uniform(215, 245)
    noise = rng.normal(base, 6, (SIDE, SIDE, 3)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(noise)


def make_folders(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write both folders under ``root`` (anew each time: they take a second) and return them."""
    import shutil

    rng = np.random.default_rng(seed)
    out = {"discs-bars": root / "discs-bars", "colours": root / "colours"}
    for folder in out.values():
        shutil.rmtree(folder, ignore_errors=True)
    for label, (kind, colour) in {"orange-discs": ("disc", HUES["orange"]), "blue-bars": ("bar", HUES["blue"])}.items():
        (out["discs-bars"] / label).mkdir(parents=True)
        for i in range(30):
            im = _canvas(rng)
            _shape(ImageDraw.Draw(im), kind, colour, rng)
            im.save(out["discs-bars"] / label / f"{i:02d}.png")
    for label, colour in HUES.items():
        (out["colours"] / label).mkdir(parents=True)
        for i in range(20):
            im = _canvas(rng)
            _shape(ImageDraw.Draw(im), ("disc", "bar", "square")[i % 3], colour, rng)
            im.save(out["colours"] / label / f"{i:02d}.png")
    return out


def models(folder: Path) -> dict[str, Any]:
    """Each row's model for ``folder`` (the learned ones fitted on it, without labels)."""
    from lookalike.adaptation import VIEW_AUGMENTATION, adapt
    from lookalike.data import find_images
    from lookalike.models import Model
    from lookalike.models.spec import DEFAULT, input_size_for, resolve_model

    paths = find_images(folder)
    size = input_size_for(paths)
    base = Model.pretrained("efficientnet-lite0", image_size=size).set_precision("auto")
    no_colour = dataclasses.replace(VIEW_AUGMENTATION, jitter=0.0, grayscale=0.0)
    return {
        "pixels@32": resolve_model("pixels@32"),
        "efficientnet-lite0@128": resolve_model("efficientnet-lite0@128"),
        f"{DEFAULT} (default: colour jitter + grey views)": resolve_model(None, folder),
        f"{DEFAULT}, views without colour changes": adapt(base, paths=paths, augmentation=no_colour),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"folders go here (default {DEFAULT_CACHE})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    from lookalike.search import Index

    folders = make_folders(args.cache_dir, args.seed)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, folder in folders.items():
        print(f"\n{name} ({sum(1 for _ in folder.rglob('*.png'))} images: {folder})")
        print(f"  {'extractor':66s} {'P@5':>6s} {'mAP@100':>8s} {'seconds':>8s}")
        rows = results[name] = {}
        for row, model in models(folder).items():
            t0 = time.perf_counter()
            index = Index.build(folder, model, num_workers=0)
            r = index.evaluate(map_at=100)
            rows[row] = {"p5": r.precision_at_k[5], "map100": r.map_at_k, "seconds": time.perf_counter() - t0}
            print(f"  {row:66s} {r.precision_at_k[5]:6.3f} {r.map_at_k:8.3f} {rows[row]['seconds']:8.1f}", flush=True)
    if args.json:
        import torch

        args.json.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/colour_folder.py" + (f" --seed {args.seed}" if args.seed else "")
        info = {"command": command, "cpu": platform.processor() or platform.machine(),
                "torch_threads": torch.get_num_threads()}  # fmt: skip
        args.json.write_text(json.dumps({"info": info, "folders": results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
