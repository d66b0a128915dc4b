"""``train`` and ``index`` (what learns and what is indexed), ``add`` and ``remove``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress

from ..errors import LookalikeError, display_path
from ._shell import (
    DEFAULT_INDEX_SUBDIR,
    DEFAULT_SPEC,
    MODEL_SUBDIR,
    PRESET_NAMES,
    ConsoleCallbacks,
    _choose_spec,
    _progress,
    _resolve_index_dir,
    _show_path,
    app,
    console,
    handles_errors,
)


# ---------------------------------------------------------------------------------------- train
@app.command()
@handles_errors
def train(
    folder: Annotated[Path, typer.Argument(help="Folder of images, searched recursively.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help=f"Model directory to write (default: FOLDER/{MODEL_SUBDIR}).")
    ] = None,
    extractor: Annotated[
        str | None,
        typer.Option(
            "--extractor",
            "-e",
            help=f"What to learn: NAME+adapted (a head on a pretrained extractor; default {DEFAULT_SPEC}) or "
            "autoencoder (from scratch; implied by --preset and --resume).",
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help=f"Autoencoder recipe: {', '.join(PRESET_NAMES)} (trains the autoencoder).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Passes over the images (default: the preset's, or the head's).")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            help="Square input size in pixels (default: chosen from the images: 160 or 128 px for a "
            "pretrained extractor, 32 or 64 for the autoencoder)."
        ),
    ] = None,
    latent_dim: Annotated[int | None, typer.Option(help="Embedding size (autoencoder presets that have one).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per optimiser step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (autoencoder).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the split, the weights and the batch order.")] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Share of images held out for validation (autoencoder).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (cuda when present, else cpu), cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="Processes decoding images.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT/checkpoint.pt (autoencoder).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a model already in OUTPUT.")] = False,
) -> None:
    """Learn what FOLDER's images look like and write the model directory (config.json + model.safetensors).

    By default a head is learned on ImageNet features (efficientnet-lite0+adapted): each image and two
    augmented views of it are embedded, and an autoencoder over those features with an invariance loss is
    trained on them, blended with the backbone's own similarity. --preset (or -e autoencoder) trains the
    from-scratch convolutional autoencoder instead, which also writes checkpoint.pt (to --resume),
    loss.png (train/validation loss) and reconstructions/epoch_NNN.png.
    """
    from ..models.spec import parse_spec, resolve_model
    from ..training import check_output_dir
    from ..training import train as train_model

    out = output if output is not None else Path(folder) / MODEL_SUBDIR
    implied = "autoencoder" if preset is not None or resume else None  # only the autoencoder has recipes, checkpoints
    spec = parse_spec(extractor if extractor is not None else implied)
    if preset is not None and not spec.is_autoencoder:
        raise LookalikeError(f"--preset is an autoencoder recipe; it does not apply to --extractor {spec.text}")
    if not spec.is_autoencoder:
        only = {"--latent-dim": latent_dim, "--lr": lr, "--val-fraction": val_fraction}
        given = [name for name, value in only.items() if value is not None] + (["--resume"] if resume else [])
        if given:
            raise LookalikeError(f"{', '.join(given)}: options of the autoencoder; add -e autoencoder to train it")
        if not spec.learns:
            raise LookalikeError(f"{spec.text} learns nothing: train NAME+adapted or the autoencoder")
    with _progress() as progress:
        callbacks = ConsoleCallbacks(progress)
        if spec.is_autoencoder:
            model = train_model(
                folder, out, preset=preset or "default", epochs=epochs, image_size=image_size, latent_dim=latent_dim,
                batch_size=batch_size, lr=lr, seed=seed, device=device, val_fraction=val_fraction,
                num_workers=workers, resume=resume, overwrite=overwrite, callbacks=[callbacks],
            )  # fmt: skip
        else:
            check_output_dir(out, resume=False, overwrite=overwrite)
            model = resolve_model(spec, folder, image_size=image_size, epochs=epochs, batch_size=batch_size, seed=seed,
                                  num_workers=workers, device=device, callbacks=[callbacks])  # fmt: skip
            model.save(out)
    skipped = len(callbacks.skipped)
    console.print(
        f"model written to [bold]{escape(display_path(_show_path(out)))}[/] ({model.describe()})"
        + (f"; skipped {skipped} file{'s' if skipped != 1 else ''}" if skipped else ""),
        highlight=False,
    )
    if spec.is_autoencoder:
        console.print(f"loss curve: {_show_path(Path(out) / 'loss.png')}", highlight=False)
    console.print(f"use it: lookalike index {_show_path(folder)} -m {_show_path(out)}", highlight=False)


# ---------------------------------------------------------------------------------------- index
EXTRACTOR_HELP = (
    f"What embeds the images (default: an existing index's own model, else {DEFAULT_SPEC} learned on FOLDER "
    "first): NAME+adapted (ImageNet features with a head learned on FOLDER's own images), "
    "efficientnet-lite0 or efficientnet-lite2 (frozen ImageNet features), autoencoder (from scratch, trained on "
    "FOLDER), vgg16-fc1 (VGG16's fc1 features, as in the Keras tutorial; 528 MB download or --weights), pixels "
    "(the raw-pixel floor), a name given to lookalike.register_extractor, or auto (the pick of the last "
    "`lookalike compare` on FOLDER, or of a quick one). NAME@SIZE sets the input size."
)


@app.command()
@handles_errors
def index(
    folder: Annotated[Path, typer.Argument(help="Folder of images, searched recursively.")],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m", help="Model directory (from `lookalike train`); without it the default is learned first."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help=f"Index directory (default: FOLDER/{DEFAULT_INDEX_SUBDIR}).")
    ] = None,
    extractor: Annotated[str | None, typer.Option("--extractor", "-e", help=EXTRACTOR_HELP)] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            help="Input size of a pretrained extractor, in pixels (default: 128 frozen; with a learned head "
            "160 for photos, 128 for smaller images)."
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="Weights file (.safetensors or .pth) for a pretrained extractor (default: installed ones)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs of the head or autoencoder learned first.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    workers: Annotated[int, typer.Option(help="Processes decoding images.")] = 1,
    precision: Annotated[
        str, typer.Option(help="Encoder precision: auto (bf16 on CPUs with native bfloat16, else fp32), fp32, bf16.")
    ] = "auto",
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Start over: re-embed everything (the old index stays until done).")
    ] = False,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Search structure: exact (brute force), hnsw (graph, fast, memory ~ vectors), ivfpq (compressed, "
            "least memory), or auto (exact below 100,000 images, hnsw below 2,000,000, else ivfpq). Default: "
            "the index's current one, auto for a new index. Rebuilt and saved after every update.",
        ),
    ] = None,
    shard_size: Annotated[
        int, typer.Option(help="Vectors per shard file and per commit (what an interrupted run can lose).", min=1)
    ] = 4096,
    follow_symlinks: Annotated[
        bool | None,
        typer.Option(
            "--follow-symlinks/--no-follow-symlinks",
            help="Index symbolic links to files outside FOLDER too (by default they are skipped and reported; "
            "links inside FOLDER are always followed). The server then serves those files. Default: the "
            "index's own choice, off for a new index.",
        ),
    ] = None,
) -> None:
    """Embed every image in FOLDER and write a searchable index, or bring an existing one up to date.

    The embeddings come from --model, from --extractor, or (neither given) from the default: ImageNet
    features (efficientnet-lite0) with a head learned on FOLDER's images first; an existing index keeps
    its own model, saved in the index. When the output already
    holds an index of FOLDER, only new or changed files are embedded, deleted ones removed and moved or
    renamed ones recognised by content hash. Vectors are committed in shards as they are embedded, so an
    interrupted run continues where it stopped when run again. Unreadable files are skipped and reported,
    one line each, with a count at the end: not images, unsupported formats, corrupt or truncated files,
    files over 256 MiB or images over 64 megapixels, FIFOs and devices, broken links, and links to files
    outside FOLDER (see --follow-symlinks). Hidden files and folders are left out.
    """
    from ..models.spec import resolve_model
    from ..search import check_index_target, update_index

    out = output if output is not None else Path(folder) / DEFAULT_INDEX_SUBDIR
    t0 = time.perf_counter()
    check_index_target(out)  # before any training
    with _progress() as progress:
        callbacks = [ConsoleCallbacks(progress)]
        spec = _choose_spec(folder, model=model, extractor=extractor, progress=progress)
        the_model = spec  # None or a spec that learns: an index of FOLDER keeps its model (nothing is learned again)
        options = image_size is not None or weights is not None or epochs is not None
        if options or (spec is not None and not spec.learns):
            the_model = resolve_model(spec, folder, image_size=image_size, weights=weights, epochs=epochs,
                                      num_workers=workers, callbacks=callbacks)  # fmt: skip
        summary = update_index(
            folder, the_model, out, rebuild=rebuild, batch_size=batch_size, num_workers=workers, precision=precision,
            shard_size=shard_size, follow_symlinks=follow_symlinks, callbacks=callbacks,
        )  # fmt: skip
        chosen = _save_backend(out, backend, summary.count, progress)
    _print_summary(summary, out, time.perf_counter() - t0)
    if chosen is not None:
        console.print(f"search backend: {chosen}", highlight=False)


def _save_backend(out: Path, backend: str | None, count: int, progress: Progress) -> str | None:
    """Build and save the index's search structure when one is asked for, or when the saved one is stale."""
    from ..index.ann import EXACT_MAX
    from ..search import ANN_SUBDIR, BACKEND_CHOICES, Index
    from ..serialization import read_json

    if backend is not None and backend not in BACKEND_CHOICES:
        raise LookalikeError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    current = read_json(out / "manifest.json", "index manifest").get("backend", "exact")
    wanted = backend or (current if current != "exact" else "auto")
    if wanted in ("auto", "exact") and count < EXACT_MAX and current == "exact" and not (out / ANN_SUBDIR).exists():
        return None  # small and exact: nothing to build
    task = progress.add_task("search structure", total=None, info="")
    idx = Index.load(out)
    chosen = idx.use_backend(wanted)
    idx.save_backend()
    progress.update(task, total=1, completed=1, info=chosen)
    return chosen


def _print_summary(summary: Any, out: Path, seconds: float) -> None:
    skipped = summary.skipped
    console.print(
        f"indexed [bold]{summary.count:,}[/] images into [bold]{escape(display_path(_show_path(out)))}[/] in "
        f"{seconds:.1f} s" + (f"; skipped {skipped} file{'s' if skipped != 1 else ''}" if skipped else ""),
        highlight=False,
    )
    what = "new index" if summary.rebuilt else "updated"
    console.print(f"{what}: {summary.describe()} ({summary.embedded:,} embedded)", highlight=False)
    from ..store import MODEL_SUBDIR as INDEX_MODEL

    try:  # the model the index embeds with (learned here, or kept from before): say where it is and what
        config = json.loads((out / INDEX_MODEL / "config.json").read_text())
        arch = config.get("architecture", {})
        name = arch.get("backbone", "") + (f"+{arch['head']['name']}" if arch.get("head") else "") or "autoencoder"
        size = config.get("preprocessing", {}).get("image_size")
        console.print(f"model: {escape(display_path(_show_path(out / INDEX_MODEL)))} ({name}, {size} px, "
                      f"{config.get('embedding_dim')}-d)", highlight=False)  # fmt: skip
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # an index written without a model copy (never by `index`): nothing to point at


@app.command()
@handles_errors
def add(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder holding .lookalike).")],
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders inside the indexed folder.")],
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    workers: Annotated[int, typer.Option(help="Processes decoding images.")] = 1,
) -> None:
    """Add (or re-index, when changed) image files or folders to an index, with its own model."""
    from ..search import Index

    t0 = time.perf_counter()
    idx = Index.load(_resolve_index_dir(index_dir))
    with _progress() as progress:
        summary = idx.add(paths, batch_size=batch_size, num_workers=workers, callbacks=[ConsoleCallbacks(progress)])
    _print_summary(summary, idx.directory, time.perf_counter() - t0)


@app.command()
@handles_errors
def remove(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder holding .lookalike).")],
    paths: Annotated[
        list[Path], typer.Argument(help="Indexed files or folders (they need not exist any more); no file is deleted.")
    ],
) -> None:
    """Remove images (or every image under a folder) from an index; the files themselves are left alone."""
    from ..search import Index

    t0 = time.perf_counter()
    idx = Index.load(_resolve_index_dir(index_dir))
    summary = idx.remove(paths)
    _print_summary(summary, idx.directory, time.perf_counter() - t0)
