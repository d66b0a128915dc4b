"""The ``lookalike`` command line: a thin shell over the Python API.

This is the only module that prints tables and progress bars or parses arguments. Every user-facing
problem ends in one line on stderr (``error: <file>: <reason>``) and exit code 1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .errors import LookalikeError, display_path

app = typer.Typer(
    name="lookalike",
    help="Learn what a folder of images looks like, index it, and find lookalikes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
datasets_app = typer.Typer(help="Built-in datasets: list them, export them as class folders of images.")
app.add_typer(datasets_app, name="datasets")

console = Console(soft_wrap=True)  # a long line is left to the terminal to wrap: paths stay whole when copied
err_console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_INDEX_SUBDIR = ".lookalike"  # where `lookalike index FOLDER` puts the index without -o
DEFAULT_SPEC = "efficientnet-lite0+adapted"  # lookalike.models.spec.DEFAULT, without importing torch (tested equal)
MODEL_SUBDIR = ".lookalike-model"  # where `lookalike train FOLDER` puts the model without -o
PRESET_NAMES = ("default", "denoising", "cifar-seed", "mnist-seed", "dense-latent", "folder-seed")


def _fail(message: str) -> typer.Exit:
    # escape: messages carry file names and hints such as lookalike[serve], never rich markup
    err_console.print(f"[bold red]error:[/] {escape(display_path(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def handles_errors(fn: F) -> F:
    """Turn LookalikeError (and Ctrl-C) into one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LookalikeError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:  # a file system refusal the library did not word itself: still one line
            where = exc.filename if exc.filename is not None else "lookalike"
            raise _fail(f"{display_path(where)}: {exc.strerror or exc}") from None
        except KeyboardInterrupt:
            raise _fail("interrupted; anything already saved is unchanged") from None

    return wrapper  # type: ignore[return-value]


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens in detail.")] = False,
) -> None:
    _configure_logging(verbose)


# ------------------------------------------------------------------------------------- progress
@contextlib.contextmanager
def _progress() -> Iterator[Progress]:
    """Progress bars on stderr that stay on success and vanish on an error (leaving one error line)."""
    progress = _make_progress()
    with progress:
        try:
            yield progress
        except BaseException:
            progress.live.transient = True
            raise


def _make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


class ConsoleCallbacks:
    """Progress bars and skip reports for training, decoding and embedding."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.skipped: set[Path] = set()  # reported once, though training and indexing both read the files

    def _task(self, name: str, total: int | None, description: str) -> Any:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(description, total=total, info="")
        return self.tasks[name]

    def on_skip(self, path: Path, reason: str) -> None:
        if path in self.skipped:
            return
        self.skipped.add(path)
        line = escape(display_path(f"{path}: {reason}"))  # names may hold newlines, bytes or [markup]
        self.progress.console.print(f"[yellow]skipped[/] {line}", highlight=False, soft_wrap=True)

    def on_decode(self, done: int, total: int) -> None:
        self.progress.update(self._task("decode", total, "decoding"), completed=done)

    def on_embed(self, done: int, total: int) -> None:
        task = self._task("embed", total, "embedding")
        elapsed = next((t.elapsed for t in self.progress.tasks if t.id == task), None) or 0.0
        rate = f"{done / elapsed:,.0f} img/s" if elapsed > 0 else ""
        self.progress.update(task, completed=done, info=rate)

    def on_evaluate(self, done: int, total: int) -> None:
        self.progress.update(self._task("evaluate", total, "ranking queries"), completed=done)

    def on_train_start(self, model: Any, start_epoch: int, epochs: int, steps: int) -> None:
        self.steps = steps
        self.progress.console.print(f"training {model.describe()}", highlight=False)
        task = self._task("train", epochs * steps, "training")
        self.progress.update(task, completed=start_epoch * steps)

    def on_step(self, epoch: int, step: int, loss: float, images_per_s: float) -> None:
        task = self.tasks["train"]
        info = f"epoch {epoch} loss {loss:.4f} {images_per_s:,.0f} img/s"
        self.progress.update(task, completed=(epoch - 1) * self.steps + step, info=info)

    def on_compare_row(self, name: str, i: int, n: int) -> None:
        for task in self.tasks.values():  # each extractor gets fresh bars
            self.progress.remove_task(task)
        self.tasks.clear()
        self.progress.console.print(f"[bold]{i + 1}/{n}[/] {escape(name)}", highlight=False)

    def on_note(self, text: str) -> None:
        self.progress.console.print(escape(text), highlight=False)

    def on_adapt(self, epoch: int, epochs: int, loss: float) -> None:
        task = self._task("adapt", epochs, "fitting head")
        self.progress.update(task, completed=epoch, info=f"loss {loss:.4f}")

    def on_epoch_end(self, stats: Any) -> None:
        val = f", validation {stats.val_loss:.4f}" if stats.val_loss is not None else ""
        self.progress.console.print(
            f"epoch {stats.epoch}: train loss {stats.train_loss:.4f}{val} "
            f"({stats.seconds:.1f} s, {stats.images_per_s:,.0f} img/s)",
            highlight=False,
        )


def _show_path(path: Path | str) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


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
    from .models.spec import parse_spec, resolve_model
    from .training import check_output_dir
    from .training import train as train_model

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


def _choose_spec(folder: Path, *, model: Path | None, extractor: str | None, progress: Progress) -> Any:
    """The extractor spec `index` (and a folder given to `search`/`evaluate`) embeds with; None when neither
    option is given (an existing index's own model, else the default trained first)."""
    from .models.spec import parse_spec

    if model is not None:
        if extractor is not None:
            raise LookalikeError(f"--model is a trained model; it cannot be combined with --extractor {extractor}")
        return parse_spec(model)
    if extractor == "auto":
        from .comparison import recommended_extractor

        extractor, why = recommended_extractor(folder)
        progress.console.print(f"--extractor auto: using {escape(extractor)} ({escape(why)})", highlight=False)
    return None if extractor is None else parse_spec(extractor)


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
    from .models.spec import resolve_model
    from .search import check_index_target, update_index

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
    from .index.ann import EXACT_MAX
    from .search import ANN_SUBDIR, BACKEND_CHOICES, Index
    from .serialization import read_json

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


@app.command()
@handles_errors
def add(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder holding .lookalike).")],
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders inside the indexed folder.")],
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    workers: Annotated[int, typer.Option(help="Processes decoding images.")] = 1,
) -> None:
    """Add (or re-index, when changed) image files or folders to an index, with its own model."""
    from .search import Index

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
    from .search import Index

    t0 = time.perf_counter()
    idx = Index.load(_resolve_index_dir(index_dir))
    summary = idx.remove(paths)
    _print_summary(summary, idx.directory, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------- search
def _resolve_index_dir(path: Path) -> Path:
    from .search import is_index_dir

    if not is_index_dir(path) and is_index_dir(path / DEFAULT_INDEX_SUBDIR):
        return path / DEFAULT_INDEX_SUBDIR
    return path


MODEL_CHECK_HELP = "Model directory: checked against the index's own, or used to embed a plain folder."
FOLDER_EXTRACTOR_HELP = (
    "Search a plain folder of images (not an index) with this extractor, embedded in memory: "
    "efficientnet-lite0, efficientnet-lite2, vgg16-fc1 or a registered name. With an index, checks that it "
    "was built with this extractor."
)


def _open_index(
    path: Path,
    *,
    model: Path | None,
    extractor: str | None,
    image_size: int | None,
    weights: Path | None,
    workers: int = 1,
) -> Any:
    """An index directory loaded, or a plain folder embedded in memory with --extractor / --model."""
    from .search import Index, is_index_dir

    resolved = _resolve_index_dir(path)
    if is_index_dir(resolved):
        idx = Index.load(resolved, model=model)
        built_with = idx.model.extractor
        if extractor not in (None, "auto") and built_with.split("+")[0] != extractor:
            raise LookalikeError(
                f"{path}: index was built with {built_with}, not {extractor} "
                f"(rebuild it with lookalike index --extractor {extractor})"
            )
        if image_size is not None or weights is not None:
            raise LookalikeError(f"{path}: an index's model fixes the input size and weights")
        return idx
    if extractor is None and model is None:
        return Index.load(resolved)  # the error says it is not an index
    from .models.spec import resolve_model

    with _progress() as progress:
        callbacks = [ConsoleCallbacks(progress)]
        spec = _choose_spec(path, model=model, extractor=extractor, progress=progress)
        chosen = resolve_model(spec, path, image_size=image_size, weights=weights, num_workers=workers,
                               callbacks=callbacks)  # fmt: skip
        return Index.build(path, chosen, None, num_workers=workers, callbacks=callbacks)


def _parse_query(text: str) -> str | int:
    if not Path(text).exists() and text.isdigit():
        return int(text)
    if not Path(text).exists():
        raise LookalikeError(f"{text}: no such file, and not an indexed id")
    return text


def _hits_table(title: str, hits: list, metric: str) -> Table:
    table = Table(title=title, title_justify="left", highlight=False)
    table.add_column("rank", justify="right")
    table.add_column("similarity" if metric == "cosine" else "distance", justify="right")
    table.add_column("id", justify="right")
    table.add_column("path")
    has_labels = any(h.label for h in hits)
    if has_labels:
        table.add_column("label")
    for h in hits:
        row = [str(h.rank), f"{h.score:.4f}", str(h.id), _show_path(h.path)]
        table.add_row(*row, *([h.label or ""] if has_labels else []))
    return table


def _plot_results(
    idx: Any,
    queries: list,
    results: list[list],
    path: Path,
    metric: str,
    *,
    labels: dict[int, str] | None = None,
    query_labels: list | None = None,
    title: str | None = None,
) -> Path:
    """A grid of each query (an id or an image file) and its hits, framed green/red when the labels agree.

    ``labels`` (id -> label) overrides the catalog's labels of the hits; ``query_labels`` gives the
    queries' labels (by default an indexed query's catalog label, none for a file).
    """
    from .data import thumbnail
    from .plots import result_grid

    size = 96
    if labels is None:
        labels = idx.entries.labels()
    if query_labels is None:
        query_labels = [labels.get(q) if isinstance(q, int) else None for q in queries]
    rows = []
    for q, qlabel, hits in zip(queries, query_labels, results):
        if isinstance(q, int):
            qimg, qcap = idx.thumbnail(q, size), f"query #{q}\n{qlabel or ''}".strip()
        else:
            qimg = thumbnail(q, idx.model.preprocessing.channels, size)
            qcap = f"query\n{qlabel}" if qlabel is not None else f"query\n{Path(q).name}"
        cells = [
            (
                idx.thumbnail(h.id, size),
                f"#{h.rank}  {h.score:.3f}\n{labels.get(h.id) or h.path.name}",
                None if qlabel is None or labels.get(h.id) is None else labels[h.id] == qlabel,
            )
            for h in hits
        ]
        rows.append((qimg, qcap, cells))
    if title is None:
        what = "cosine similarity" if metric == "cosine" else "euclidean distance"
        title = f"query (left, blue) and its {len(results[0])} nearest images, {what}"
        if any(lab is not None for lab in query_labels):
            title += "; green/red: same/other folder than the query"
    return result_grid(rows, path, title=title)


@app.command()
@handles_errors
def search(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder indexed without -o).")],
    queries: Annotated[list[str], typer.Argument(help="Image files, or ids of indexed images.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Results per query.")] = 10,
    metric: Annotated[
        str, typer.Option(help="cosine (similarity, higher is closer) or euclidean (distance, lower is closer).")
    ] = "cosine",
    exclude_self: Annotated[bool, typer.Option("--exclude-self", help="Leave out the query's own entry.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of each query and its results.")] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_CHECK_HELP)] = None,
    extractor: Annotated[str | None, typer.Option("--extractor", "-e", help=FOLDER_EXTRACTOR_HELP)] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size of a pretrained --extractor.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights file for a pretrained --extractor.")] = None,
) -> None:
    """Find the indexed images most like each QUERY.

    A query is prepared exactly as the model's training images were (the preprocessing is read from the
    model). Scores are cosine similarities of L2-normalised embeddings, or euclidean distances of the raw
    embeddings with --metric euclidean. INDEX_DIR may also be a plain folder of images with --extractor
    (or --model): it is then embedded in memory first, nothing is written.
    """
    if metric not in ("cosine", "euclidean"):
        raise LookalikeError(f"--metric must be cosine or euclidean, got {metric!r}")
    if k < 1:
        raise LookalikeError(f"-k must be at least 1, got {k}")
    idx = _open_index(index_dir, model=model, extractor=extractor, image_size=image_size, weights=weights)
    parsed = [_parse_query(q) for q in queries]
    results = idx.search_batch(parsed, k, metric=metric, exclude_self=exclude_self)
    if as_json:
        payload = [{"query": q, "hits": [h.to_dict() for h in hits]} for q, hits in zip(queries, results)]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        for q, hits in zip(queries, results):
            console.print(_hits_table(f"query: {q}", hits, metric))
    if plot is not None:
        written = _plot_results(idx, parsed, results, plot, metric)
        (err_console if as_json else console).print(f"picture written to {_show_path(written)}", highlight=False)


# ------------------------------------------------------------------------------------- evaluate
EXAMPLE_RESULTS = 8  # results per query in examples.png


def _metrics_table(result: Any) -> Table:
    table = Table(title="retrieval quality (relevant = same label)", title_justify="left", highlight=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(f"mAP@{result.map_k}", f"{result.map_at_k:.4f}")
    table.add_row("mAP (whole ranking)", f"{result.mean_average_precision:.4f}")
    for k, v in result.precision_at_k.items():
        table.add_row(f"precision@{k}", f"{v:.4f}")
    for k, v in result.recall_at_k.items():
        table.add_row(f"recall@{k}", f"{v:.4f}")
    table.add_row(f"{result.knn_k}-NN accuracy", f"{result.knn_accuracy:.4f}")
    table.add_row("chance precision (random ranking)", f"{result.chance_precision:.4f}")
    return table


def _example_queries(result: Any, n: int) -> list[int]:
    """Up to ``n`` evaluated query rows, evenly spread from the worst average precision to the best."""
    import numpy as np

    ap = result.query_average_precision
    rows = np.flatnonzero(~np.isnan(ap))
    rows = rows[np.argsort(ap[rows], kind="stable")]
    if len(rows) <= n:
        return rows.tolist()
    return rows[np.linspace(0, len(rows) - 1, n).round().astype(int)].tolist()


def _write_evaluation_plots(idx: Any, result: Any, plot_dir: Path, labels: Path | None, examples: int) -> list[Path]:
    from .plots import precision_at_k_curve

    name = f"{result.info['model']['preset']} {result.info['model']['fingerprint'][:8]}"
    written = [precision_at_k_curve({name: result}, plot_dir / "precision_at_k.png", title=f"{result.metric} ranking")]
    picks = _example_queries(result, examples)
    if picks:
        queries = [result.query_keys[i] for i in picks]
        leave_one_out = result.info["queries"] == "leave-one-out"
        found = idx.search_batch(
            queries if leave_one_out else [str(q) for q in queries],
            EXAMPLE_RESULTS,
            metric=result.metric,
            exclude_self=leave_one_out,
        )
        title = (
            f"queries (left, blue) from worst to best average precision and their {EXAMPLE_RESULTS} nearest "
            f"images; green/red: same/other label"
        )
        written.append(
            _plot_results(
                idx,
                queries,
                found,
                plot_dir / "examples.png",
                result.metric,
                labels=idx.labels(labels),
                query_labels=[result.query_labels[i] for i in picks],
                title=title,
            )
        )
    return written


@app.command()
@handles_errors
def evaluate(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder indexed without -o).")],
    queries: Annotated[
        Path | None,
        typer.Option(
            "--queries",
            "-q",
            help="Folder of query images (a second split), searched against the whole index. "
            "Default: leave-one-out over the index (each labelled indexed image is a query, its own entry left out).",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CSV/TSV file of path,label rows (header optional; paths absolute or relative to the indexed "
            "folder or to --queries). Default: each image's sub-folder is its label.",
        ),
    ] = None,
    map_at: Annotated[int, typer.Option("--map-at", "-k", help="The k of mAP@k.")] = 1000,
    knn: Annotated[int, typer.Option("--knn", help="Neighbours in the k-NN majority vote.")] = 20,
    metric: Annotated[
        str, typer.Option(help="cosine (similarity, higher is closer) or euclidean (distance, lower is closer).")
    ] = "cosine",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write every metric to this JSON file.")] = None,
    plot_dir: Annotated[
        Path | None,
        typer.Option(
            help="Write precision_at_k.png and examples.png (queries from worst to best, wrong results in red) "
            "into this folder. Default: no pictures; nothing is ever written into the index."
        ),
    ] = None,
    examples: Annotated[int, typer.Option(help="Queries shown in examples.png.")] = 6,
    batch_size: Annotated[int, typer.Option(help="Query images per forward pass.")] = 256,
    workers: Annotated[int, typer.Option(help="Processes decoding query images.")] = 1,
    model: Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_CHECK_HELP)] = None,
    extractor: Annotated[str | None, typer.Option("--extractor", "-e", help=FOLDER_EXTRACTOR_HELP)] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size of a pretrained --extractor.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights file for a pretrained --extractor.")] = None,
) -> None:
    """Measure how well the index finds images with the query's label.

    Prints mAP@k (average precision over the first k results, normalised by the relevant results among
    them), mAP over the whole ranking, precision@k and recall@k for k = 1, 5, 10, 20, 100, 1000, the
    k-NN majority-vote accuracy and the chance precision of a random ranking. Queries whose label has no
    other image in the index are skipped and counted; unlabelled images are left out and counted.
    INDEX_DIR may also be a plain folder of images with --extractor (or --model): it is embedded in memory
    first, nothing is written. To compare several extractors on the same images, use `lookalike compare`.
    """
    from .metrics import DEFAULT_KS, check_options

    t0 = time.perf_counter()
    check_options(DEFAULT_KS, map_at, knn, metric)
    if json_out is not None and json_out.is_dir():
        raise LookalikeError(f"{json_out}: is a folder; --json takes a file name")
    if plot_dir is not None and plot_dir.exists() and not plot_dir.is_dir():
        raise LookalikeError(f"{plot_dir}: is not a folder; --plot-dir takes one")
    idx = _open_index(
        index_dir, model=model, extractor=extractor, image_size=image_size, weights=weights, workers=workers
    )
    with _progress() as progress:
        result = idx.evaluate(
            queries, labels=labels, map_at=map_at, knn_k=knn, metric=metric, batch_size=batch_size,
            num_workers=workers, callbacks=[ConsoleCallbacks(progress)],
        )  # fmt: skip
    console.print(_metrics_table(result))
    source = (
        f"leave-one-out over {result.n_database:,} labelled indexed images"
        if queries is None
        else f"query images from {_show_path(queries)} against {result.n_database:,} labelled indexed images"
    )
    console.print(
        f"{result.n_evaluated:,} queries, {source}, {metric} ranking ({time.perf_counter() - t0:.1f} s)",
        highlight=False,
    )
    info = result.info
    notes = (
        (result.n_no_relevant, "skipped {}: no other indexed image has the same label", "query", "queries"),
        (info.get("n_database_unlabelled", 0), "left out {} without a label", "indexed image", "indexed images"),
        (info.get("n_queries_unlabelled", 0), "left out {} without a label", "query image", "query images"),
        (info.get("n_queries_unreadable", 0), "skipped {}", "unreadable query image", "unreadable query images"),
    )
    for n, text, one, many in notes:
        if n:
            console.print(text.format(f"{n:,} {one if n == 1 else many}"), highlight=False)
    try:
        if json_out is not None:
            from .serialization import atomic_write_json

            atomic_write_json(json_out, result.to_dict())
            console.print(f"metrics written to {_show_path(json_out)}", highlight=False)
        if plot_dir is not None:
            for written in _write_evaluation_plots(idx, result, plot_dir, labels, examples):
                console.print(f"picture written to {_show_path(written)}", highlight=False)
    except OSError as exc:
        raise LookalikeError(f"{exc.filename or json_out or plot_dir}: cannot write ({exc.strerror or exc})") from None


# -------------------------------------------------------------------------------------- compare
@app.command()
@handles_errors
def compare(
    folder: Annotated[Path, typer.Argument(help="Folder of labelled images (one sub-folder per label, or --labels).")],
    labels: Annotated[
        Path | None, typer.Option(help="CSV/TSV file of path,label rows, instead of the sub-folder names.")
    ] = None,
    extractors: Annotated[
        str | None,
        typer.Option(
            "--extractors",
            "-e",
            help="Comma-separated rows to compare: autoencoder, pixels, efficientnet-lite0, efficientnet-lite2, "
            "vgg16-fc1 or a registered name; NAME@SIZE picks the input size, NAME+adapted adds a head fitted on "
            "the database images. Default: autoencoder, pixels, and every installed pretrained extractor with "
            "its adapted variant.",
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Autoencoder to use; default: train one on FOLDER first.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs when training the autoencoder here.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size of pretrained extractors without @SIZE.")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Folder for report.html, compare.json, the plot and trained models (default: ./compare-FOLDERNAME).",
        ),  # fmt: skip
    ] = None,
    query_fraction: Annotated[float, typer.Option(help="Share of each label's images used as queries.")] = 0.2,
    max_queries: Annotated[int, typer.Option(help="At most this many queries in all.")] = 1000,
    map_at: Annotated[int, typer.Option("--map-at", "-k", help="The k of mAP@k, the headline metric.")] = 100,
    knn: Annotated[int, typer.Option("--knn", help="Neighbours in the k-NN majority vote.")] = 20,
    seed: Annotated[int, typer.Option(help="Seeds the query split, training and the bootstrap.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes decoding images.")] = 1,
) -> None:
    """Find out which extractor retrieves best on your own labelled images.

    Every extractor embeds the same images; a stratified share of them are queries searched against the
    rest (relevant = same label). Prints mAP@k, precision@1/10, k-NN accuracy, embedding time per image
    and vector size per extractor, and a recommendation with its margin and whether it is significant (a
    paired bootstrap over the queries). Writes an offline HTML report with the plots and, for the queries
    the extractors disagree on most, each one's top results side by side. Labels are used only to score:
    the autoencoder and the adapted heads never see them (heads are fitted on the database images only).
    The winner is remembered, so `lookalike index FOLDER --extractor auto` uses it.
    """
    from .comparison import compare as run_compare
    from .comparison import remember, write_report

    names = [n.strip() for n in extractors.split(",") if n.strip()] if extractors else None
    if names is not None and not names:
        raise LookalikeError("--extractors is empty")
    out = output if output is not None else Path(f"compare-{Path(folder).expanduser().resolve().name}")
    if out.exists() and not out.is_dir():
        raise LookalikeError(f"{out}: is not a folder; --output takes one")
    t0 = time.perf_counter()
    with _progress() as progress:
        result = run_compare(
            folder, labels=labels, extractors=names, model=model, epochs=epochs, image_size=image_size, out_dir=out,
            query_fraction=query_fraction, max_queries=max_queries, map_at=map_at, knn_k=knn, seed=seed,
            num_workers=workers, callbacks=[ConsoleCallbacks(progress)],
        )  # fmt: skip
    table = Table(
        title=f"{result.n_queries:,} queries against {result.n_database:,} images (relevant = same label)",
        title_justify="left",
        highlight=False,
    )
    k1 = result.rows[0].result
    for col in ("extractor", f"mAP@{k1.map_k}", "P@1", "P@10", f"{k1.knn_k}-NN acc.", "ms/image", "dims"):
        table.add_column(col, justify="left" if col == "extractor" else "right", no_wrap=col == "extractor")
    for row in sorted(result.rows, key=lambda r: -r.result.map_at_k):
        r = row.result
        style = "bold green" if row.name == result.recommended else None
        table.add_row(
            escape(row.name), f"{r.map_at_k:.3f}", f"{r.precision_at_k[1]:.3f}", f"{r.precision_at_k[10]:.3f}",
            f"{r.knn_accuracy:.3f}", f"{1000 / row.images_per_s:.2f}" if row.images_per_s else "-", f"{row.dims:,}",
            style=style,
        )  # fmt: skip
    console.print(table)
    console.print(f"[bold]recommendation:[/] {escape(result.recommendation)}", highlight=False)
    try:
        report = write_report(result, out)
        remember(result)
    except OSError as exc:
        raise LookalikeError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    console.print(f"report written to {_show_path(report)} ({time.perf_counter() - t0:.0f} s)", highlight=False)


# ----------------------------------------------------------------------------------- duplicates
@app.command()
@handles_errors
def duplicates(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder indexed without -o).")],
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            "-t",
            help="Cosine similarity in (-1, 1] at or above which two images are duplicates (1: identical "
            "embeddings). Default: the value calibrated for the index's extractor: autoencoder 0.985, "
            "efficientnet-lite0 0.755, pixels 0.945 (what they mean: see above); other extractors need one.",
        ),
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write group,id,path,similarity rows (every group) to this file.")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every group as JSON to this file.")] = None,
    limit: Annotated[int, typer.Option(help="Groups shown, largest first (files get all of them).")] = 20,
    linkage: Annotated[
        str,
        typer.Option(
            help="single: connected components (A~B and B~C group A with C, which can chain); star: every "
            "member at least --threshold alike to its group's first image."
        ),
    ] = "single",
    method: Annotated[
        str, typer.Option(help="exact range search, hnsw (approximate neighbours), or auto (exact below 100,000).")
    ] = "auto",
) -> None:
    """Group near-duplicate images of an index: resized, re-compressed, cropped, flipped or edited copies.

    Every pair of indexed images at least --threshold alike (cosine similarity of their embeddings) is
    found by a range search (memory: the vectors plus one batch of results, never an N×N matrix), and
    pairs are joined into groups. The default threshold depends on the index's extractor and was
    calibrated on CIFAR-10 copies (benchmarks/duplicates_calibration.py, 1,000 originals among 5,000
    other images): at the default, the autoencoder finds 92.9 % of resized, JPEG re-compressed and
    flipped copies with 93.9 % pair precision, efficientnet-lite0 90.2 % with 84.3 %, pixels 66.8 % with
    93.6 % (raw pixels miss flipped copies). Each group lists its images, the first being the one with
    the most duplicates, with each one's similarity to the first, and the smallest and largest similarity
    between two members: a smallest value well below the threshold means single linkage chained
    look-alikes together.
    """
    from types import SimpleNamespace

    from .duplicates import LINKAGES, METHODS, calibration_for, check_threshold, find_duplicates, write_csv, write_json
    from .search import Index

    if threshold is not None:
        threshold = check_threshold(threshold)
    if limit < 0:
        raise LookalikeError(f"--limit must be 0 or more, got {limit}")
    if linkage not in LINKAGES:
        raise LookalikeError(f"--linkage must be {' or '.join(LINKAGES)}, got {linkage!r}")
    if method not in METHODS:
        raise LookalikeError(f"--method must be {', '.join(METHODS)}, got {method!r}")
    for path in (csv_path, json_path):
        if path is not None and path.is_dir():
            raise LookalikeError(f"{path}: is a folder; give a file name")
    idx = Index.load(_resolve_index_dir(index_dir))
    extractor = idx.model.extractor
    if threshold is None:
        cal = calibration_for(extractor)
        threshold = cal.threshold
        source = (
            f"calibrated default for {extractor}: on CIFAR-10 it found {cal.recall:.0%} of resized, re-compressed "
            f"and flipped copies with {cal.precision:.0%} pair precision"
        )
    else:
        source = "given"
    with _progress() as progress:
        task = progress.add_task("finding pairs", total=len(idx), info="")
        cb = SimpleNamespace(on_duplicates=lambda done, total: progress.update(task, completed=done, total=total))
        groups = find_duplicates(idx, threshold, linkage=linkage, method=method, callbacks=[cb])
    shown_members = 10
    if groups and limit:
        table = Table(
            title=f"near-duplicate groups (cosine similarity ≥ {threshold:.3f})", title_justify="left", highlight=False
        )
        for col in ("group", "size", "min-max", "id", "to first"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("path", overflow="fold")
        for n, g in enumerate(groups[:limit], start=1):
            if n > 1:
                table.add_section()
            for m, (i, p, s) in enumerate(zip(g.ids[:shown_members], g.paths, g.similarities)):
                head = [str(n), str(len(g)), f"{g.min_similarity:.3f}-{g.max_similarity:.3f}"] if m == 0 else [""] * 3
                table.add_row(*head, str(i), f"{s:.4f}", escape(_show_path(p)))
            if len(g) > shown_members:
                table.add_row("", "", "", "", "", f"… and {len(g) - shown_members} more")
        console.print(table)
        if len(groups) > limit:
            console.print(f"{len(groups) - limit:,} more groups not shown (--limit)", highlight=False)
    in_groups = sum(len(g) for g in groups)
    console.print(
        f"{len(groups):,} groups holding {in_groups:,} of {len(idx):,} images at threshold {threshold:.3f} "
        f"({escape(source)}; {linkage} linkage)",
        highlight=False,
    )
    chained = sum(g.min_similarity < threshold - 0.05 for g in groups)
    if chained and linkage == "single":
        console.print(
            f"[yellow]{chained:,} groups[/] hold two images less alike than the threshold (single linkage "
            "chained them); --linkage star or a higher --threshold splits them",
            highlight=False,
        )
    info = {
        "index": str(idx.directory), "extractor": extractor, "threshold": threshold, "threshold_source": source,
        "linkage": linkage, "method": method, "images": len(idx),
    }  # fmt: skip
    if csv_path is not None:
        console.print(f"groups written to {_show_path(write_csv(groups, csv_path))}", highlight=False)
    if json_path is not None:
        console.print(f"groups written to {_show_path(write_json(groups, json_path, **info))}", highlight=False)


# ---------------------------------------------------------------------------------------- serve
def _listen_socket(host: str, port: int) -> Any:
    """A bound listening socket for uvicorn, so a busy port or a bad host ends in one error line."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise LookalikeError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise LookalikeError(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


@app.command()
@handles_errors
def serve(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder indexed without -o).")],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="LOOKALIKE_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on every route but /health (browsers: open /?token=TOKEN).",
        ),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, in MiB (larger: 413).")] = 16.0,
    max_k: Annotated[int, typer.Option(help="Most results per query (larger k is clamped, with a notice).")] = 100,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Thumbnail cache folder (default: $LOOKALIKE_CACHE/thumbs/<index fingerprint>)."),
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Model directory to check against.")] = None,
    max_uploads: Annotated[
        int, typer.Option(help="Uploads received or decoded at once; more wait up to 2 s, then get 503.", min=1)
    ] = 4,
    max_decodes: Annotated[int, typer.Option(help="Uploads decoded at once (in worker threads).", min=1)] = 2,
    decode_memory_mb: Annotated[
        int, typer.Option(help="Estimated memory the decodes running at once may take, in MiB.", min=1)
    ] = 384,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request head (slow clients are cut off).")
    ] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds a client has to send a request body (then 408).")] = 60.0,
    reload_interval: Annotated[
        float, typer.Option(help="Seconds between checks for an index updated under the server (0: never reload).")
    ] = 2.0,
) -> None:
    """Serve INDEX_DIR as a web page and a JSON API (FastAPI + uvicorn).

    The page (at http://HOST:PORT/) searches by a dropped, pasted or chosen picture or by an indexed image,
    browses the collection and shows what is indexed; the API is documented at /docs. The index is never
    written to; when `lookalike index` updates it, the server loads the new state and swaps it in between
    requests. Only files that are still what was indexed are served (regular files inside the indexed
    folder, same size and mtime). Uploads are decoded as indexed files are, a bounded number at a time
    (503 with Retry-After beyond); slow clients are cut off. Thumbnails are cached in --cache-dir.
    Needs the serve extra: pip install "lookalike[serve]".
    """
    from .server import ServerSettings, check_extra

    check_extra()
    if not 0 <= port <= 65535:
        raise LookalikeError(f"--port must be 0 to 65535, got {port}")
    if max_upload_mb <= 0:
        raise LookalikeError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    settings = ServerSettings(
        token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_k=max_k, cache_dir=cache_dir,
        max_uploads=max_uploads, max_decodes=max_decodes, decode_memory_bytes=decode_memory_mb * 1024 * 1024,
        header_timeout=header_timeout, body_timeout=body_timeout, reload_interval=reload_interval,
    )  # fmt: skip
    import uvicorn

    from .search import Index
    from .server import create_app
    from .server.transport import uvicorn_config

    directory = _resolve_index_dir(index_dir)
    idx = Index.load(directory, model=model)
    sock = _listen_socket(host, port)
    bound_port = sock.getsockname()[1]
    web_app = create_app(idx, settings)
    shown_host = f"[{host}]" if ":" in host else host
    console.print(
        f"serving {len(idx):,} images from [bold]{_show_path(directory)}[/] at "
        f"[bold]http://{shown_host}:{bound_port}/[/] (API docs at /docs; Ctrl-C to stop)",
        highlight=False,
        soft_wrap=True,
    )
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"[yellow]warning:[/] listening on {host} without --token: anyone who can reach this port can "
            "search and download the indexed images",
            highlight=False,
            soft_wrap=True,
        )
    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
    config = uvicorn_config(  # with the header and body deadlines
        web_app, settings, log_level="info" if verbose else "warning", access_log=verbose, timeout_graceful_shutdown=5
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


# ------------------------------------------------------------------------------------- datasets
@datasets_app.command("list")
def datasets_list() -> None:
    """List the built-in datasets."""
    from .datasets import DATASETS

    table = Table(highlight=False)
    for col in ("name", "images", "description"):
        table.add_column(col)
    for name, info in DATASETS.items():
        table.add_row(
            name, f"{info.split_sizes['train']:,} train / {info.split_sizes['test']:,} test", info.description
        )
    console.print(table)


@datasets_app.command("export")
@handles_errors
def datasets_export(
    name: Annotated[str, typer.Argument(help="cifar10, mnist or digits.")],
    directory: Annotated[Path, typer.Argument(help="New folder to write class folders of PNG images into.")],
    split: Annotated[str, typer.Option(help="train or test.")] = "train",
    limit: Annotated[int | None, typer.Option(help="At most this many images per class.")] = None,
    no_download: Annotated[bool, typer.Option("--no-download", help="Use the cache only.")] = False,
) -> None:
    """Write a built-in dataset as DIRECTORY/<class>/<split>_NNNNN.png."""
    from .datasets import export_dataset

    with _progress() as progress:
        task = progress.add_task("exporting", total=None, info="")
        n = export_dataset(
            name, directory, split=split, limit=limit, download=not no_download,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )  # fmt: skip
    console.print(f"wrote {n:,} images to {_show_path(directory)}", highlight=False)


# ----------------------------------------------------------------------------------------- demo
DEMO_MARKER = ".lookalike-demo"


@app.command()
@handles_errors
def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the demo's images, model and index.")
    ] = Path("lookalike-demo"),
    epochs: Annotated[int | None, typer.Option(help="Epochs of the model learned (default: its own).")] = None,
    per_class: Annotated[int, typer.Option(help="Images per class taken from the dataset.")] = 300,
    queries: Annotated[int, typer.Option(help="How many example queries to run.")] = 4,
    k: Annotated[int, typer.Option("-k", help="Results per query.")] = 5,
    no_download: Annotated[bool, typer.Option("--no-download", help="Do not try to download CIFAR-10/MNIST.")] = False,
) -> None:
    """Learn the default model on a built-in dataset, index it, and show a few searches.

    The default model is what `lookalike index FOLDER` learns: ImageNet features (efficientnet-lite0)
    with a head learned on the images. Uses CIFAR-10 (then MNIST) from the cache or a download when
    possible, otherwise scikit-learn's bundled digits, and says which. Writes OUTPUT/results.png with each
    query and its lookalikes.
    """
    import numpy as np

    from .datasets import export_dataset, load_demo_dataset
    from .models.spec import resolve_model
    from .search import Index

    t0 = time.perf_counter()
    if output.exists() and any(output.iterdir()) and not (output / DEMO_MARKER).exists():
        raise LookalikeError(f"{output}: exists and was not made by `lookalike demo`; pick another --output")
    data, line = load_demo_dataset(download=not no_download)
    console.print(line, highlight=False)
    for sub in ("images", "model", "index"):
        shutil.rmtree(output / sub, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / DEMO_MARKER).write_text("made by `lookalike demo`; safe to delete\n")
    images_dir = output / "images"
    n = export_dataset(data.name, images_dir, split=data.split, limit=per_class, download=False)
    console.print(f"wrote {n:,} {data.name} images to {_show_path(images_dir)} (one folder per class)", highlight=False)
    with _progress() as progress:
        callbacks = [ConsoleCallbacks(progress)]
        model = resolve_model(None, images_dir, epochs=epochs, num_workers=1, callbacks=callbacks)
        model.save(output / "model")
        idx = Index.build(images_dir, model, output / "index", num_workers=1, callbacks=callbacks)
    # One query per class (the first image of each of the first `queries` classes), self excluded.
    first_of_label: dict[str, int] = {}
    for e in idx.entries.rows():
        first_of_label.setdefault(e.label or "", e.id)
    picks = list(first_of_label.values())[:queries]
    results = idx.search_batch(picks, k, exclude_self=True)
    same = []
    for q, hits in zip(picks, results):
        label = idx.entries[q].label
        same.extend(h.label == label for h in hits)
        console.print(_hits_table(f"query #{q}: {_show_path(idx.path_of(q))}", hits, "cosine"))
    picture = _plot_results(idx, picks, results, output / "results.png", "cosine")
    console.print(
        f"{np.mean(same):.0%} of the results share their query's class. "
        f"Picture: [bold]{_show_path(picture)}[/]. Done in {time.perf_counter() - t0:.0f} s.",
        highlight=False,
    )
    console.print(
        f"Try: lookalike search {_show_path(output / 'index')} {_show_path(idx.path_of(picks[0]))} -k 10",
        highlight=False,
    )


def main() -> None:
    """Entry point of the ``lookalike`` console script."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
