#!/usr/bin/env python
"""The default model on a folder of 640x480 JPEG photos: learning time, and indexing against the encoder alone.

    python benchmarks/photo_indexing.py --json benchmarks/results/photo_indexing.json
    python benchmarks/photo_indexing.py --images 1000 --workers 0,1      # quicker

Issue 14 §6 asks that the default's training take <= 5 minutes per 5,000 images on this 2-core CPU, and
that indexing 640x480 JPEG photos run at >= 150 images/s (decode + embed + hash + write) and within 1.25x of
the encoder's own time on the same pre-decoded batches, measured in the same run.

**Photos**: ``--images`` (5,000) photos of the prepared real sets (``benchmarks/real_sets.py``: imagenette
and scene15 first, then the other photo sets), each centre-cropped to 4:3, resized to 640x480 (Lanczos) and
saved as a JPEG at quality 90 under ``--cache-dir`` (kept for the next run; the sets themselves are not
committed). 640x480 is the size the issue names; it is larger than the 160 px the default reads them at,
so a JPEG is decoded at a reduced DCT scale (``draft``), as lookalike always does.

**Learning**: ``lookalike.models.spec.resolve_model(None, folder)``, what ``lookalike train FOLDER`` and
``lookalike index FOLDER`` run: the input size chosen from the images (160 px), each photo decoded once,
embedded as it is and as two augmented views, the views head trained. Wall seconds, and the same per
5,000 images.

**Indexing**, for each ``--workers`` (decoding processes): ``Index.build(folder, model, out_dir)`` end to
end into a fresh folder (listing, decoding, sha256, encoding, writing shards and the SQLite catalog, the
search structure, the model copy), against **the encoder alone**: ``model.embed_pixels`` over the same
photos already decoded and prepared (uint8 arrays in memory), batches of 256, the same precision (auto).
The two alternate (encoder, index, encoder, index ... ``--repeats`` times) and the fastest of each counts,
so the machine's drift falls on both. Printed: images/s of each, and the ratio index / encoder.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_sets  # noqa: E402

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lookalike-bench" / "photos-640x480"
PHOTO_SETS = ("imagenette", "scene15", "clothing", "flowers5", "pacs-art")


def make_photos(out: Path, n: int) -> Path:
    """``n`` 640x480 JPEGs from the prepared photo sets, in ``out/<set>/<class>/``; reused when complete."""
    from PIL import Image, ImageOps

    from lookalike.data import find_images

    marker = out / ".complete.json"
    if marker.is_file() and json.loads(marker.read_text()).get("images") == n:
        return out
    shutil.rmtree(out, ignore_errors=True)
    sources: list[tuple[str, Path]] = []
    for name in PHOTO_SETS:
        root = real_sets.set_root(name)
        if root is not None:
            sources += [(name, p) for p in find_images(root)]
    if len(sources) < n:
        raise SystemExit(f"only {len(sources)} photos prepared ({', '.join(PHOTO_SETS)}); "
                         "run python benchmarks/real_sets.py prepare first")  # fmt: skip
    pick = np.random.default_rng(0).choice(len(sources), n, replace=False)
    for i in sorted(pick.tolist()):
        name, path = sources[i]
        with Image.open(path) as im:
            photo = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (640, 480), Image.Resampling.LANCZOS)
        dest = out / name / path.parent.name / f"{path.stem}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        photo.save(dest, quality=90)
    marker.write_text(json.dumps({"images": n}) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000, help="photos (default 5000)")
    ap.add_argument("--workers", default="0,1", help="decoding processes to index with (default 0,1)")
    ap.add_argument("--repeats", type=int, default=2, help="alternations of encoder and index (default 2)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"photos go here (default {DEFAULT_CACHE})")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    import torch

    from lookalike.data import find_images
    from lookalike.models.spec import resolve_model
    from lookalike.search import Index

    folder = make_photos(args.cache_dir / f"n{args.images}", args.images)
    paths = find_images(folder)
    print(f"{len(paths):,} photos of 640x480 in {folder}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    t0 = time.perf_counter()
    model = resolve_model(None, folder)
    learn_s = time.perf_counter() - t0
    info = model.info.get("adaptation", {})
    print(f"learned {model.describe()} in {learn_s:.0f} s ({learn_s * 5000 / len(paths) / 60:.1f} min per 5,000 "
          f"images; head fit {info.get('seconds')} s, {info.get('epochs')} epochs)")  # fmt: skip
    model.set_precision("auto")
    t0 = time.perf_counter()
    pixels = np.stack([model.prepare(p) for p in paths])
    decode_s = time.perf_counter() - t0
    print(f"decoded and prepared every photo once in {decode_s:.1f} s ({len(paths) / decode_s:,.0f} img/s, 1 process)")
    model.embed_pixels(pixels[:64])  # warm-up

    def encoder() -> float:
        t = time.perf_counter()
        for s in range(0, len(pixels), 256):
            model.embed_pixels(pixels[s : s + 256])
        return time.perf_counter() - t

    rows: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="photo-index-"))
    try:
        for workers in [int(w) for w in args.workers.split(",")]:
            enc, idx = [], []
            for r in range(args.repeats):
                enc.append(encoder())
                out = work / f"w{workers}-{r}"
                t = time.perf_counter()
                built = Index.build(folder, model, out, num_workers=workers)
                idx.append(time.perf_counter() - t)
                assert len(built) == len(paths)
                shutil.rmtree(out)
            e, i = min(enc), min(idx)
            rows[f"workers={workers}"] = {"encoder_seconds": e, "index_seconds": i, "encoder_img_per_s": len(paths) / e,
                                          "index_img_per_s": len(paths) / i, "ratio": i / e,
                                          "all_encoder_seconds": enc, "all_index_seconds": idx}  # fmt: skip
            print(
                f"workers={workers}: index {len(paths) / i:,.0f} img/s ({i:.1f} s), encoder alone "
                f"{len(paths) / e:,.0f} img/s ({e:.1f} s): index / encoder = {i / e:.2f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/photo_indexing.py" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in ("images", "workers", "repeats")
        )
        out = {"command": command, "cpu": platform.processor() or platform.machine(),
               "torch_threads": torch.get_num_threads(), "images": len(paths), "model": model.describe(),
               "learn_seconds": learn_s, "learn_minutes_per_5000": learn_s * 5000 / len(paths) / 60,
               "adaptation": info, "decode_seconds": decode_s, "indexing": rows}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
