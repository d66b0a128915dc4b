#!/usr/bin/env python
"""Public labelled image sets, taken from GitHub repositories, for lookalike's retrieval-quality benchmarks.

    python benchmarks/real_sets.py list                                   # the sets, and which are prepared
    python benchmarks/real_sets.py prepare                                # every set, from /work/.mirror
    python benchmarks/real_sets.py prepare pacs-art dtd10 --root /tmp/real
    python benchmarks/real_sets.py verify                                 # decode every prepared file (Pillow)

Every set is recorded as data in :data:`SETS`: the repository (``owner/name``), the exact commit, the
path(s) inside it, how the class of a file follows from its path, the licence the repository states, and
the number of classes and images expected after sampling. Nothing is downloaded here: the repository must
already be on this machine as a bare git snapshot (``fetch github:owner/name`` with the search tool puts it
at ``/work/.mirror/owner+name/repo``); the files are read out of the commit with ``git ls-tree`` and
``git cat-file --batch``.

**Prepared layout**: ``ROOT/<set>/<class>/<file>`` (``ROOT``: ``--root``, else ``$LOOKALIKE_REAL_SETS``,
else ``/work/data/real``; keep it outside the repository), plus ``ROOT/<set>/.real_set.json`` (what was
written, from which commit). Class folders are named after the class; file names are the original base
names (made unique within a class with their path when two collide).

**Sampling** (deterministic): the image files of each class are sorted by path; a class with more than
``cap`` files keeps ``cap`` evenly spaced ones (index ``floor(i * n / cap)``). ``cap`` starts at 300
(:data:`MAX_PER_CLASS`) and is lowered one step at a time until the set holds at most 5,000 images
(:data:`MAX_IMAGES`). The file bytes are kept as they are in the commit (JPEG or PNG); files in another
image format (GTSRB's PPM) are converted to PNG with Pillow, losslessly.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_ROOT = "/work/data/real"
ROOT_ENV = "LOOKALIKE_REAL_SETS"
DEFAULT_MIRROR_ROOT = "/work/.mirror"
MAX_PER_CLASS = 300
MAX_IMAGES = 5000
MARKER = ".real_set.json"

#: file name endings taken as image files (case-insensitive)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm")
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNM_MAGIC = (b"P5", b"P6")


# --- how the class of a file follows from its path -----------------------------------------------------


def parent_folder(path: str) -> str:
    """The class is the name of the folder holding the file (``a/b/<class>/x.jpg``)."""
    return PurePosixPath(path).parent.name


def parent_folder_lower(path: str) -> str:
    """The class is the lower-cased name of the folder holding the file (splits that disagree on case)."""
    return PurePosixPath(path).parent.name.lower()


def mapped_parent_folder(mapping: dict[str, str]) -> Callable[[str], str | None]:
    """The class is ``mapping[<folder holding the file>]``; files in folders not in the mapping are left out."""

    def classify(path: str) -> str | None:
        return mapping.get(PurePosixPath(path).parent.name)

    return classify


IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "english_springer",
    "n02979186": "cassette_player",
    "n03000684": "chain_saw",
    "n03028079": "church",
    "n03394916": "french_horn",
    "n03417042": "garbage_truck",
    "n03425413": "gas_pump",
    "n03445777": "golf_ball",
    "n03888257": "parachute",
}

#: Chars74K ``SampleNNN`` folders: 001-010 are the digits 0-9, 011-036 the capitals A-Z
CHARS74K_CLASSES = {f"Sample{i + 1:03d}": c for i, c in enumerate("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")}


# --- the sets ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealSet:
    """One labelled image set: where it comes from, how it is labelled, and what it holds once prepared."""

    name: str
    kind: str
    repo: str  # GitHub owner/name
    commit: str  # 40 hex digits
    paths: tuple[str, ...]  # folders (or files) inside the repository, read recursively
    label_rule: str  # how the class of a file follows from its path, in words
    classify: Callable[[str], str | None]  # path inside the repository -> class (None: not part of the set)
    licence: str  # as stated in the repository ("none stated" when it states none)
    classes: int  # expected after sampling
    images: int  # expected after sampling
    typical_size: str  # typical width x height of the prepared images
    held_out: bool = False  # kept aside for a final check (not used while developing)
    source: str = ""  # where the images come from originally, and anything worth knowing

    @property
    def fetch_hint(self) -> str:
        return f"fetch github:{self.repo} with the search tool first"


SETS: tuple[RealSet, ...] = (
    RealSet(
        name="sign-digits",
        kind="signs",
        repo="ardamavi/Sign-Language-Digits-Dataset",
        commit="4b09433ef9d5c60602e8805bb54b8aa2428527f8",
        paths=("Dataset",),
        label_rule="folder holding the file: Dataset/<digit>/*.JPG",
        classify=parent_folder,
        licence="Apache-2.0",
        classes=10,
        images=2062,
        typical_size="100x100 (3 are 3024x3024)",
        source="Turkish sign-language digits 0-9, hand photos on white, by Ayranci Anadolu High School students.",
    ),
    RealSet(
        name="pacs-art",
        kind="art",
        repo="MachineLearning2020/Homework3-PACS",
        commit="d586a6cf3db84896fb6cc465c7bf51bdaf6d65d8",
        paths=("PACS/art_painting",),
        label_rule="folder holding the file: PACS/art_painting/<class>/*.jpg",
        classify=parent_folder,
        licence="none stated (PACS, Li et al. 2017, research use)",
        classes=7,
        images=1820,
        typical_size="227x227",
        source="PACS 'art_painting' domain: paintings of dog, elephant, giraffe, guitar, horse, house, person.",
    ),
    RealSet(
        name="pacs-sketch",
        kind="sketches",
        repo="MachineLearning2020/Homework3-PACS",
        commit="d586a6cf3db84896fb6cc465c7bf51bdaf6d65d8",
        paths=("PACS/sketch",),
        label_rule="folder holding the file: PACS/sketch/<class>/*.png",
        classify=parent_folder,
        licence="none stated (PACS, Li et al. 2017, research use)",
        classes=7,
        images=1740,
        typical_size="227x227",
        held_out=True,
        source="PACS 'sketch' domain: black-and-white line drawings of the same 7 classes as pacs-art.",
    ),
    RealSet(
        name="scene15",
        kind="scenes",
        repo="anthonyhuang19/SceneBoW",
        commit="8406eb09794b9f07aeafb3650ad58831bb5752d0",
        paths=("train", "test"),
        label_rule="lower-cased folder holding the file: {train,test}/<scene>/image_NNNN.jpg (splits merged)",
        classify=parent_folder_lower,
        licence="MIT (repository badge; images: 15-Scene, Lazebnik et al. 2006)",
        classes=15,
        images=4123,
        typical_size="~256x256 greyscale",
        source="The 15-Scene categories (Oliva & Torralba, Fei-Fei & Perona, Lazebnik et al.), greyscale photos.",
    ),
    RealSet(
        name="clothing",
        kind="clothing",
        repo="alexeygrigorev/clothing-dataset-small",
        commit="11961516512414bf9f6c150a832cfd21b54a6b54",
        paths=("train", "validation", "test"),
        label_rule="folder holding the file: {train,validation,test}/<garment>/*.jpg (splits merged)",
        classify=parent_folder,
        licence="CC0-1.0",
        classes=10,
        images=2573,
        typical_size="400x533 (up to 888x936)",
        source="Top-10 classes of Alexey Grigorev's crowd-sourced clothing photos (dress ... t-shirt).",
    ),
    RealSet(
        name="gtsrb",
        kind="traffic-signs",
        repo="Zascosium/XAI",
        commit="8c77a7e1d13d57fc713e13afe37b1227a5e29946",
        paths=("GTSRB/Final_Test/Images",),
        label_rule="folder holding the file: GTSRB/Final_Test/Images/<sign name>/NNNNN.ppm",
        classify=parent_folder,
        licence="none stated (GTSRB, Stallkamp et al. 2012)",
        classes=43,
        images=4985,
        typical_size="35x35 (small)",
        held_out=True,
        source="GTSRB final test set, sorted into 43 German-named class folders and resized to 35x35 by the uploader; "
        "PPM converted to PNG (lossless).",
    ),
    RealSet(
        name="dtd10",
        kind="textures",
        repo="pan8915/DeepTexture",
        commit="522f46f683af11e93673bff29f81df14f49edfb2",
        paths=("images",),
        label_rule="folder holding the file: images/<texture>/<texture>_NNNN.jpg",
        classify=parent_folder,
        licence="none stated (DTD, Cimpoi et al. 2014, research use)",
        classes=10,
        images=1200,
        typical_size="~300x300 (271-900)",
        source="The first 10 categories of the Describable Textures Dataset (banded ... crystalline), 120 each.",
    ),
    RealSet(
        name="imagenette",
        kind="objects",
        repo="thunderInfy/imagenette",
        commit="b850f030ff0701c36a4adc8b928ea9483a46915b",
        paths=("val",),
        label_rule="WordNet id of the folder holding the file (val/<wnid>/*.JPEG), mapped to its class name",
        classify=mapped_parent_folder(IMAGENETTE_CLASSES),
        licence="none stated (Imagenette, fast.ai, from ImageNet)",
        classes=10,
        images=3000,
        typical_size="224x224",
        source="Imagenette's validation images (10 easy ImageNet classes), resized to 224x224 by the uploader.",
    ),
    RealSet(
        name="chars74k",
        kind="characters",
        repo="rfstdh/100image",
        commit="eb4beb5e6b3a827dfddf52d436e98be859429d27",
        paths=("English/Img/GoodImg/Bmp",),
        label_rule="SampleNNN folder holding the file: 001-010 -> digits 0-9, 011-036 -> capitals A-Z",
        classify=mapped_parent_folder(CHARS74K_CLASSES),
        licence="none stated (Chars74K, de Campos et al. 2009)",
        classes=36,
        images=4997,
        typical_size="100x100",
        source="Chars74K 'GoodImg' characters cropped from street photos (digits and capitals), resized to 100x100.",
    ),
    # Rejected: kongwang01/MM_HW3 "dataset/ukbenchNNNNN.jpg" (485d6cf7) is not UKBench: the files are animal
    # photos (cats, monkeys, squirrels, ...) under UKBench's names, and NNNNN // 4 groups unrelated pictures
    # (frozen Lite0@128 scored mAP@100 0.035 with those labels, chance level). No real UKBench copy was found.
    RealSet(
        name="flowers5",
        kind="flowers",
        repo="martinwestin/flower_classification",
        commit="c169e7e4038bc0e0e2fe80090b6dc8919539816f",
        paths=("flowers",),
        label_rule="folder holding the file: flowers/<flower>/*.jpg",
        classify=parent_folder,
        licence="none stated (Kaggle 'Flowers Recognition', alxmamaev)",
        classes=5,
        images=1500,
        typical_size="128x128",
        held_out=True,
        source="Kaggle flowers-recognition photos (daisy, dandelion, rose, sunflower, tulip), resized to 128x128.",
    ),
)

BY_NAME: dict[str, RealSet] = {s.name: s for s in SETS}


def get(name: str) -> RealSet:
    """The set called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown set {name!r}; known: {', '.join(BY_NAME)}") from None


# --- where things are ---------------------------------------------------------------------------------


def default_root() -> Path:
    """``$LOOKALIKE_REAL_SETS`` when set, else ``/work/data/real``."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def set_root(name: str, root: str | os.PathLike[str] | None = None) -> Path | None:
    """The prepared folder of set ``name`` under ``root`` (default :func:`default_root`), or None.

    None when the folder is absent, or was not written by :func:`prepare` from the recorded commit.
    """
    spec = get(name)
    folder = Path(root) if root is not None else default_root()
    folder = folder / spec.name
    marker = _read_marker(folder)
    if marker is None or marker.get("name") != spec.name or marker.get("commit") != spec.commit:
        return None
    return folder


def find_mirror(repo: str, mirror_root: str | os.PathLike[str] = DEFAULT_MIRROR_ROOT) -> Path | None:
    """The git directory of ``repo``'s snapshot under ``mirror_root`` (``owner+name/repo[/.git]``), or None."""
    base = Path(mirror_root) / repo.replace("/", "+")
    for candidate in (base / "repo" / ".git", base / "repo", base / ".git", base):
        if (candidate / "objects").is_dir() and (candidate / "HEAD").is_file():
            return candidate
    return None


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


# --- reading a commit ----------------------------------------------------------------------------------


def _git(git_dir: Path, *args: str) -> bytes:
    result = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} failed in {git_dir}: {result.stderr.decode().strip()}")
    return result.stdout


def _tree_files(git_dir: Path, commit: str, paths: Sequence[str]) -> list[tuple[str, str]]:
    """``(blob id, path)`` of the image files under ``paths`` in ``commit``, in path order."""
    out = _git(git_dir, "ls-tree", "-r", "-z", "--full-tree", commit, "--", *paths)
    files = []
    for entry in out.split(b"\0"):
        if not entry:
            continue
        meta, path = entry.decode().split("\t", 1)
        _mode, kind, blob = meta.split()
        name = PurePosixPath(path).name
        if kind == "blob" and not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
            files.append((blob, path))
    return sorted(files, key=lambda f: f[1])


def _read_blobs(git_dir: Path, blobs: Sequence[str]) -> Iterable[bytes | None]:
    """The content of each blob, in order (None for a blob the snapshot lacks)."""
    with subprocess.Popen(
        ["git", f"--git-dir={git_dir}", "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        # one request at a time keeps both pipes from filling up whatever the blob sizes
        for blob in blobs:
            proc.stdin.write(blob.encode() + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) != 3 or header[1] != b"blob":
                yield None
                continue
            size = int(header[2])
            data = proc.stdout.read(size)
            proc.stdout.read(1)  # the newline after the content
            yield data
        proc.stdin.close()


def _sample(paths: Sequence[str], cap: int) -> list[str]:
    """``cap`` evenly spaced paths of the sorted ``paths`` (all of them when there are no more than ``cap``)."""
    n = len(paths)
    return list(paths) if n <= cap else [paths[i * n // cap] for i in range(cap)]


def per_class_cap(counts: Iterable[int], max_per_class: int = MAX_PER_CLASS, max_images: int = MAX_IMAGES) -> int:
    """The largest cap <= ``max_per_class`` with ``sum(min(n, cap)) <= max_images``."""
    counts = list(counts)
    cap = max_per_class
    while cap > 1 and sum(min(n, cap) for n in counts) > max_images:
        cap -= 1
    return cap


def plan(spec: RealSet, git_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Class -> sorted ``(blob, path)`` pairs that the prepared set holds (after sampling)."""
    by_class: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for blob, path in _tree_files(git_dir, spec.commit, spec.paths):
        label = spec.classify(path)
        if label:
            by_class[label].append((blob, path))
    if not by_class:
        raise LookupError(f"no image files under {', '.join(spec.paths)} in {spec.repo}@{spec.commit[:10]}")
    cap = per_class_cap(len(files) for files in by_class.values())
    chosen = {}
    for label in sorted(by_class):
        files = by_class[label]
        keep = set(_sample([p for _, p in files], cap))
        chosen[label] = [f for f in files if f[1] in keep]
    return chosen


def _out_names(files: Sequence[tuple[str, str]]) -> list[str]:
    """Base names, or the whole path joined with ``__`` for base names that occur twice in the class."""
    names = [PurePosixPath(p).name for _, p in files]
    seen = defaultdict(int)
    for n in names:
        seen[n.lower()] += 1
    return [n if seen[n.lower()] == 1 else p.replace("/", "__") for n, (_, p) in zip(names, files)]


def _as_image_file(data: bytes, name: str) -> tuple[bytes, str, bool]:
    """``(bytes, file name, converted)``: JPEG/PNG as they are, other image formats re-encoded as PNG."""
    if data.startswith(_JPEG_MAGIC) or data.startswith(_PNG_MAGIC):
        return data, name, False
    if data.startswith(_PNM_MAGIC):
        from PIL import Image  # only needed for sets stored as PPM/PGM

        buf = io.BytesIO()
        with Image.open(io.BytesIO(data)) as im:
            im.save(buf, format="PNG")
        return buf.getvalue(), str(PurePosixPath(name).with_suffix(".png")), True
    head = data[:40]
    what = "a Git LFS pointer" if head.startswith(b"version https://git-lfs") else f"not an image ({head[:8]!r})"
    raise ValueError(f"{name} is {what}")


# --- preparing ---------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """What :func:`prepare` wrote."""

    name: str
    folder: Path
    per_class: dict[str, int]
    converted: int
    skipped: list[str]

    @property
    def images(self) -> int:
        return sum(self.per_class.values())

    @property
    def classes(self) -> int:
        return len(self.per_class)


def prepare(name: str, mirror_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Prepared:
    """Rebuild the prepared folder ``out_dir`` (``out_dir/<class>/<file>``) of set ``name`` from its git snapshot.

    ``mirror_dir`` is the snapshot's git directory (or the ``owner+name`` folder ``fetch`` made). The folder
    is written next to ``out_dir`` and renamed into place, so a failed run leaves the old one; an existing
    ``out_dir`` is only replaced when it is empty or was written by this function.
    """
    spec = get(name)
    git_dir = _resolve_git_dir(Path(mirror_dir))
    if git_dir is None:
        raise FileNotFoundError(f"no git snapshot at {mirror_dir}: {spec.fetch_hint}")
    try:
        _git(git_dir, "cat-file", "-e", f"{spec.commit}^{{commit}}")
    except RuntimeError:
        raise LookupError(f"{spec.repo} snapshot at {git_dir} lacks commit {spec.commit}") from None
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and _read_marker(out) is None:
        raise FileExistsError(f"{out} exists and was not written by real_sets.prepare; not replacing it")

    chosen = plan(spec, git_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=out.parent))
    try:
        per_class, converted, skipped = {}, 0, []
        for label, files in chosen.items():
            (tmp / label).mkdir()
            written = 0
            blobs = [blob for blob, _ in files]
            for (_, path), fname, data in zip(files, _out_names(files), _read_blobs(git_dir, blobs)):
                if data is None:
                    skipped.append(f"{path} (blob absent from the snapshot)")
                    continue
                try:
                    data, fname, was_converted = _as_image_file(data, fname)
                except ValueError as exc:
                    skipped.append(str(exc))
                    continue
                (tmp / label / fname).write_bytes(data)
                converted += was_converted
                written += 1
            per_class[label] = written
        marker = {
            "name": spec.name,
            "repo": spec.repo,
            "commit": spec.commit,
            "paths": list(spec.paths),
            "classes": len(per_class),
            "images": sum(per_class.values()),
            "converted_to_png": converted,
            "skipped": skipped,
            "per_class": per_class,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Prepared(spec.name, out, per_class, converted, skipped)


def _resolve_git_dir(path: Path) -> Path | None:
    for candidate in (path, path / ".git", path / "repo" / ".git", path / "repo"):
        if (candidate / "objects").is_dir() and (candidate / "HEAD").is_file():
            return candidate
    return None


def verify(folder: Path) -> dict:
    """Decode every image of a prepared folder with Pillow; counts, failures and the median size."""
    from PIL import Image

    per_class, failures, sizes = {}, [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.iterdir() if p.is_file())
        per_class[class_dir.name] = len(files)
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    sizes.append(im.size)
            except Exception as exc:  # noqa: BLE001 - any decoding problem is a failure to report
                failures.append(f"{f}: {exc}")
    counts = list(per_class.values()) or [0]
    widths = [w for w, _ in sizes] or [0]
    heights = [h for _, h in sizes] or [0]
    return {
        "images": sum(counts),
        "classes": len(per_class),
        "min_per_class": min(counts),
        "max_per_class": max(counts),
        "median_size": f"{int(statistics.median(widths))}x{int(statistics.median(heights))}",
        "size_range": f"{min(widths)}-{max(widths)} x {min(heights)}-{max(heights)}",
        "failures": failures,
    }


# --- command line ------------------------------------------------------------------------------------------


def _status(spec: RealSet, root: Path) -> str:
    folder = root / spec.name
    marker = _read_marker(folder)
    if marker is None:
        return "absent" if not folder.exists() else "not prepared by this script"
    if marker.get("commit") != spec.commit:
        return f"stale (commit {str(marker.get('commit'))[:10]})"
    if (marker.get("classes"), marker.get("images")) != (spec.classes, spec.images):
        return f"prepared, but {marker.get('images')} images / {marker.get('classes')} classes"
    return "prepared"


def _cmd_list(args: argparse.Namespace) -> int:
    root = Path(args.root)
    rows = [("name", "kind", "split", "classes", "images", "size", "repo@commit", f"status under {root}")]
    for s in SETS:
        split = "held-out" if s.held_out else "dev"
        rows.append(
            (
                s.name,
                s.kind,
                split,
                str(s.classes),
                str(s.images),
                s.typical_size,
                f"{s.repo}@{s.commit[:10]}",
                _status(s, root),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _selected(names: Sequence[str]) -> list[RealSet]:
    return [get(n) for n in names] if names else list(SETS)


def _cmd_prepare(args: argparse.Namespace) -> int:
    root, status = Path(args.root), 0
    for spec in _selected(args.names):
        git_dir = find_mirror(spec.repo, args.mirror_root)
        if git_dir is None:
            print(f"{spec.name}: mirror absent under {args.mirror_root}: {spec.fetch_hint}")
            status = 1
            continue
        try:
            done = prepare(spec.name, git_dir, root / spec.name)
        except (LookupError, FileExistsError, RuntimeError, OSError) as exc:
            print(f"{spec.name}: failed: {exc}")
            status = 1
            continue
        counts = done.per_class.values()
        line = (
            f"{spec.name}: {done.images} images, {done.classes} classes "
            f"({min(counts)}-{max(counts)} per class) -> {done.folder}"
        )
        if done.converted:
            line += f"; {done.converted} converted to PNG"
        if done.skipped:
            line += f"; {len(done.skipped)} skipped (first: {done.skipped[0]})"
        if (done.images, done.classes) != (spec.images, spec.classes):
            line += f"; EXPECTED {spec.images} images, {spec.classes} classes"
            status = 1
        print(line)
    return status


def _cmd_verify(args: argparse.Namespace) -> int:
    root, status = Path(args.root), 0
    for spec in _selected(args.names):
        folder = set_root(spec.name, root)
        if folder is None:
            print(f"{spec.name}: not prepared under {root}")
            status = 1
            continue
        r = verify(folder)
        if r["failures"]:
            head = f"{spec.name}: {len(r['failures'])} of {r['images']} images FAIL (first: {r['failures'][0]})"
        else:
            head = f"{spec.name}: all {r['images']} images decode"
        print(
            f"{head} | {r['classes']} classes, {r['min_per_class']}-{r['max_per_class']} per class"
            f" | median {r['median_size']} (range {r['size_range']})"
        )
        if r["failures"] or (r["images"], r["classes"]) != (spec.images, spec.classes):
            status = 1
    return int(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=str(default_root()),
        help=f"folder of the prepared sets (default: ${ROOT_ENV} or {DEFAULT_ROOT})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="table of the sets and whether each is prepared under --root")
    p = sub.add_parser("prepare", help="(re)build prepared sets from their git snapshots")
    p.add_argument("names", nargs="*", help="sets to prepare (default: all)")
    p.add_argument("--mirror-root", default=DEFAULT_MIRROR_ROOT, help="where fetch put the snapshots")
    v = sub.add_parser("verify", help="decode every prepared image with Pillow and summarise")
    v.add_argument("names", nargs="*", help="sets to verify (default: all)")
    for sp in (ls, p, v):  # --root is accepted after the command too
        sp.add_argument("--root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return {"list": _cmd_list, "prepare": _cmd_prepare, "verify": _cmd_verify}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
